"""Whether the node process a member record describes is still running.

A node that finds its name held by a record of another instance (its own
previous process, killed, whose ZooKeeper session has not lapsed yet) asks
the record's control address: a live node always listens there and answers
``hello`` with its own instance. So the holder is

* ``gone`` when nothing listens there (the connection is refused), or what
  answers is another instance (a restart on the same port: this very node);
* ``alive`` when it answers with the record's instance;
* ``unknown`` when nothing answers in time (a host that is down or cut off
  looks the same as a frozen node: the caller must not take its place).
"""

import socket

from mesh.control import ControlChannel, ControlError
from mesh.members import validate_endpoint
from mesh.concurrency import pick_waiter

PROBE_SECONDS = 1.0


def holder_state(context, record, curve=None, timeout=PROBE_SECONDS):
    """``"alive"``, ``"gone"`` or ``"unknown"`` for the node ``record`` names."""
    try:
        address = validate_endpoint(record.get("control"), "control") if isinstance(record, dict) else ""
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except ConnectionRefusedError:
        return "gone"
    except (OSError, ValueError):
        return "unknown"
    channel = ControlChannel(context, address, pick_waiter(), timeout=timeout, curve=curve)
    try:
        answer = channel.request("hello")["member"]["instance"]
    except (TimeoutError, ControlError, KeyError, TypeError):
        return "unknown"
    finally:
        channel.close()
    return "alive" if answer == record.get("instance") else "gone"
