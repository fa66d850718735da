"""Recovery for one edge connection: what it missed on a pattern, from the mesh's history.

A WebSocket ``sub`` with ``recover`` (a position the client built from the
``msg`` frames it got) or an event stream with ``Last-Event-ID`` (the id of
the last event, a one-stream position) asks for it. The connection's live
frames for that pattern are held back (the fan-out appends them to
``connection.holding``); the history of every node is fetched after the
position (mesh/recovery.py, all or nothing per stream); then the connection
gets the replayed messages, marked ``"replayed": true``, then the held live
frames that the replay did not already cover, and goes live. The hold ends
with no switch between the last held frame and live delivery, so nothing is
lost or doubled at the junction.
"""

import gevent

from mesh.recovery import fetch

from .protocol import EdgeError, event_id, render_message
from .fanout import encode_frame

MAX_REPLAY = 100_000  # messages one recovery may replay to one connection


def hold(connection, pattern):
    """From now on the fan-out holds this connection's frames for ``pattern``."""
    connection.holding[pattern.text] = []


def recovered_frames(edge, connection, pattern, position, request_id=None):
    """``(summary, frames)``: what to tell the client, and an iterator of the
    frames to send (replay, then held live) that ends the hold when exhausted."""
    held = connection.holding.get(pattern.text)
    if held is None:  # already subscribed to this pattern: it is live, nothing to recover into
        raise EdgeError("already_subscribed", f"already subscribed to {pattern.text!r}: unsubscribe first",
                        request_id, 409)
    try:
        recovery, replayed, reach = fetch(edge.client, pattern, position, MAX_REPLAY,
                                          lambda: [message for message, _ in held])
    except Exception:
        del connection.holding[pattern.text]
        raise
    edge.counts["recoveries"] += 1
    if not recovery.recovered:
        edge.counts["recoveries_incomplete"] += 1
    summary = {"recovered": recovery.recovered, "replayed": len(replayed),
               "incomplete": [[origin, subject, state] for (origin, subject), state in sorted(recovery.streams.items())
                              if state != "complete"],
               "unreachable": recovery.unreachable, "problems": recovery.problems}

    def frames():
        for message in replayed:
            if connection.closed or connection.cut:  # expired, revoked or gone meanwhile
                return
            try:
                text = render_message(message).encode("utf-8")
            except (ValueError, TypeError, RecursionError):
                edge.counts["unrenderable"] += 1
                continue
            yield encode_frame(connection.kind, text, event_id(message) if connection.kind == "sse" else None)
        i = 0
        while i < len(held):  # it grows while frames are sent
            if connection.closed or connection.cut:
                return
            message, frame = held[i]
            i += 1
            last = reach.get((message.origin, message.subject))
            if last is None or (message.epoch, message.seq) > last:
                yield frame
        connection.holding.pop(pattern.text, None)  # no switch since the last check: live from here
        connection.replayed_to.update(reach)  # live copies still in flight are not sent twice

    return summary, frames()


def replay_to_websocket(edge, connection, pattern, position, request_id):
    """Recover into a WebSocket connection at the pace its client reads;
    returns the summary for the ``ok`` reply."""
    summary, frames = recovered_frames(edge, connection, pattern, position, request_id)
    for frame in frames:
        while connection.queued_bytes > connection.queue_limit // 2 and not (connection.closed or connection.cut):
            gevent.sleep(0.005)  # its writer drains the queue; a client that stops reading is cut as usual
        if connection.closed or connection.cut:
            raise EdgeError("closed", "the connection ended during the recovery", request_id)
        connection.offer(frame)
        edge.counts["messages_out"] += 1
    return summary
