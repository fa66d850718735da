"""Every scenario of ``python -m bench``, in number order: the declarations (``SCENARIOS``)
of the modules listed here. A new scenario is a module with its declaration and one line
in ``MODULES``."""

from . import (
           convergence,
           durable,
           edge_fanout,
           edge_auth,
           edge_http,
           edge_memory,
           groups,
           hooks,
           jobs,
           library,
           pairs,
           partitions,
           queues,
           recovery,
           requests,
           scale,
           websocket,
)

MODULES = (pairs, websocket, edge_fanout, convergence, library, edge_http, edge_memory, edge_auth, recovery, requests, queues,
           hooks, scale, groups, partitions, durable, jobs)
SCENARIOS = sorted((scenario for module in MODULES for scenario in module.SCENARIOS), key=lambda s: s.order())
BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
