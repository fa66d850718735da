"""Queue groups: the dispatcher that hands each message published at this node
to one member, and the jobs it holds (in memory, and on disk with ``--data-dir``)
until they are acknowledged."""
