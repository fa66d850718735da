"""Side-by-side benchmarks of the mesh against raw pyzmq, NATS and Redis.

    ./scripts/bench.sh            # the full run (about 5 minutes on 2 cores)
    ./scripts/bench.sh --quick    # a small run
    .venv/bin/python -m bench --help

``bench/__main__.py`` is the command, made from ``registry.py``, the list of scenario
modules; ``base.py`` what a scenario declares (its name, number, run, options, table
columns and targets) and ``measure``, one case's row; ``scenarios.py`` the servers and
nodes the scenarios share; ``pairs.py``, ``websocket.py``, ``convergence.py`` and one
module per further scenario the scenarios; ``workers.py`` the publisher and subscriber
processes for every system; ``wsclient.py`` many WebSocket clients on one epoll loop;
``peers.py`` the NATS, Redis (and ZooKeeper) servers; ``procs.py`` starting and stopping
every process by PID; ``report.py`` the tables, targets and JSON. docs/PERFORMANCE.md
explains the numbers.
"""
