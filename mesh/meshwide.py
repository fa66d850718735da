"""Asking every node of the mesh: the client's own node and each of its peers.

What lives on each node (history, presence, channel counters) is read by
asking all of them in turn over the control plane. A node that does not
answer is named, never guessed at: its part is missing from the answer, not
made up from what it said before (a dead node leaves no ghosts).
"""

from .control import ControlChannel, ControlError


def every_node(client, timeout=None):
    """(name, ControlChannel) for ``client``'s node and each of its peers; a
    peer's channel (``timeout`` seconds, default the client's) is closed
    when the caller moves on to the next."""
    yield client.node, client._control
    try:
        peers = client._control.request("peers")["peers"]
    except (TimeoutError, ControlError):
        return
    for record in peers:
        channel = ControlChannel(client._context, record["control"], client._wait,
                                 client._timeout if timeout is None else timeout, client._curve)
        try:
            yield record["name"], channel
        finally:
            channel.close()


def ask_every_node(client, cmd, timeout=None, **fields):
    """``({node: reply}, {node: why it did not answer})`` for one control request."""
    replies, missing = {}, {}
    for name, channel in every_node(client, timeout):
        try:
            replies[name] = channel.request(cmd, timeout=timeout, **fields)
        except (TimeoutError, ControlError) as exc:
            missing[name] = str(exc)
    return replies, missing
