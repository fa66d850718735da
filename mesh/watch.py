"""Watching the node a client is attached to, and coming back when it returns.

A node's data ports change every time it starts, so a client whose node was
restarted (by systemd, Kubernetes, an operator) would publish into the void
and wait on a dead socket forever. The watch asks the node ``hello`` every
``HEARTBEAT_SECONDS`` on a control connection of its own, idle client or not:

* no answer within ``HEARTBEAT_TIMEOUT``: the client is *disconnected*:
  publishes wait in the publisher's backlog, ``has_interest`` is false, and
  the watch asks again with backoff and jitter until the node answers;
* an answer from another instance (the node restarted within a heartbeat), or
  the first answer after a disconnection: the client *attaches* again to the
  endpoints in the answer: a new publishing socket, every subscription
  re-created on a new receiving socket, stream positions kept (so what was
  missed counts as gaps); the backlog goes out once the subscriptions of its
  subjects have arrived, or after ``BACKLOG_GRACE`` seconds.

It runs beside the program (a thread, or a greenlet under gevent) and ends
when the client is closed or collected.
"""

import logging
import random
import threading
import time
import weakref

from .control import ControlChannel, ControlError

log = logging.getLogger("mesh.client")

HEARTBEAT_SECONDS = 1.0
HEARTBEAT_TIMEOUT = 1.0
RETRY_FIRST = 0.25
RETRY_MAX = 2.0
JITTER = 0.2  # +-20% on every retry delay, so clients of one node do not come back in step
BACKLOG_GRACE = 2.0
_BACKLOG_POLL = 0.02


class NodeWatch:
    def __init__(self, client):
        self._client = weakref.ref(client)
        self._channel = None
        self._failures = 0
        self._flush_by = None  # monotonic deadline while a backlog waits for interest
        self.wake = threading.Event()

    def flush_soon(self):
        """The client attached again: send its backlog when the interest is back."""
        self._flush_by = time.monotonic() + BACKLOG_GRACE
        self.wake.set()

    def run(self):
        delay = HEARTBEAT_SECONDS
        while True:
            self.wake.wait(delay)
            self.wake.clear()
            client = self._client()
            if client is None or client.closed:
                self._close_channel()
                return
            try:
                delay = self._step(client)
            except Exception:  # the watch must outlive any surprise
                log.exception("node watch of %s", client.origin)
                delay = HEARTBEAT_SECONDS
            del client

    def _step(self, client):
        if self._flush_by is not None:
            publisher = client._publisher
            if publisher.backlog_ready() or time.monotonic() >= self._flush_by:
                self._flush_by = None
                publisher.release_backlog()
            else:
                return _BACKLOG_POLL
        try:
            info = self._hello(client)
        except (TimeoutError, ControlError, RuntimeError) as exc:
            self._close_channel()  # a fresh connection next time: no stale requests queue up
            if client.connected:
                log.warning("node %s at %s does not answer (%s): holding publishes, reconnecting",
                            client.node, client.address, exc)
                client._lost()
            self._failures += 1
            delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (self._failures - 1))
            return delay * random.uniform(1 - JITTER, 1 + JITTER)
        self._failures = 0
        if not client.connected or info["member"]["instance"] != client.instance:
            log.warning("node %s is back at %s (instance %s): attaching again",
                        info["name"], client.address, info["member"]["instance"])
            client._attach(info)
            return 0.0
        return HEARTBEAT_SECONDS

    def _hello(self, client):
        if self._channel is None or self._channel.address != client.address:
            self._close_channel()
            self._channel = ControlChannel(client._context, client.address, client._wait,
                                           HEARTBEAT_TIMEOUT, client._curve)
        return self._channel.request("hello")

    def _close_channel(self):
        if self._channel is not None:
            self._channel.close()
            self._channel = None
