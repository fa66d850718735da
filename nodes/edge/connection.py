"""One edge client connection (WebSocket or SSE): its grant, subscriptions and outgoing queue.

The grant (nodes/edge/auth.py) holds until its token's ``exp``: one timer per
connection ends the connection then (``token_expired``) unless a refresh
replaced the grant first; a revocation of the token's ``sub`` ends it at once
(``token_revoked``). A refreshed grant that no longer covers a subscription
ends that subscription.

Frames for a client wait in a queue bounded in bytes. A client that stops
reading lets the queue fill; when the next frame would pass the limit the
connection is cut off (WebSocket: the queue is dropped, the frame being
written is finished, then a close frame 1008 "slow consumer"; SSE: the stream
ends). Nothing waits on a slow client except its own writer, so it never slows
delivery to the others. The queues of all connections together are bounded
too (``--buffer-bytes``): a frame for a connection that already has a backlog
when the total is spent cuts that connection off the same way.
"""

import collections
import time
import uuid

import gevent
import gevent.event

from nodes.jsontext import dumps

from .protocol import EdgeError
from .recovery import hold

SLOW_CONSUMER = "slow consumer: outgoing queue over {limit} bytes"
EDGE_FULL = "slow consumer: the edge's buffers ({limit} bytes for all connections) are full"


def client_address(environ):
    """The client's "host:port" as the server accepted it (no system call:
    a client that already reset makes getpeername fail)."""
    host = environ.get("REMOTE_ADDR")
    return None if host is None else f"{host}:{environ.get('REMOTE_PORT')}"


class EdgeConnection:
    kind = "?"

    def __init__(self, edge, grant, queue_limit, max_subscriptions, address=None):
        self.id = uuid.uuid4().hex[:12]  # names it in presence and events
        self.address = address  # the client's "host:port", when known
        self.console = False  # the console page's own connection (/ws?console=1): its events say so
        self.edge = edge
        self.grant = grant
        self.queue_limit = queue_limit
        self.max_subscriptions = max_subscriptions
        self.patterns = {}  # pattern text -> Pattern
        self.holding = {}  # pattern text -> [(Message, frame)] held while a recovery replays (recovery.py)
        self.replayed_to = {}  # (origin, subject) -> (epoch, seq) a recovery replayed up to
        self.queued_bytes = 0
        self.closed = False
        self.cut = False  # cut off: accept no more frames
        self._queue = collections.deque()
        self._ready = gevent.event.Event()
        self._expiry = None  # a libev timer while the grant has an exp
        self._arm_expiry()

    # -- outgoing ---------------------------------------------------------

    def offer(self, data):
        """Queue one encoded frame; cut the client off if the queue is full."""
        if self.closed or self.cut:
            return
        size = len(data)
        edge = self.edge
        if self.queued_bytes + size > self.queue_limit:
            self._cut_slow(SLOW_CONSUMER.format(limit=self.queue_limit))
            return
        if self.queued_bytes and edge.queued_total + size > edge.config.buffer_bytes:
            self._cut_slow(EDGE_FULL.format(limit=edge.config.buffer_bytes))
            return
        self._queue.append(data)
        self.queued_bytes += size
        edge.queued_total += size
        self._ready.set()

    def take(self, timeout=None):
        """The next queued frame, waiting; None after ``timeout`` seconds."""
        while not self._queue:
            if self.closed:
                return None
            self._ready.clear()
            if not self._ready.wait(timeout):
                return None
        return self.pop()

    def pop(self):
        """The next queued frame, or None at once if there is none."""
        if not self._queue:
            return None
        data = self._queue.popleft()
        self.queued_bytes -= len(data)
        self.edge.queued_total -= len(data)
        return data

    @property
    def pending_frames(self):
        return len(self._queue)

    def drop_queue(self):
        self._queue.clear()
        self.edge.queued_total -= self.queued_bytes
        self.queued_bytes = 0

    def _cut_slow(self, reason):
        self.edge.counts["slow_consumers"] += 1
        self.edge.events.connection_event("slow", self, reason=reason)
        self.cut_off(reason)

    def cut_off(self, reason):
        raise NotImplementedError

    # -- the grant --------------------------------------------------------

    def _arm_expiry(self):
        if self._expiry is not None:
            self._expiry.close()
            self._expiry = None
        if self.grant.expires is not None:
            self._expiry = gevent.get_hub().loop.timer(max(0.0, self.grant.expires - time.time()))
            self._expiry.start(gevent.spawn, self._expired)  # a timer callback runs in the hub: no switching

    def _expired(self):
        if not (self.closed or self.cut):
            self.edge.counts["expired"] += 1
            self.end_grant("token_expired", "the token expired")

    def end_grant(self, code, message):
        """The client's token no longer holds (``code``: token_expired, token_revoked):
        tell it with an error frame, deliver nothing more, and close."""
        raise NotImplementedError

    def refresh(self, grant, request_id=None):
        """Replace the grant without reconnecting; subscriptions it no longer
        covers end, each with a ``forbidden`` error frame naming it."""
        if self.grant.subject is not None and grant.subject != self.grant.subject:
            raise EdgeError("forbidden", f"a refresh must be for the same sub ({self.grant.subject!r}), "
                                         f"not {grant.subject!r}", request_id, 403)
        self.grant = grant
        self._arm_expiry()
        for text, pattern in list(self.patterns.items()):
            if not grant.may_subscribe(pattern):
                self.unsubscribe(pattern)
                self.send_text(dumps({"op": "error", "id": None, "code": "forbidden", "subject": text,
                                      "message": f"the refreshed token does not allow {text!r}: unsubscribed"}))

    def send_text(self, text):
        raise NotImplementedError

    # -- subscriptions ----------------------------------------------------

    def subscribe(self, pattern, request_id=None, recover=None):
        """Subscribe; with ``recover`` (a Position) also start a recovery:
        the fan-out holds this pattern's frames until the replay is sent."""
        if not self.grant.may_subscribe(pattern):
            raise EdgeError("forbidden", f"not allowed to subscribe to {pattern.text!r}", request_id, 403)
        if pattern.text in self.patterns:
            return
        if len(self.patterns) >= self.max_subscriptions:
            raise EdgeError("too_many_subscriptions",
                            f"at most {self.max_subscriptions} subscriptions per connection", request_id, 429)
        self.patterns[pattern.text] = pattern
        if recover is not None:
            hold(self, pattern)
        self.edge.fanout.add(self, pattern.text)
        self.edge.wait_live(pattern)  # so that what this node publishes after the reply is delivered
        if not self.closed and pattern.text in self.patterns:  # it may have gone while we waited
            self.edge.events.presence_event("join", self, pattern.text)

    def unsubscribe(self, pattern, request_id=None):
        if self.patterns.pop(pattern.text, None) is None:
            raise EdgeError("not_subscribed", f"not subscribed to {pattern.text!r}", request_id)
        self.holding.pop(pattern.text, None)
        self.edge.fanout.remove(self, pattern.text)
        self.edge.events.presence_event("leave", self, pattern.text)

    def release(self):
        """The connection is gone: drop its subscriptions and queue."""
        if self.closed:
            return
        self.closed = True
        self._ready.set()
        if self._expiry is not None:
            self._expiry.close()
            self._expiry = None
        events = self.edge.events
        for text in list(self.patterns):
            self.edge.fanout.remove(self, text)
            events.presence_event("leave", self, text)
        self.patterns.clear()
        self.drop_queue()
        if self in self.edge.connections:
            self.edge.connections.discard(self)
            events.connection_event("disconnect", self)
