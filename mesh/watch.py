"""Watching the node a client is attached to, and coming back when it returns.

A node's data ports change every time it starts, so a client whose node was
restarted (by systemd, Kubernetes, an operator) would publish into the void
and wait on a dead socket forever. The watch keeps a control connection of its
own to the node and listens to its ZeroMQ socket events, so an idle client
costs no wake-ups:

* the connection drops (the node process ended: the kernel closes its TCP
  connections at once; or the node froze: ZMTP heartbeats, every
  ``PING_SECONDS``, give up after ``PING_TIMEOUT``): the client is
  *disconnected*: publishes wait in the publisher's backlog and
  ``has_interest`` is false. libzmq reconnects by itself, every 0.25 s
  backing off to 2 s;
* the connection is up again (or the node did not answer ``hello`` in
  ``HELLO_TIMEOUT``): the watch asks ``hello``. A node that answers after a
  disconnection, or a different instance of it (it restarted faster than a
  disconnection could be seen), gets the client *attached* again to the
  endpoints in the answer: a new publishing socket, every subscription
  re-created on a new receiving socket, stream positions kept (so what was
  missed counts as gaps). The backlog goes out once the subscriptions of its
  subjects have arrived, or after ``BACKLOG_GRACE`` seconds.

It runs beside the program (a thread, or a greenlet under gevent) and ends
when the client is closed or collected.
"""

import logging
import os
import random
import time
import weakref

import zmq
from zmq.utils.monitor import recv_monitor_message

from .control import ControlError
from .concurrency import SocketOrPipe, wake_up_pipe

log = logging.getLogger("mesh.client")

PING_SECONDS = 2.0
PING_TIMEOUT = 5.0
HELLO_TIMEOUT = 2.0
RECONNECT_FIRST = 0.25
RECONNECT_MAX = 2.0
JITTER = 0.2  # +-20% on hello retries, so the clients of one node do not come back in step
BACKLOG_GRACE = 2.0
_BACKLOG_POLL = 0.02
_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


class NodeWatch:
    def __init__(self, client):
        self._client = weakref.ref(client)
        self._address = None
        self._channel = None
        self._monitor = None
        self._waiter = None  # a SocketOrPipe for the monitor and the wake-up pipe
        self._failures = 0
        self._ask = True  # ask hello at the next turn
        self._flush_by = None  # monotonic deadline while a backlog waits for interest
        self._wake_r, self._wake_w = wake_up_pipe()

    def wake(self):
        if self._wake_w < 0:
            return  # the watch has ended
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # a wake-up is pending, or the watch has ended

    def flush_soon(self):
        """The client attached again: send its backlog when the interest is back."""
        self._flush_by = time.monotonic() + BACKLOG_GRACE
        self.wake()

    def run(self):
        timeout = 0.0
        try:
            while True:
                if self._monitor is not None:
                    self._waiter.wait(timeout)
                client = self._client()
                if client is None or client.closed:
                    return
                try:
                    timeout = self._step(client)
                except Exception:  # the watch must outlive any surprise
                    log.exception("node watch of %s", client.origin)
                    timeout = RECONNECT_MAX
                del client
        finally:
            self._close_channel()
            wake_w, self._wake_w = self._wake_w, -1
            os.close(wake_w)
            os.close(self._wake_r)

    def _step(self, client):
        if self._address != client.address:  # first turn, or moved to another node
            self._open_channel(client)
        for event in self._events():
            if event == zmq.EVENT_DISCONNECTED:
                if client.connected:
                    log.warning("lost node %s at %s: holding publishes until it is back",
                                client.node, client.address)
                    client.lost_node()
            else:
                self._ask = True
        if self._flush_by is not None:
            publisher = client.publisher
            if publisher.backlog_ready() or time.monotonic() >= self._flush_by:
                self._flush_by = None
                publisher.release_backlog()
            else:
                return _BACKLOG_POLL
        if not self._ask:
            return None  # nothing to do until the connection changes
        try:
            info = self._channel.request("hello")  # the channel's timeout: HELLO_TIMEOUT
        except (TimeoutError, ControlError, RuntimeError) as exc:
            if client.connected:
                log.warning("node %s at %s does not answer (%s): holding publishes", client.node,
                            client.address, exc)
                client.lost_node()
            self._failures += 1
            self._open_channel(client)  # a fresh connection: no stale requests queue up
            delay = min(RECONNECT_MAX, RECONNECT_FIRST * 2 ** (self._failures - 1))
            return delay * random.uniform(1 - JITTER, 1 + JITTER)
        self._failures = 0
        self._ask = False
        if not client.connected or info["member"]["instance"] != client.instance:
            log.warning("node %s is back at %s (instance %s): attaching again",
                        info["name"], client.address, info["member"]["instance"])
            client.attach(info)
            return 0.0
        return None

    def _events(self):
        events = []
        while self._monitor.poll(0):
            try:
                events.append(recv_monitor_message(self._monitor, zmq.NOBLOCK)["event"])
            except zmq.Again:
                break
        return events

    def _open_channel(self, client):
        self._close_channel()
        self._address = client.address
        self._channel = client.control_channel(timeout=HELLO_TIMEOUT, heartbeat=(PING_SECONDS, PING_TIMEOUT))
        self._monitor = self._channel.monitor(_EVENTS)
        self._waiter = SocketOrPipe(self._monitor, self._wake_r)
        self._ask = True

    def _close_channel(self):
        if self._channel is not None:
            self._channel.close()
            self._monitor.close(linger=0)
            self._channel = self._monitor = None
