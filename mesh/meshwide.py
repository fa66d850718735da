"""Asking every node of the mesh: the client's own node, its peers, and the
nodes of every other group.

What lives on each node (history, presence, channel counters) is read by
asking all of them in turn over the control plane. A node that does not
answer is named, never guessed at: its part is missing from the answer, not
made up from what it said before (a dead node leaves no ghosts).

In a mesh of groups (docs/SCALING.md) a node knows only its own group; a
gateway candidate of the group also knows the other groups' candidates
(control command ``groups``), and any candidate of a group knows that
group's nodes (``peers``). So the walk is: the own node and its peers, then
for each other group its first candidate that answers, and that one's peers.
"""

from contextlib import contextmanager

from .control import ControlChannel, ControlError


@contextmanager
def _channel(client, address, timeout):
    channel = ControlChannel(client._context, address, client._wait,
                             client._timeout if timeout is None else timeout, client._curve)
    try:
        yield channel
    finally:
        channel.close()


def every_node(client, timeout=None):
    """(name, ControlChannel) for every node of the mesh, ``client``'s own
    first; a channel (``timeout`` seconds, default the client's) is closed
    when the caller moves on to the next."""
    yield client.node, client._control
    try:
        peers = client._control.request("peers")["peers"]
    except (TimeoutError, ControlError):
        return
    for record in peers:
        with _channel(client, record["control"], timeout) as channel:
            yield record["name"], channel
    for group, candidates in sorted(_other_groups(client, peers, timeout).items()):
        yield from _group(client, candidates, timeout)


def _other_groups(client, peers, timeout):
    """The other groups' candidates, from the own node or a candidate among its peers ({} without groups)."""
    try:
        return client._control.request("groups")["groups"]
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
    answers; if none does, its first candidate alone (the caller's own
    request then fails and names it)."""
    for candidate in candidates:
        with _channel(client, candidate["control"], timeout) as channel:
            try:
                members = channel.request("peers")["peers"]
            except (TimeoutError, ControlError):
                continue
            yield candidate["name"], channel
        for record in members:
            with _channel(client, record["control"], timeout) as channel:
                yield record["name"], channel
        return
    if candidates:
        with _channel(client, candidates[0]["control"], timeout) as channel:
            yield candidates[0]["name"], channel


def ask_every_node(client, cmd, timeout=None, **fields):
    """``({node: reply}, {node: why it did not answer})`` for one control request."""
    replies, missing = {}, {}
    for name, channel in every_node(client, timeout):
        try:
            replies[name] = channel.request(cmd, timeout=timeout, **fields)
        except (TimeoutError, ControlError) as exc:
            missing[name] = str(exc)
    return replies, missing
