"""WebSocket edge connections on ws4py: the JSON protocol of docs/EDGE.md.

ws4py reads frames and calls ``received_message``; it runs in the HTTP
handler's own greenlet (one greenlet per connection). Writes, ws4py's own
pongs and close frames included, go out in order: a frame is written at once
with a non-blocking write while nothing is waiting; otherwise it joins the
connection's bounded queue, which a writer greenlet drains and then leaves.
So an idle or keeping-up client costs no greenlet of its own, frames never
interleave, and a client that stops reading blocks nothing but its writer.
"""

import logging
import os
import socket

import gevent
from ws4py.server.wsgiutils import WebSocketWSGIApplication
from ws4py.websocket import WebSocket

from nodes.jsontext import dumps

from .connection import EdgeConnection, client_address
from .protocol import PONG, EdgeError, parse_frame, render_error, render_ok
from .recovery import replay_to_websocket
from .fanout import encode_frame

log = logging.getLogger("meshnode.edge")

CLOSE_POLICY = 1008  # RFC 6455: policy violation (slow consumer, auth)
CLOSE_TOO_BIG = 1009
CLOSE_GOING_AWAY = 1001
CLOSE_GRANT_ENDED = {"token_expired": 4001, "token_revoked": 4003}  # application codes (RFC 6455 7.4.2)
FLUSH_SECONDS = 5.0
LINGER_SECONDS = 1.0
FRAME_SLACK = 1024  # a frame may exceed the payload limit by its JSON framing
MAX_OPEN_REQUESTS = 100  # requests one WebSocket may have waiting for replies
# Kernel send buffer per client. Left to autotuning it grows to megabytes and
# hides a stalled client's backlog from the queue limit (and costs memory).
SEND_BUFFER_BYTES = 128 * 1024


