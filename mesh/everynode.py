"""Asking every node of the mesh: the client's own node, its peers, and the
nodes of every other group, all at once.

What lives on each node (history, presence, channel counters) is read by
asking all of them over the control plane. The nodes are the ones
membership lists now: a node it has dropped is not asked. Those listed are
asked at once (up to MAX_AT_ONCE at a time, each in a thread, or a greenlet
under gevent), each within the caller's ``timeout``, so a node that died
but is still listed costs that timeout once, not once per node before it.
A node that does not answer is named, never guessed at: its part is missing
from the answer, not made up from what it said before (a dead node leaves
no ghosts).

In a mesh of groups (docs/SCALING.md) a node knows only its own group; a
gateway candidate of the group also knows the other groups' candidates
(control command ``groups``), and any candidate of a group knows that
group's nodes (``peers``). So the walk is: the own node and its peers, then
for each other group its first candidate that answers, and that one's peers.
"""

import threading
from contextlib import contextmanager

from .control import ControlError
from .concurrency import start_background

MAX_AT_ONCE = 32  # nodes asked at the same time


@contextmanager
def _channel(client, address, timeout):
    channel = client.control_channel(address, timeout)
    try:
        yield channel
    finally:
        channel.close()


def _every_node(client, timeout):
    """[(name, control address)] of every node of the mesh, ``client``'s own
    first (its address None: it is asked on the client's own channel)."""
    nodes = [(client.node, None)]
    try:
        peers = client.control.request("peers", timeout=timeout)["peers"]
    except (TimeoutError, ControlError):
        return nodes
    nodes += [(record["name"], record["control"]) for record in peers]
    for group, candidates in sorted(_other_groups(client, peers, timeout).items()):
        nodes += _group(client, candidates, timeout)
    return nodes


def _other_groups(client, peers, timeout):
    """The other groups' candidates, from the own node or a candidate among its peers ({} without groups)."""
    try:
        return client.control.request("groups", timeout=timeout)["groups"]
    except ControlError as exc:
        if exc.code != "not_a_gateway":
            return {}  # a node without groups, or one that predates them
    except TimeoutError:
        return {}
    for record in peers:
        if "gateway" in record:
            with _channel(client, record["control"], timeout) as channel:
                try:
                    return channel.request("groups")["groups"]
                except (TimeoutError, ControlError):
                    continue
    return {}


def _group(client, candidates, timeout):
    """The nodes of one other group, through the first of its candidates that
    answers; if none does, its first candidate alone (asking it then fails
    and names it)."""
    for candidate in candidates:
        with _channel(client, candidate["control"], timeout) as channel:
            try:
                members = channel.request("peers")["peers"]
            except (TimeoutError, ControlError):
                continue
        return [(candidate["name"], candidate["control"])] + [(r["name"], r["control"]) for r in members]
    return [(candidates[0]["name"], candidates[0]["control"])] if candidates else []


def at_every_node(client, work, timeout=None):
    """``work(channel)`` for every node of the mesh, at once: ``({node:
    result}, {node: why it did not answer})``. ``timeout``: seconds each
    request of the walk waits, and the default of each channel's requests
    (the client's timeout if None); a node whose ``work`` raises TimeoutError
    or ControlError is in the second map. Another exception is raised once
    every node is done."""
    nodes, seen = [], set()
    for name, address in _every_node(client, timeout):
        if name not in seen:
            seen.add(name)
            nodes.append((name, address))
    results, missing, failures = {}, {}, []
    lock = threading.Lock()

    def ask():
        while True:
            with lock:
                if not nodes:
                    return
                name, address = nodes.pop(0)
            try:
                if address is None:
                    results[name] = work(client.control)
                else:
                    with _channel(client, address, timeout) as channel:
                        results[name] = work(channel)
            except (TimeoutError, ControlError) as exc:
                missing[name] = str(exc)
            except Exception as exc:  # raised in the caller's thread
                failures.append(exc)

    for worker in [start_background(ask, "mesh-ask") for _ in range(min(MAX_AT_ONCE, len(nodes)))]:
        worker.join()
    if failures:
        raise failures[0]
    return results, missing


def ask_every_node(client, cmd, timeout=None, **fields):
    """``({node: reply}, {node: why it did not answer})`` for one control request."""
    return at_every_node(client, lambda channel: channel.request(cmd, timeout=timeout, **fields), timeout)
