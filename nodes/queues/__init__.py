"""Queue groups: the dispatcher that hands each message published at this node
to one member, and the jobs it holds until they are acknowledged."""
