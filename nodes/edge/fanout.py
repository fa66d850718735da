"""Edge fan-out: one mesh subscription per distinct pattern, shared by every edge
connection that wants it.

Each message is rendered once (JSON, then once as a WebSocket frame and once
as a Server-Sent Event, as needed). Messages are taken from the subscription
in batches (up to DELIVER_BATCH, as many as are waiting), and a connection is
offered the batch's frames joined into pieces of up to PIECE_BYTES: the
cost per extra client is one write (or queue append) per piece, not per
message. A write is
a system call, and one per message per client was 82 % of an edge's time
fanning out to 1,000 clients (docs/PERFORMANCE.md). A connection whose
pattern a recovery holds, or has replayed, gets the batch frame by frame.
"""

import logging
import time

import gevent
from ws4py.messaging import TextMessage

from mesh.concurrency import yield_to_hub

from .protocol import event_id, render_message

log = logging.getLogger("meshnode.edge")

DELIVER_BATCH = 64  # messages fanned out between yields to the connections' writers
# A batch goes to a connection in pieces of at most this many bytes (or one frame).
# What a write leaves unsent waits outside the connection's queue and its byte
# limit (nodes/edge/websocket.py), so a piece is kept about as small as a frame.
PIECE_BYTES = 64 * 1024


class Route:
    def __init__(self, subscription):
        self.subscription = subscription
        self.connections = set()
        self.since = time.time()
        self.received = 0  # messages on the pattern that reached this edge (nodes/edge/roster.py)
        self.delivered = 0  # copies queued to connections
        self.last_message = None  # when the last one came (Unix seconds)


class Fanout:
    def __init__(self, client, stats):
        self.client = client
        self.counts = stats
        self.routes = {}  # pattern text -> Route
        self._ended = {"gaps": 0, "dropped": 0}  # counted by routes that are gone: totals never go down

    def add(self, connection, pattern_text):
        route = self.routes.get(pattern_text)
        if route is None:
            route = self.routes[pattern_text] = Route(self.client.subscribe(pattern_text))
            gevent.spawn(self._deliver, route)  # ends when the subscription is unsubscribed
        route.connections.add(connection)

    def remove(self, connection, pattern_text):
        route = self.routes.get(pattern_text)
        if route is None:
            return
        route.connections.discard(connection)
        if not route.connections:
            del self.routes[pattern_text]
            route.subscription.unsubscribe()  # wakes and ends the route's greenlet
            self._ended["gaps"] += route.subscription.gaps
            self._ended["dropped"] += route.subscription.dropped

    def _deliver(self, route):
        subscription = route.subscription
        while True:
            try:
                batch = subscription.take(DELIVER_BATCH)
            except RuntimeError:  # unsubscribed: the last connection left
                break
            route.received += len(batch)  # per batch, not per message (nodes/edge/roster.py)
            route.last_message = time.time()
            self._fan_out(route, batch)
            yield_to_hub()  # let the writers write: a burst must not fill every queue first
        log.debug("route %s closed", subscription.pattern.text)

    def _fan_out(self, route, batch):
        """Render each message once per transport and offer every connection the batch."""
        rendered = [(message, text) for message in batch if (text := self._render(message)) is not None]
        if not rendered:
            return
        frames = {}  # kind -> [each message's frame]
        pieces = {}  # kind -> [(frames joined, how many)]
        pattern = route.subscription.pattern.text
        for connection in list(route.connections):
            kind = connection.kind
            if kind not in frames:
                frames[kind] = [encode_frame(kind, text, event_id(message) if kind == "sse" else None)
                                for message, text in rendered]
            if (connection.holding and pattern in connection.holding) or connection.replayed_to:
                self._one_by_one(route, connection, pattern, rendered, frames[kind])
                continue
            if kind not in pieces:
                pieces[kind] = join_frames(frames[kind])
            for piece, count in pieces[kind]:
                connection.offer(piece)
                route.delivered += count
                self.counts["messages_out"] += count

    def _render(self, message):
        """The message as JSON text (bytes), or None (counted) if JSON cannot express its data."""
        try:
            return render_message(message).encode("utf-8")
        except (ValueError, TypeError, RecursionError) as exc:
            self.counts["unrenderable"] += 1
            log.warning("cannot render a message on %s for edge clients: %s", message.subject, exc)
            return None

    def _one_by_one(self, route, connection, pattern, rendered, frames):
        """The batch to a connection a recovery holds (kept for after the replay) or
        has replayed to (what the replay had is skipped)."""
        for (message, _), frame in zip(rendered, frames):
            if connection.holding and pattern in connection.holding:  # a recovery is replaying first
                connection.holding[pattern].append((message, frame))
                continue
            if connection.replayed_to:
                key = (message.origin, message.subject)
                last = connection.replayed_to.get(key)
                if last is not None:
                    if last[0] == message.epoch and message.seq <= last[1]:
                        continue  # the replay had it
                    del connection.replayed_to[key]  # live delivery has passed the replay
            connection.offer(frame)
            route.delivered += 1
            self.counts["messages_out"] += 1

    @property
    def gaps(self):
        """Sequence gaps seen by every route this fan-out has had (a lifetime total)."""
        return self._ended["gaps"] + sum(route.subscription.gaps for route in self.routes.values())

    @property
    def streams(self):
        return sum(route.subscription.streams for route in self.routes.values())

    @property
    def dropped(self):
        """Messages every route this fan-out has had had no room for (a lifetime total)."""
        return self._ended["dropped"] + sum(route.subscription.dropped for route in self.routes.values())


def join_frames(frames):
    """Consecutive frames joined into pieces of at most PIECE_BYTES (a larger frame
    is a piece of its own): [(bytes, frames in it)]."""
    pieces, run, size = [], [], 0
    for frame in frames:
        if run and size + len(frame) > PIECE_BYTES:
            pieces.append((b"".join(run), len(run)))
            run, size = [], 0
        run.append(frame)
        size += len(frame)
    if run:
        pieces.append((b"".join(run), len(run)))
    return pieces


def encode_frame(kind, text, event_id=None):
    """Wire bytes of one JSON text for a transport: a WebSocket text frame or an SSE event."""
    if kind == "ws":
        return TextMessage(text).single(mask=False)
    head = b"" if event_id is None else f"id: {event_id}\n".encode()
    return head + b"data: " + text + b"\n\n"
