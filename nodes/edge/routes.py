"""The edge's HTTP routes (WSGI): WebSocket upgrades, publish, Server-Sent Events,
health, stats and the built-in page.

    GET  /                 the built-in page (subscribe, publish, watch)
    GET  /ws               two-way WebSocket (JSON protocol, docs/EDGE.md)
    GET  /ws/<pattern>     subscribe-only WebSocket
    POST /pub/<subject>    publish the body
    POST /req/<subject>?timeout=S   a request: the reply, or 503 no responders, 504 timeout
    GET  /sub/<pattern>    Server-Sent Events
    GET  /interest/<subject>?timeout=S   wait until a subscriber in the mesh covers it
    POST /revoke/<sub>?for=S  refuse the tokens of sub mesh-wide (an admin token when auth is on)
    GET/POST/DELETE /hooks/<key>  the webhook registry (an admin token when auth is on; without
                           auth, loopback clients only unless --hooks-open)
    GET  /healthz, /stats  JSON
    GET  /metrics          Prometheus
"""

import json
import logging
import os
import socket
import time
from urllib.parse import parse_qs

import gevent
from gevent.socket import wait_read

from discovery.base import validate_revocation
from mesh.envelope import HOOKS_HEADER
from mesh.subjects import Pattern, validate_subject

from .auth import token_from
from .connection import EdgeConnection, client_address
from .protocol import (DEFAULT_INTEREST_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, MAX_REQUEST_TIMEOUT, EdgeError, dumps,
                        parse_position, render_error)
from .recovery import recovered_frames
from .fanout import encode_frame
from nodes.hooks.delivery import hook_chain
from nodes.hooks.targets import plain_address
from .websocket import MeshWebSocketApplication

log = logging.getLogger("meshnode.edge")

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "index.html")
BROWSER_CLIENT = os.path.join(os.path.dirname(PAGE), "meshnode.js")  # docs/BROWSER.md
STATUS = {200: "200 OK", 400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden",
          404: "404 Not Found", 405: "405 Method Not Allowed", 408: "408 Request Timeout",
          411: "411 Length Required",
          409: "409 Conflict", 413: "413 Payload Too Large", 429: "429 Too Many Requests", 503: "503 Service Unavailable",
          502: "502 Bad Gateway", 504: "504 Gateway Timeout"}


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


