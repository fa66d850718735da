"""Accepting HTTP connections for an edge without letting clients starve the node.

It owns the descriptor budget (how many connections the open-file limit
leaves after the node's own reserve), the server that holds every connection
in a slot of that budget and refuses the ones beyond it at once, and the
per-connection handler: one deadline for a request's headers, TCP_NODELAY,
and the hand-over of an upgraded socket to its WebSocket.
"""

import collections
import json
import logging
import socket

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

log = logging.getLogger("meshnode.edge")

# Descriptors the node keeps for itself: its ZeroMQ sockets and their mailboxes,
# a TCP connection per peer link and per local client socket, ZooKeeper, logs.
RESERVED_FILES_MIN = 256
RESERVED_FILES_MAX = 4096
# HTTP connections beyond the WebSocket/SSE cap, for plain requests and for the
# 503s that refuse a long-lived connection when the cap is reached.
REQUEST_HEADROOM = 64
# Slots beyond that, used only to answer a connection that finds every other
# slot taken: it gets a 503 and is closed at once. When even these are taken,
# new connections wait in the kernel's listen queue.
REFUSAL_SLOTS = 32


class _MalformedRequests:
    """Where gevent's WSGI server reports requests it could not parse (bad
    request lines, headers, chunking): counted, and one log line per 10 s
    instead of one unformatted stderr line per client."""

    def __init__(self, edge):
        self.edge = edge

    def write(self, message):
        self.edge.counts["bad_requests"] += 1
        text = message.strip().rsplit(": ", 1)[-1][:200]  # without the socket's repr; the client's text is cut
        self.edge.floodlog.note("bad-request", f"malformed HTTP requests, e.g. {text!r}", logging.WARNING)

    def flush(self):
        pass


def connection_budget(wanted, open_files):
    """The edge's cap on WebSocket and SSE connections: ``wanted``, or, if less,
    what the open-file limit leaves after the node's reserve (an eighth of the
    limit, 256 to 4,096), the headroom for plain requests and the refusal slots."""
    reserve = min(RESERVED_FILES_MAX, max(RESERVED_FILES_MIN, open_files // 8))
    budget = max(1, open_files - reserve - REQUEST_HEADROOM - REFUSAL_SLOTS)
    if wanted > budget:
        log.warning("--max-connections %d lowered to %d: the open-file limit is %d and the node keeps %d "
                    "(raise the limit, e.g. LimitNOFILE= in systemd)", wanted, budget, open_files, reserve)
        return budget
    return wanted


class EdgeServer(WSGIServer):
    """gevent's WSGI server where every HTTP connection, finished request or
    not, holds a slot: ``max_connections`` plus REQUEST_HEADROOM serve, and a
    connection that finds those taken (or, with ``max_per_address``, finds its
    address at that many connections) is answered 503 and closed at once,
    counted in ``refused_connections``, instead of waiting or running the
    process out of descriptors."""

    def __init__(self, address, application, edge):
        self.edge = edge
        self.serving_slots = edge.config.max_connections + REQUEST_HEADROOM
        self.per_address = collections.Counter()  # only with max_per_address
        super().__init__(address, application, log=None, error_log=_MalformedRequests(edge),
                         handler_class=EdgeHandler, spawn=Pool(self.serving_slots + REFUSAL_SLOTS))

    def handle(self, sock, address):
        if len(self.pool) > self.serving_slots:  # this greenlet holds one of the refusal slots
            self._refuse(sock, "full", "every connection slot is taken "
                                       "(raise --max-connections or the open-file limit)")
            return
        limit = self.edge.config.max_per_address
        if not limit:
            super().handle(sock, address)
            return
        host = address[0]
        if self.per_address[host] >= limit:
            self._refuse(sock, "per-address", f"an address holds {limit} connections (--max-per-address)")
            return
        self.per_address[host] += 1
        try:
            super().handle(sock, address)
        finally:
            self.per_address[host] -= 1
            if not self.per_address[host]:
                del self.per_address[host]

    def _refuse(self, sock, cause, message):
        self.edge.counts["refused_connections"] += 1
        self.edge.floodlog.note(cause, f"refused connections: {message}", logging.WARNING)
        body = json.dumps({"ok": False, "error": "too_many_connections", "message": message}).encode()
        try:
            sock.setblocking(False)
            sock.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                      b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            sock.shutdown(socket.SHUT_WR)
            with gevent.Timeout(0.2, False):  # the request unread, a close now would reset the answer
                sock.setblocking(True)
                while sock.recv(4096):
                    pass
        except OSError:
            pass
        finally:
            sock.close()


class EdgeHandler(WSGIHandler):
    """gevent's WSGI handler that, after a WebSocket upgrade, runs the
    WebSocket in its own greenlet (ws4py's handler spawns a second one and
    waits for it), and gives every request a deadline for each read and write
    (a client that sends half a request is dropped, not held forever). A
    WebSocket clears the deadline: ws4py makes its socket blocking."""

    def read_requestline(self):
        # One deadline for the request line and the headers together: a client that
        # trickles them (or idles between keep-alive requests) is closed.
        self._header_timer = gevent.Timeout.start_new(self.server.application.edge.config.header_timeout)
        return super().read_requestline()

    def read_request(self, raw_requestline):
        try:
            return super().read_request(raw_requestline)
        finally:
            self._header_timer.cancel()

    def handle_one_request(self):
        try:
            return super().handle_one_request()
        finally:  # also when it returned before reading headers (closed, line too long)
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()

    def handle(self):
        edge = self.server.application.edge
        try:
            self._handle()
        except gevent.Timeout as timeout:
            if timeout is not getattr(self, "_header_timer", None):
                raise
            edge.counts["header_timeouts"] += 1
            edge.floodlog.note("header-timeout", f"closed connections whose headers did not come within "
                                                f"{edge.config.header_timeout} s")

    def _handle(self):
        self.socket.settimeout(self.server.application.edge.config.request_timeout)
        # pywsgi writes a response's headers and body separately; with Nagle on,
        # the body waited for the client's delayed ACK: 44 ms per request on a
        # keep-alive connection (23 POSTs/s). Frames are never tiny writes we
        # would want coalesced, so no Nagle for WebSockets either.
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        super().handle()

    def run_application(self):
        if not self.environ.get("HTTP_UPGRADE", "").lower():
            self.environ["meshnode.socket"] = self.socket  # an event stream watches it for departure
            self.environ["meshnode.handler"] = self  # and ends the connection with the stream
            return super().run_application()
        self.environ["ws4py.socket"] = self.socket
        self.result = self.application(self.environ, self.start_response) or []
        self.process_result()
        websocket = self.environ.pop("ws4py.websocket", None)
        if websocket is None:
            return None
        # The socket now belongs to the WebSocket: keep pywsgi from closing it.
        self.socket = None
        self.rfile.close()
        self.environ = None
        websocket.run()
