"""Server-Sent Events: an edge connection whose frames are written as an
HTTP event stream (``GET /sub/<pattern>``, docs/EDGE.md).

The stream starts with ``retry``, then (when resuming from a position) a
``recovery`` event and the replayed messages, then live messages, with a
keep-alive comment when nothing came for ``--keepalive`` seconds. A client
that closes its side is noticed at once, not at the next write.
"""

import logging
import socket

import gevent
from gevent.socket import wait_read

from nodes.jsontext import dumps

from .connection import EdgeConnection
from .fanout import encode_frame
from .protocol import EdgeError, render_error
from .recovery import recovered_frames

log = logging.getLogger("meshnode.edge")


class SSEConnection(EdgeConnection):
    kind = "sse"

    def __init__(self, edge, grant, sock=None, handler=None, address=None):
        super().__init__(edge, grant, edge.config.queue_bytes, edge.config.max_subscriptions, address)
        self._handler = handler  # gevent's WSGI handler: told to close the connection when the stream ends
        self.greenlet = gevent.getcurrent()
        self._watcher = gevent.spawn(self._watch_departure, sock) if sock is not None else None

    def _watch_departure(self, sock):
        """A client that closes its stream sends nothing more, so the stream would
        only notice at its next write (up to two keep-alives later): wait for the
        end of the client's side instead, and release at once."""
        try:
            wait_read(sock.fileno())
            if sock.recv(1, socket.MSG_PEEK):
                return  # the client sent something (it should not): stop watching
        except (OSError, ValueError):
            pass
        if not self.closed:
            self.release()  # wakes the stream, which ends

    def release(self):
        super().release()
        if self._watcher is not None and self._watcher is not gevent.getcurrent():
            self._watcher.kill(block=False)

    def cut_off(self, reason):
        log.warning("cutting off an event stream: %s", reason)
        self.release()
        if self.greenlet is not gevent.getcurrent():
            self.greenlet.kill(block=False)  # interrupts a blocked write; the server closes the socket

    def send_text(self, text):
        self.offer(encode_frame("sse", text.encode("utf-8")))

    def end_grant(self, code, message):
        """The last event is an ``error`` naming the cause; then the stream ends."""
        self.drop_queue()
        self.send_text(render_error(EdgeError(code, message)))
        self.cut = True

    def events(self, keepalive, recovering=None):
        yield b"retry: 2000\n\n"
        try:
            if recovering is not None:  # (pattern, position): the replay first, then the held live events
                summary, frames = recovered_frames(self.edge, self, *recovering)
                yield b"event: recovery\ndata: " + dumps(summary).encode("utf-8") + b"\n\n"
                yield from frames
            while not self.closed:
                frame = self.take(timeout=keepalive)
                yield frame if frame is not None else b": keep-alive\n\n"
                if self.cut and not self.pending_frames:
                    if self._handler is not None:  # an ended stream also ends its connection (no keep-alive)
                        self._handler.close_connection = True
                    return  # the grant ended and its error event is out
        finally:
            self.release()
