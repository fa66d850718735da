"""The edge's HTTP routes (WSGI), one table of paths and handlers: WebSocket
upgrades, publish, Server-Sent Events (nodes/edge/sse.py), health, stats and
the built-in page.

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
    OPTIONS <any route>    a browser's CORS preflight (nodes/edge/cors.py)
"""

import json
import logging
import os
import time
from urllib.parse import parse_qs

import gevent

from discovery.base import validate_revocation
from mesh.envelope import HOOKS_HEADER
from mesh.subjects import Pattern, validate_subject

from nodes.hooks.delivery import hook_chain
from nodes.hooks.targets import plain_address
from nodes.jsontext import dumps

from .auth import token_from
from .connection import client_address
from .cors import CrossOrigin
from .protocol import DEFAULT_INTEREST_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, MAX_REQUEST_TIMEOUT, EdgeError, parse_position
from .sse import SSEConnection
from .websocket import MeshWebSocketApplication

log = logging.getLogger("meshnode.edge")

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "index.html")
BROWSER_CLIENT = os.path.join(os.path.dirname(PAGE), "meshnode.js")  # docs/BROWSER.md
FAVICON = os.path.join(os.path.dirname(PAGE), "favicon.svg")
STATUS = {200: "200 OK", 204: "204 No Content", 400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden",
          404: "404 Not Found", 405: "405 Method Not Allowed", 408: "408 Request Timeout",
          411: "411 Length Required",
          409: "409 Conflict", 413: "413 Payload Too Large", 429: "429 Too Many Requests", 503: "503 Service Unavailable",
          502: "502 Bad Gateway", 504: "504 Gateway Timeout"}


class Route:
    """``path`` exactly, or (``prefix``) every path under it, the rest handed to the handler;
    a path that matches with another of its ``methods`` is refused (405, ``refusal``) when
    ``refusal`` is given, else the next routes are tried, and 405 names the methods of every
    route that matched if none takes the method. A preflight names ``methods``."""

    def __init__(self, path, handler, methods, prefix=False, refusal=None):
        self.path, self.handler, self.methods, self.prefix, self.refusal = path, handler, methods, prefix, refusal

    def match(self, path):
        """The rest of ``path`` after a prefix, "" for an exact match, None if it does not match."""
        if self.prefix:
            return path[len(self.path):] if path.startswith(self.path) else None
        return "" if path == self.path else None