class WebSocketConnection(EdgeConnection):
    kind = "ws"

    def __init__(self, websocket, edge, grant):
        super().__init__(edge, grant, edge.config.queue_bytes, edge.config.max_subscriptions,
                         client_address(websocket.environ))
        self.websocket = websocket
        self._partial = b""  # the rest of the frame being written, if any
        self._writer = None  # a greenlet while a backlog exists
        self._finisher = None
        self._fd = websocket.sock.fileno()
        os.set_blocking(self._fd, False)  # gevent keeps it so; the inline write relies on it
        try:
            websocket.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        except OSError:
            pass

    def offer(self, data):
        if self.closed or self.cut:
            return
        if self._writer is not None or self.queued_bytes:
            super().offer(data)  # a backlog exists: keep order, respect the limit
            return
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError:  # the peer went away; ws4py's reader notices too
            self.release()
            return
        if written < len(data):
            self._partial = memoryview(data)[written:]
            self._writer = gevent.spawn(self._drain)

    def _drain(self):
        """Write the frame in flight and the queue, then end."""
        sock = self.websocket.sock
        try:
            while True:
                while self._partial:
                    sent = sock.send(self._partial)
                    self._partial = self._partial[sent:]
                data = self.pop()
                if data is None:
                    return
                self._partial = memoryview(data)
        except (OSError, AttributeError):
            self.release()
        finally:
            if self._writer is gevent.getcurrent():
                self._writer = None

    def send_text(self, text):
        self.offer(encode_frame("ws", text.encode("utf-8")))

    def end_grant(self, code, message):
        self.cut_off(message, CLOSE_GRANT_ENDED[code], render_error(EdgeError(code, message)))

    def cut_off(self, reason, code=CLOSE_POLICY, last_words="", by_reader=False):
        """Drop the queue, finish the frame in flight, send ``last_words`` (a
        JSON text, if any), then close with ``code``. ``by_reader``: called
        from the connection's own reader, which then lingers itself."""
        if self.cut:
            return
        self.cut = True
        if code in (CLOSE_POLICY, CLOSE_TOO_BIG):
            log.warning("cutting off %s: %s", self.websocket.peer_address, reason)
        if self._writer is not None:
            self._writer.kill(block=False)
            self._writer = None
        self.drop_queue()
        close = self.websocket.stream.close(code=code, reason=reason).single(mask=False)
        last = encode_frame("ws", last_words.encode("utf-8")) if last_words else b""
        self._finisher = gevent.spawn(self._finish, bytes(self._partial) + last + close, by_reader)

    def _finish(self, data, by_reader):
        self.websocket.server_terminated = True
        try:
            with gevent.Timeout(FLUSH_SECONDS):
                self.websocket.sock.sendall(data)
        except (OSError, AttributeError, gevent.Timeout):
            pass
        # A reader blocked in recv must see end-of-stream; a reader that cut us
        # off itself is about to linger (drain what the client still sends), and
        # shutting the read side under it would turn its close into a reset
        # that destroys the close frame (a 2 MB frame refused mid-send did).
        try:
            self.websocket.sock.shutdown(socket.SHUT_WR if by_reader else socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        self.release()

    def flush(self, timeout=FLUSH_SECONDS):
        """Let the writer send what is queued (before ws4py closes the socket)."""
        with gevent.Timeout(timeout, False):
            if self._writer is not None:
                self._writer.join()
            if self._finisher is not None:
                self._finisher.join()


REPORT_ONLY_CLOSE_CODES = (1005, 1006, 1015)


class MeshWebSocket(WebSocket):
    """ws4py handler; the edge passes itself and the client's grant in environ."""

    def opened(self):
        edge = self.environ["meshnode.edge"]
        self.edge_connection = WebSocketConnection(self, edge, self.environ["meshnode.grant"])
        self.edge_connection.console = bool(self.environ.get("meshnode.console"))
        self._open_requests = 0
        edge.connections.add(self.edge_connection)
        edge.events.connection_event("connect", self.edge_connection)
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
            self.edge_connection.edge.counts["errors"] += 1
            reason = f"frame over {limit} bytes"
            self.edge_connection.cut_off(reason, CLOSE_TOO_BIG, render_error(EdgeError("too_large", reason)),
                                         by_reader=True)
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
        self._request_id = request_id  # for the reply to a failure that is not an EdgeError
        connection = self.edge_connection
        if connection.cut:  # expired, revoked or cut off: frames still in flight are not served
            return
        if op == "ping":
            connection.send_text(PONG)
            return
        if op == "sub":
            if self.environ.get("meshnode.pattern") is not None:
                raise EdgeError("forbidden", "this endpoint is subscribe-only for its own pattern", request_id)
            connection.subscribe(target, request_id, recover=data)
            if data is not None:
                summary = replay_to_websocket(connection.edge, connection, target, data, request_id)
                connection.send_text(render_ok(request_id, **summary))
                return
        elif op == "unsub":
            connection.unsubscribe(target, request_id)
        elif op == "interest":
            connection.edge.wait_for_interest(target, data, request_id)
        elif op == "req":
            if self.environ.get("meshnode.pattern") is not None:
                raise EdgeError("forbidden", "this endpoint is subscribe-only", request_id)
            self._start_request(target, data, request_id)
            return
        elif op == "refresh":
            connection.refresh(connection.edge.grant_for(data, request_id), request_id)
        else:
            if self.environ.get("meshnode.pattern") is not None:
                raise EdgeError("forbidden", "this endpoint is subscribe-only", request_id)
            connection.edge.publish(connection.grant, target, data, request_id)
        connection.send_text(render_ok(request_id))

    def _start_request(self, subject, data_and_timeout, request_id):
        """A request waits for its reply in a greenlet of its own, so the
        connection goes on reading; at most MAX_OPEN_REQUESTS at a time."""
        connection = self.edge_connection
        if self._open_requests >= MAX_OPEN_REQUESTS:
            raise EdgeError("too_many_requests", f"at most {MAX_OPEN_REQUESTS} requests at a time", request_id, 429)
        self._open_requests += 1

        def run():
            try:
                reply = connection.edge.request(connection.grant, subject, *data_and_timeout, request_id)
                if not connection.cut:
                    connection.send_text(dumps({"op": "reply", "id": request_id, "data": reply.data,
                                                "origin": reply.origin}))
            finally:
                self._open_requests -= 1

        gevent.spawn(self._serve, run, request_id)

    def _serve(self, action, request_id=None):
        self._request_id = request_id
        try:
            action()
        except EdgeError as exc:
            self._reply_error(exc)
        except Exception as exc:  # a bug must not take the connection or the node down
            log.exception("edge request failed")
            self._reply_error(EdgeError("internal", f"{type(exc).__name__}: {exc}",
                                        request_id if request_id is not None else self._request_id))

    def _reply_error(self, error):
        self.edge_connection.edge.counts["errors"] += 1
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

    def unhandled_error(self, error):
        """ws4py logs every failed receive with a traceback; a client that went
        away is no error of ours: count it, and say so once in a while."""
        edge = self.environ["meshnode.edge"]
        connection = getattr(self, "edge_connection", None)
        if connection is not None and connection.cut:
            return  # we cut it off, and closed the socket under the reader
        if isinstance(error, (ConnectionError, TimeoutError)):
            edge.counts["client_resets"] += 1
            edge.floodlog.note("reset", f"WebSocket clients went away without closing ({error})")
        else:
            edge.counts["errors"] += 1
            edge.floodlog.note(type(error).__name__, f"WebSocket receive failed: {error!r}", logging.WARNING)

    def close(self, code=1000, reason=""):
        """ws4py answers a close frame by echoing its code, and reads one with
        no code as 1005, and a malformed one (one byte, a code no endpoint may
        send) as 1005 with a reason. Codes that only report (1005, 1006, 1015)
        are never sent in a close frame (RFC 6455 7.4.1): a close with no code
        is answered with 1000, a malformed one with 1002 (protocol error)."""
        if code in REPORT_ONLY_CLOSE_CODES:
            code = 1002 if reason else 1000
        super().close(code, reason)

    def closed(self, code, reason=None):
        connection = getattr(self, "edge_connection", None)
        if connection is not None:
            connection.release()


class MeshWebSocketApplication(WebSocketWSGIApplication):
    """ws4py's upgrade handshake; the handler gets only the keys it needs, not a
    copy of the whole WSGI environ (memory per connection)."""

    def make_websocket(self, sock, protocols, extensions, environ):
        keep = {key: environ.get(key) for key in ("meshnode.edge", "meshnode.grant", "meshnode.pattern",
                                                  "meshnode.console", "REMOTE_ADDR", "REMOTE_PORT")}
        environ["ws4py.websocket"] = websocket = MeshWebSocket(sock, protocols, extensions, keep)
        return websocket
