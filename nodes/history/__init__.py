"""History: what a node records of its own publishers, in memory and on disk."""