class EdgeApp:
    def __init__(self, edge):
        self.edge = edge
        self.websockets = MeshWebSocketApplication()

    def __call__(self, environ, start_response):
        try:
            return self._route(environ, start_response)
        except EdgeError as exc:
            self.edge.stats["errors"] += 1
            close = [("Connection", "close")] if exc.http_status == 408 else []  # the rest of the body is lost
            return self._json(start_response, exc.http_status,
                              {"ok": False, "error": exc.code, "message": str(exc)}, close)

    def _json(self, start_response, status, body, extra=()):
        data = dumps(body).encode("utf-8")
        start_response(STATUS[status], [("Content-Type", "application/json"),
                                        ("Content-Length", str(len(data))), *extra])
        return [data]

    def _admit(self, environ):
        """Origin, connection limit and token checks; returns the client's Grant."""
        origin = environ.get("HTTP_ORIGIN")
        allowed = self.edge.config.allowed_origins
        if allowed and origin is not None and origin not in allowed:
            self.edge.stats["rejected_connections"] += 1
            raise EdgeError("forbidden_origin", f"origin {origin!r} is not allowed", http_status=403)
        try:
            return self.edge.grant_for(token_from(environ))
        except EdgeError:
            self.edge.stats["rejected_connections"] += 1
            raise

    def _check_capacity(self):
        if len(self.edge.connections) >= self.edge.config.max_connections:
            self.edge.stats["rejected_connections"] += 1
            raise EdgeError("too_many_connections",
                            f"this edge holds at most {self.edge.config.max_connections} connections",
                            http_status=503)

    def _route(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        try:  # the server already %-decoded it; WSGI hands it over as Latin-1
            path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            raise EdgeError("bad_path", "the path is not UTF-8") from None
        if path == "/healthz":
            return self._json(start_response, 200, {"ok": True, "name": self.edge.client.node})
        if path == "/metrics":  # open like /healthz (docs/OPERATIONS.md: bind or firewall it)
            content_type, body = self.edge.node.metrics.render()
            start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/stats":
            self._admin(environ)
            return self._json(start_response, 200, self.edge.counters())
        if path == "/" and method == "GET":
            return self._static(start_response, PAGE, "text/html; charset=utf-8")
        if path == "/meshnode.js" and method == "GET":
            return self._static(start_response, BROWSER_CLIENT, "text/javascript; charset=utf-8")
        if path == "/ws" or path.startswith("/ws/"):
            return self._websocket(environ, start_response, path)
        if path.startswith("/pub/") or path.startswith("/req/"):
            if method != "POST":
                raise EdgeError("method_not_allowed", f"{path[1:4]} with POST", http_status=405)
            return self._publish(environ, start_response, path[5:], request=path.startswith("/req/"))
        if path.startswith("/sub/") and method == "GET":
            return self._events(environ, start_response, path[5:])
        if path.startswith("/interest/") and method == "GET":
            return self._interest(environ, start_response, path[10:])
        if path.startswith("/revoke/"):
            if method != "POST":
                raise EdgeError("method_not_allowed", "revoke with POST", http_status=405)
            return self._revoke(environ, start_response, path[8:])
        if path.startswith("/hooks/"):
            return self._hooks(environ, start_response, method, path[7:])
        if path.startswith("/presence/") and method == "GET":
            return self._presence(environ, start_response, path[10:])
        if path == "/mesh" and method == "GET":
            self._admin(environ)
            picture = self.edge.view.picture()
            if picture is None:
                raise EdgeError("unavailable", "the mesh's picture could not be gathered (see the node's log)",
                                http_status=503)
            return self._json(start_response, 200, {"ok": True, **picture})
        if path == "/channels" and method == "GET":
            self._admin(environ)
            limit = _limit(environ)
            return self._json(start_response, 200, {"ok": True, **self.edge.client.channels(limit)})
        raise EdgeError("not_found", f"no route for {method} {path}", http_status=404)

    def _static(self, start_response, path, content_type):
        with open(path, "rb") as file:
            body = file.read()
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-cache")])
        return [body]

    def _websocket(self, environ, start_response, path):
        grant = self._admit(environ)
        self._check_capacity()
        pattern = None
        if path.startswith("/ws/"):
            pattern = _pattern(path[4:])
            if not grant.may_subscribe(pattern):
                raise EdgeError("forbidden", f"not allowed to subscribe to {pattern.text!r}", http_status=403)
        environ["meshnode.edge"] = self.edge
        environ["meshnode.grant"] = grant
        environ["meshnode.pattern"] = pattern
        try:
            return self.websockets(environ, start_response)
        except Exception as exc:  # ws4py's HandshakeError for a request that is not an upgrade
            raise EdgeError("bad_handshake", f"WebSocket handshake failed: {exc}") from None

    def _publish(self, environ, start_response, subject, request=False):
        """POST /pub (publish the body) or POST /req (a request with the body: answer with the reply)."""
        grant = self._admit(environ)
        try:
            validate_subject(subject)
        except ValueError as exc:
            raise EdgeError("invalid_subject", str(exc)) from None
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        if length < 0:
            raise EdgeError("length_required", "send a Content-Length", http_status=411)
        limit = self.edge.config.max_payload
        if length > limit:
            raise EdgeError("too_large", f"body of {length} bytes is over the limit of {limit} bytes",
                            http_status=413)
        # --request-timeout bounds each read; a body that trickles in a byte at a
        # time must still arrive whole within it.
        body = None
        with gevent.Timeout(self.edge.config.request_timeout, False):
            body = environ["wsgi.input"].read(length)
        if body is None:
            raise EdgeError("timeout", f"the body did not arrive within {self.edge.config.request_timeout} s",
                            http_status=408)
        data = _body_data(environ.get("CONTENT_TYPE", ""), body)
        if request:
            timeout = min(_seconds(environ, "timeout", DEFAULT_REQUEST_TIMEOUT), MAX_REQUEST_TIMEOUT)
            reply = self.edge.request(grant, subject, data, timeout)
            return self._json(start_response, 200, {"ok": True, "subject": subject, "data": reply.data,
                                                    "origin": reply.origin})
        try:
            chain = hook_chain(environ.get("HTTP_MESHNODE_HOOKS", ""))
        except ValueError as exc:
            raise EdgeError("bad_request", str(exc)) from None
        seq = self.edge.publish(grant, subject, data, headers={HOOKS_HEADER: chain} if chain else None)
        return self._json(start_response, 200, {"ok": True, "subject": subject, "seq": seq,
                                                "position": self.edge.position_after(subject, seq)})

    def _interest(self, environ, start_response, subject):
        self._admit(environ)
        try:
            validate_subject(subject)
        except ValueError as exc:
            raise EdgeError("invalid_subject", str(exc)) from None
        timeout = _seconds(environ, "timeout", DEFAULT_INTEREST_TIMEOUT)
        self.edge.wait_for_interest(subject, timeout)
        return self._json(start_response, 200, {"ok": True, "subject": subject})

    def _presence(self, environ, start_response, channel):
        """GET /presence/<channel>: who is in it, mesh-wide; a token that may
        subscribe to the channel (or an admin one) when auth is on."""
        grant = self._admit(environ)
        pattern = _pattern(channel)
        if not (grant.admin or grant.may_subscribe(pattern)):
            raise EdgeError("forbidden", f"not allowed to subscribe to {channel!r}, so not to see who is there",
                            http_status=403)
        return self._json(start_response, 200, {"ok": True, **self.edge.client.presence(channel, _limit(environ))})

    def _admin(self, environ):
        """Endpoints that reveal or change the mesh: an admin token when auth is on."""
        grant = self._admit(environ)
        if self.edge.auth.enabled and not grant.admin:
            raise EdgeError("forbidden", "this needs a token with \"admin\": true", http_status=403)

    def _hooks(self, environ, start_response, method, key):
        """POST /hooks/<key> {"url", "secret"?, "pattern"?, "max_age"?}, DELETE /hooks/<key>?url=,
        GET /hooks/<key>: the webhook registry (docs/WEBHOOKS.md); an admin token when auth is on,
        a loopback client (or --hooks-open) when it is off."""
        self._admin(environ)
        if not self.edge.auth.enabled and not self.edge.config.hooks_open \
                and not _loopback_client(environ):
            raise EdgeError("forbidden", "without auth, webhooks are managed from loopback only "
                                         "(start the node with --hooks-open, or with --auth-*)", http_status=403)
        node = self.edge.node
        if method == "GET":
            return self._json(start_response, 200, {"ok": True, "hooks": node.hook_delivery.listing(key)})
        if method == "DELETE":
            url = (parse_qs(environ.get("QUERY_STRING", "")).get("url") or [None])[0]
            if not url or not node.hooks.remove(key, url):
                raise EdgeError("unknown_hook", f"no hook for {url!r} under key {key!r}", http_status=404)
            return self._json(start_response, 200, {"ok": True})
        if method != "POST":
            raise EdgeError("method_not_allowed", "hooks take GET, POST or DELETE", http_status=405)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if not 0 < length <= 8192:
            raise EdgeError("bad_request", "send the registration as a JSON body of at most 8 KiB")
        fields = _body_data("application/json", environ["wsgi.input"].read(length))
        if not isinstance(fields, dict):
            raise EdgeError("bad_request", "the registration is a JSON object")
        if "secret" in fields:
            fields["secrets"] = [fields.pop("secret")]
        try:
            record = node.hooks.add({**{k: fields[k] for k in ("url", "pattern", "secrets", "max_age")
                                        if k in fields}, "key": key})
        except (ValueError, TypeError) as exc:
            raise EdgeError("bad_request", str(exc)) from None
        return self._json(start_response, 200, {"ok": True, "hook": record})

    def _revoke(self, environ, start_response, subject):
        self._admin(environ)
        seconds = _seconds(environ, "for", self.edge.node.config.revocation_seconds)
        try:
            subject, until = validate_revocation(subject, time.time() + seconds)
        except ValueError as exc:
            raise EdgeError("bad_request", str(exc)) from None
        return self._json(start_response, 200, {"ok": True, **self.edge.node.revoke(subject, until)})

    def _events(self, environ, start_response, pattern_text):
        grant = self._admit(environ)
        self._check_capacity()
        pattern = _pattern(pattern_text)
        resume = environ.get("HTTP_LAST_EVENT_ID") or \
            (parse_qs(environ.get("QUERY_STRING", "")).get("since") or [None])[0]
        position = parse_position(resume) if resume else None
        connection = SSEConnection(self.edge, grant, environ.get("meshnode.socket"), environ.get("meshnode.handler"),
                                   client_address(environ))
        self.edge.connections.add(connection)
        self.edge.node.events.connection_event("connect", connection)
        try:
            connection.subscribe(pattern, recover=position)  # raises forbidden before any byte is sent
        except EdgeError:
            connection.release()
            raise
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
                                  ("X-Accel-Buffering", "no")])
        return connection.events(self.edge.config.keepalive_seconds,
                                 None if position is None else (pattern, position))


def _pattern(text):
    try:
        return Pattern(text)
    except ValueError as exc:
        raise EdgeError("invalid_subject", str(exc)) from None


def _seconds(environ, name, default):
    """A query parameter holding seconds (0 or more); EdgeError if it is not one."""
    text = (parse_qs(environ.get("QUERY_STRING", "")).get(name) or [None])[0]
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise EdgeError("bad_request", f"{name} must be a number of seconds, 0 or more, not {text!r}")
    return value


def _body_data(content_type, body):
    """JSON bodies stay JSON, text becomes str, anything else bytes."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json" or kind.endswith("+json"):
        try:
            return json.loads(body)
        except ValueError as exc:
            raise EdgeError("bad_json", f"body is not JSON: {exc}") from None
    if kind.startswith("text/"):
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise EdgeError("bad_data", "text body is not UTF-8") from None
    return body


def _limit(environ):
    """?limit=N (1..10,000; default 1,000) for listings."""
    text = (parse_qs(environ.get("QUERY_STRING", "")).get("limit") or ["1000"])[0]
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 10_000:
        raise EdgeError("bad_request", "limit must be an integer from 1 to 10000")
    return limit


def _loopback_client(environ):
    try:
        return plain_address(environ.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False
