"""History: what was published at this node on the ``--history`` subjects, recorded in
memory (and on disk with ``--data-dir``) and read back in pages (control command ``history``)."""
