"""WebSocket edge connections on ws4py: the JSON protocol of docs/EDGE.md.

ws4py reads frames in its own greenlet and calls ``received_message``. Every
byte written to the socket goes through one writer greenlet fed by the
connection's bounded queue (ws4py's own pongs and close frames included), so
frames never interleave and a client that stops reading blocks nothing but
its writer.
"""

import logging
import socket

import gevent
from ws4py.websocket import WebSocket

from .edgeconn import EdgeConnection
from .edgeproto import PONG, EdgeError, parse_frame, render_error, render_ok
from .fanout import encode_frame

log = logging.getLogger("meshnode.edge")

CLOSE_POLICY = 1008  # RFC 6455: policy violation (slow consumer, auth)
CLOSE_TOO_BIG = 1009
CLOSE_GOING_AWAY = 1001
FLUSH_SECONDS = 5.0
LINGER_SECONDS = 1.0
FRAME_SLACK = 1024  # a frame may exceed the payload limit by its JSON framing
# Kernel send buffer per client. Left to autotuning it grows to megabytes and
# hides a stalled client's backlog from the queue limit (and costs memory).
SEND_BUFFER_BYTES = 128 * 1024


class WebSocketConnection(EdgeConnection):
    kind = "ws"

    def __init__(self, websocket, edge, grant):
        super().__init__(edge, grant, edge.config.queue_bytes, edge.config.max_subscriptions)
        self.websocket = websocket
        self._partial = b""  # the rest of the frame being written, if any
        self._finisher = None
        try:
            websocket.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        except OSError:
            pass
        self.writer = gevent.spawn(self._write_loop)

    def _write_loop(self):
        sock = self.websocket.sock
        try:
            while True:
                data = self.take()
                if data is None:
                    return
                self._partial = view = memoryview(data)
                while view:
                    sent = sock.send(view)
                    self._partial = view = view[sent:]
                self._partial = b""
        except (OSError, AttributeError):  # peer went away; ws4py's reader notices too
            self.release()

    def send_text(self, text):
        self.offer(encode_frame("ws", text.encode("utf-8")))

    def cut_off(self, reason, code=CLOSE_POLICY, last_words=""):
        """Drop the queue, finish the frame in flight, send ``last_words`` (a
        JSON text, if any), then close with ``code``."""
        if self.cut:
            return
        self.cut = True
        if code != CLOSE_GOING_AWAY:
            log.warning("cutting off %s: %s", self.websocket.peer_address, reason)
        self.writer.kill(block=False)
        self.drop_queue()
        close = self.websocket.stream.close(code=code, reason=reason).single(mask=False)
        last = encode_frame("ws", last_words.encode("utf-8")) if last_words else b""
        self._finisher = gevent.spawn(self._finish, bytes(self._partial) + last + close)

    def _finish(self, data):
        self.websocket.server_terminated = True
        try:
            with gevent.Timeout(FLUSH_SECONDS):
                self.websocket.sock.sendall(data)
        except (OSError, AttributeError, gevent.Timeout):
            pass
        try:  # ws4py's reader sees end-of-stream and closes the socket itself
            self.websocket.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        self.release()

    def flush(self, timeout=FLUSH_SECONDS):
        """Let the writer send what is queued (before ws4py closes the socket)."""
        with gevent.Timeout(timeout, False):
            while (self.queued_bytes or self._partial) and not self.writer.dead:
                gevent.sleep(0.01)
            if self._finisher is not None:
                self._finisher.join()


class MeshWebSocket(WebSocket):
    """ws4py handler; the edge passes itself and the client's grant in environ."""

    def opened(self):
        edge = self.environ["meshnode.edge"]
        self.edge_connection = WebSocketConnection(self, edge, self.environ["meshnode.grant"])
        edge.connections.add(self.edge_connection)
        pattern = self.environ.get("meshnode.pattern")
        if pattern is not None:  # /ws/<pattern>: subscribe-only
            self._serve(lambda: self.edge_connection.subscribe(pattern))

    def _write(self, data):
        # ws4py's own frames (pong, close) join the queue: one writer per socket.
        if self.sock is None:
            raise RuntimeError("Cannot send on a terminated websocket")
        self.edge_connection.offer(bytes(data))

    def process(self, data):
        keep_going = super().process(data)
        limit = self.edge_connection.edge.config.max_payload + FRAME_SLACK
        message = self.stream.message
        if self.reading_buffer_size > limit or (message is not None and len(message.data or b"") > limit):
            self.edge_connection.edge.stats["errors"] += 1
            reason = f"frame over {limit} bytes"
            self.edge_connection.cut_off(reason, CLOSE_TOO_BIG, render_error(EdgeError("too_large", reason)))
            return False
        return keep_going

    def received_message(self, message):
        if message.is_binary:
            self._reply_error(EdgeError("bad_frame", "binary frames are not part of the protocol"))
            return
        self._serve(lambda: self._handle(message.data))

    def _handle(self, raw):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise EdgeError("bad_frame", "frame is not UTF-8") from None
        op, request_id, target, data = parse_frame(text)
        connection = self.edge_connection
        if op == "ping":
            connection.send_text(PONG)
            return
        if op == "sub":
            if self.environ.get("meshnode.pattern") is not None:
                raise EdgeError("forbidden", "this endpoint is subscribe-only for its own pattern", request_id)
            connection.subscribe(target, request_id)
        elif op == "unsub":
            connection.unsubscribe(target, request_id)
        else:
            if self.environ.get("meshnode.pattern") is not None:
                raise EdgeError("forbidden", "this endpoint is subscribe-only", request_id)
            connection.edge.publish(connection.grant, target, data, request_id)
        connection.send_text(render_ok(request_id))

    def _serve(self, action):
        try:
            action()
        except EdgeError as exc:
            self._reply_error(exc)
        except Exception as exc:  # a bug must not take the connection or the node down
            log.exception("edge request failed")
            self._reply_error(EdgeError("internal", f"{type(exc).__name__}: {exc}"))

    def _reply_error(self, error):
        self.edge_connection.edge.stats["errors"] += 1
        self.edge_connection.send_text(render_error(error))

    def terminate(self):
        connection = getattr(self, "edge_connection", None)
        if connection is not None:
            connection.flush()
        self._linger()
        super().terminate()

    def _linger(self):
        """Half-close and discard what the client still sends (up to a second):
        closing a socket with unread input resets it, and the reset would
        destroy the close frame (and any error frame) still on its way."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            with gevent.Timeout(LINGER_SECONDS, False):
                while self.sock.recv(65536):
                    pass
        except (OSError, AttributeError):
            pass

    def closed(self, code, reason=None):
        connection = getattr(self, "edge_connection", None)
        if connection is not None:
            connection.release()