class EdgeApp:
    def __init__(self, edge):
        self.edge = edge
        self.websockets = MeshWebSocketApplication()
        self.cross_origin = CrossOrigin(edge.config.allowed_origins)
        self.routes = [
            Route("/healthz", self._healthz, {"GET"}),
            Route("/metrics", self._metrics, {"GET"}),
            Route("/stats", self._stats, {"GET"}),
            Route("/", self._page, {"GET"}),
            Route("/meshnode.js", self._browser_client, {"GET"}),
            Route("/favicon.ico", self._favicon, {"GET"}),
            Route("/ws", self._websocket, {"GET"}),
            Route("/ws/", self._subscribe_websocket, {"GET"}, prefix=True),
            Route("/pub/", self._publish, {"POST"}, prefix=True, refusal="pub with POST"),
            Route("/req/", self._request, {"POST"}, prefix=True, refusal="req with POST"),
            Route("/sub/", self._events, {"GET"}, prefix=True),
            Route("/interest/", self._interest, {"GET"}, prefix=True),
            Route("/revoke/", self._revoke, {"POST"}, prefix=True, refusal="revoke with POST"),
            Route("/hooks/", self._hooks, {"GET", "POST", "DELETE"}, prefix=True,
                  refusal="hooks take GET, POST or DELETE"),
            Route("/presence/", self._presence, {"GET"}, prefix=True),
            Route("/mesh", self._mesh, {"GET"}),
            Route("/channels", self._channels, {"GET"}),
        ]

    def __call__(self, environ, start_response):
        cors = self.cross_origin.headers(environ.get("HTTP_ORIGIN"))
        if cors:
            start_response = _with_headers(start_response, cors)
        try:
            return self._route(environ, start_response)
        except EdgeError as exc:
            self.edge.counts["errors"] += 1
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
        if origin is not None and not self.cross_origin.permits(origin):
            self.edge.counts["rejected_connections"] += 1
            raise EdgeError("forbidden_origin", f"origin {origin!r} is not allowed", http_status=403)
        try:
            return self.edge.grant_for(token_from(environ))
        except EdgeError:
            self.edge.counts["rejected_connections"] += 1
            raise

    def _check_capacity(self):
        if len(self.edge.connections) >= self.edge.config.max_connections:
            self.edge.counts["rejected_connections"] += 1
            raise EdgeError("too_many_connections",
                            f"this edge holds at most {self.edge.config.max_connections} connections",
                            http_status=503)

    def _route(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        try:  # the server already %-decoded it; WSGI hands it over as Latin-1
            path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            raise EdgeError("bad_path", "the path is not UTF-8") from None
        allowed = set()  # the methods of routes that match the path but not the method
        for route in self.routes:
            rest = route.match(path)
            if rest is None:
                continue
            if method == "OPTIONS":
                return self._preflight(environ, start_response, route)
            if method in route.methods:
                return route.handler(environ, start_response, method, rest)
            if route.refusal is not None:
                raise EdgeError("method_not_allowed", route.refusal, http_status=405)
            allowed |= route.methods
        if allowed:
            raise EdgeError("method_not_allowed", f"{path} takes {' or '.join(sorted(allowed))}, not {method}",
                            http_status=405)
        raise EdgeError("not_found", f"no route for {method} {path}", http_status=404)

    def _preflight(self, environ, start_response, route):
        """A browser asks whether a page of its origin may send this method and these headers."""
        origin = environ.get("HTTP_ORIGIN")
        if origin is None or not self.cross_origin.permits(origin):
            raise EdgeError("forbidden_origin", f"origin {origin!r} is not allowed", http_status=403)
        start_response(STATUS[204], self.cross_origin.preflight_headers(route.methods))
        return []

    def _healthz(self, environ, start_response, method, rest):
        return self._json(start_response, 200, {"ok": True, "name": self.edge.client.node})

    def _metrics(self, environ, start_response, method, rest):
        """Open like /healthz (docs/OPERATIONS.md: bind or firewall it)."""
        content_type, body = self.edge.metrics.render()
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    def _stats(self, environ, start_response, method, rest):
        self._admin(environ)
        return self._json(start_response, 200, self.edge.counters())

    def _page(self, environ, start_response, method, rest):
        return self._static(start_response, PAGE, "text/html; charset=utf-8")

    def _favicon(self, environ, start_response, method, rest):
        return self._static(start_response, FAVICON, "image/svg+xml")

    def _browser_client(self, environ, start_response, method, rest):
        return self._static(start_response, BROWSER_CLIENT, "text/javascript; charset=utf-8")

    def _mesh(self, environ, start_response, method, rest):
        self._admin(environ)
        picture = self.edge.view.picture()
        if picture is None:
            raise EdgeError("unavailable", "the mesh's picture could not be gathered (see the node's log)",
                            http_status=503)
        rates = (parse_qs(environ.get("QUERY_STRING", "")).get("rates") or [""])[0] == "1"
        return self._json(start_response, 200, {"ok": True, **picture,
                                                **({"rates": self.edge.view.recent_rates()} if rates else {})})

    def _channels(self, environ, start_response, method, rest):
        self._admin(environ)
        limit = _limit(environ)
        return self._json(start_response, 200, {"ok": True, **self.edge.client.channels(limit)})

    def _static(self, start_response, path, content_type):
        with open(path, "rb") as file:
            body = file.read()
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-cache")])
        return [body]

    def _subscribe_websocket(self, environ, start_response, method, pattern_text):
        return self._websocket(environ, start_response, method, pattern_text, subscribe_only=True)

    def _websocket(self, environ, start_response, method, rest, subscribe_only=False):
        """/ws (two-way) or /ws/<pattern> (subscribe-only)."""
        grant = self._admit(environ)
        self._check_capacity()
        pattern = None
        if subscribe_only:
            pattern = _pattern(rest)
            if not grant.may_subscribe(pattern):
                raise EdgeError("forbidden", f"not allowed to subscribe to {pattern.text!r}", http_status=403)
        environ["meshnode.edge"] = self.edge
        environ["meshnode.grant"] = grant
        environ["meshnode.pattern"] = pattern
        environ["meshnode.console"] = (parse_qs(environ.get("QUERY_STRING", "")).get("console") or [""])[0] == "1"
        try:
            return self.websockets(environ, start_response)
        except Exception as exc:  # ws4py's HandshakeError for a request that is not an upgrade
            raise EdgeError("bad_handshake", f"WebSocket handshake failed: {exc}") from None

    def _request(self, environ, start_response, method, subject):
        return self._publish(environ, start_response, method, subject, request=True)

    def _publish(self, environ, start_response, method, subject, request=False):
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

    def _interest(self, environ, start_response, method, subject):
        self._admit(environ)
        try:
            validate_subject(subject)
        except ValueError as exc:
            raise EdgeError("invalid_subject", str(exc)) from None
        timeout = _seconds(environ, "timeout", DEFAULT_INTEREST_TIMEOUT)
        self.edge.wait_for_interest(subject, timeout)
        return self._json(start_response, 200, {"ok": True, "subject": subject})

    def _presence(self, environ, start_response, method, channel):
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
        if not self.edge.auth.enabled and not self.edge.config.hooks_open:
            if not _loopback_client(environ):
                raise EdgeError("forbidden", "without auth, webhooks are managed from loopback only "
                                             "(start the node with --hooks-open, or with --auth-*)", http_status=403)
            origin = environ.get("HTTP_ORIGIN")
            if origin is not None and not self.cross_origin.listed(origin) and not _same_origin(environ, origin):
                raise EdgeError("forbidden", f"without auth, a page of another origin ({origin}) may manage "
                                             "webhooks only when --allowed-origin names it", http_status=403)
        hooks = self.edge.hooks
        if method == "GET":
            return self._json(start_response, 200, {"ok": True, "hooks": hooks.listing(key)})
        if method == "DELETE":
            url = (parse_qs(environ.get("QUERY_STRING", "")).get("url") or [None])[0]
            if not url or not hooks.remove(key, url):
                raise EdgeError("unknown_hook", f"no hook for {url!r} under key {key!r}", http_status=404)
            return self._json(start_response, 200, {"ok": True})
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
            record = hooks.add({**{k: fields[k] for k in ("url", "pattern", "secrets", "max_age")
                                        if k in fields}, "key": key})
        except (ValueError, TypeError) as exc:
            raise EdgeError("bad_request", str(exc)) from None
        return self._json(start_response, 200, {"ok": True, "hook": record})

    def _revoke(self, environ, start_response, method, subject):
        self._admin(environ)
        seconds = _seconds(environ, "for", self.edge.revocations.default_seconds)
        try:
            subject, until = validate_revocation(subject, time.time() + seconds)
        except ValueError as exc:
            raise EdgeError("bad_request", str(exc)) from None
        return self._json(start_response, 200, {"ok": True, **self.edge.revocations.revoke(subject, until)})

    def _events(self, environ, start_response, method, pattern_text):
        grant = self._admit(environ)
        self._check_capacity()
        pattern = _pattern(pattern_text)
        resume = environ.get("HTTP_LAST_EVENT_ID") or \
            (parse_qs(environ.get("QUERY_STRING", "")).get("since") or [None])[0]
        position = parse_position(resume) if resume else None
        connection = SSEConnection(self.edge, grant, environ.get("meshnode.socket"), environ.get("meshnode.handler"),
                                   client_address(environ))
        self.edge.connections.add(connection)
        self.edge.events.connection_event("connect", connection)
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


def _with_headers(start_response, extra):
    def start(status, headers, exc_info=None):
        return start_response(status, [*headers, *extra], exc_info)
    return start


def _same_origin(environ, origin):
    return origin.split("://", 1)[-1] == environ.get("HTTP_HOST")


def _loopback_client(environ):
    try:
        return plain_address(environ.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False
