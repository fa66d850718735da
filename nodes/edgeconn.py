"""One edge client connection (WebSocket or SSE): its subscriptions and outgoing queue.

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

import gevent
import gevent.event

from .edgeproto import EdgeError

SLOW_CONSUMER = "slow consumer: outgoing queue over {limit} bytes"
EDGE_FULL = "slow consumer: the edge's buffers ({limit} bytes for all connections) are full"


class EdgeConnection:
    kind = "?"

    def __init__(self, edge, grant, queue_limit, max_subscriptions):
        self.edge = edge
        self.grant = grant
        self.queue_limit = queue_limit
        self.max_subscriptions = max_subscriptions
        self.patterns = {}  # pattern text -> Pattern
        self.queued_bytes = 0
        self.closed = False
        self.cut = False  # cut off: accept no more frames
        self._queue = collections.deque()
        self._ready = gevent.event.Event()

    # -- outgoing ---------------------------------------------------------

    def offer(self, data):
        """Queue one encoded frame; cut the client off if the queue is full."""
        if self.closed or self.cut:
            return
        size = len(data)
        edge = self.edge
        if self.queued_bytes + size > self.queue_limit:
            edge.stats["slow_consumers"] += 1
            self.cut_off(SLOW_CONSUMER.format(limit=self.queue_limit))
            return
        if self.queued_bytes and edge.queued_total + size > edge.config.buffer_bytes:
            edge.stats["slow_consumers"] += 1
            self.cut_off(EDGE_FULL.format(limit=edge.config.buffer_bytes))
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

    def drop_queue(self):
        self._queue.clear()
        self.edge.queued_total -= self.queued_bytes
        self.queued_bytes = 0

    def cut_off(self, reason):
        raise NotImplementedError

    # -- subscriptions ----------------------------------------------------

    def subscribe(self, pattern, request_id=None):
        if not self.grant.may_subscribe(pattern):
            raise EdgeError("forbidden", f"not allowed to subscribe to {pattern.text!r}", request_id, 403)
        if pattern.text in self.patterns:
            return
        if len(self.patterns) >= self.max_subscriptions:
            raise EdgeError("too_many_subscriptions",
                            f"at most {self.max_subscriptions} subscriptions per connection", request_id, 429)
        self.patterns[pattern.text] = pattern
        self.edge.fanout.add(self, pattern.text)
        self.edge.wait_live(pattern)  # so that what this node publishes after the reply is delivered

    def unsubscribe(self, pattern, request_id=None):
        if self.patterns.pop(pattern.text, None) is None:
            raise EdgeError("not_subscribed", f"not subscribed to {pattern.text!r}", request_id)
        self.edge.fanout.remove(self, pattern.text)

    def release(self):
        """The connection is gone: drop its subscriptions and queue."""
        if self.closed:
            return
        self.closed = True
        self._ready.set()
        for text in list(self.patterns):
            self.edge.fanout.remove(self, text)
        self.patterns.clear()
        self.drop_queue()
        self.edge.connections.discard(self)
