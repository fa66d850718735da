"""The node's ROUTER control socket: answers requests from clients, tools and peers.

Requests and replies are the msgpack maps of :mod:`mesh.control`. The server
holds a table of commands: each feature of the node (membership, history,
queues, webhooks, the edge's presence...) is a :class:`Feature` that brings its
own commands and its own part of the ``stats`` reply, and is added with
:meth:`ControlServer.add`. Anything that is not a well-formed request gets an
error reply (when it can be addressed) and is counted, and never stops the loop.
"""

import logging

import gevent
import zmq

from mesh import control
from mesh.addresses import tcp_endpoint
from mesh.concurrency import pick_waiter, recv_multipart

log = logging.getLogger("meshnode.control")

MAX_REQUEST_BYTES = 64 * 1024


class RequestError(Exception):
    """Raised by a command handler to answer with ``ok: false``."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def bounded_int(value, name, low, high, default):
    """A request's integer field: ``default`` when absent, else an int (not a
    bool) from ``low`` to ``high``; ValueError naming it otherwise."""
    if value is None:
        return default
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high:,}")
    return value


def flag(request, name, default):
    """A request's boolean field (``default`` when absent); RequestError ``bad_request`` otherwise."""
    value = request.get(name, default)
    if not isinstance(value, bool):
        raise RequestError("bad_request", f"{name} must be true or false")
    return value


class Feature:
    """A part of the node that answers control commands and reports counters."""

    def commands(self):
        """``{name: handler}``; a handler takes the request map and returns the
        reply's fields, or raises RequestError."""
        return {}

    def stats(self):
        """This feature's fields of the ``stats`` reply (empty when it has none to give)."""
        return {}


class ControlServer:
    def __init__(self, context, host, port, curve=None):
        self.sock = context.socket(zmq.ROUTER)
        if curve is not None:
            curve.serve(self.sock)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.bind(tcp_endpoint(host, port))
        self.port = int(self.sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
        self._commands = {}
        self._features = []
        self.requests = 0
        self.malformed = 0
        self.rejected = 0
        self.unknown_commands = 0
        self._wait = pick_waiter()
        self._loop = None

    def add(self, feature):
        """Answer ``feature``'s commands and report its stats; a command name is taken once."""
        commands = feature.commands()
        taken = set(commands) & set(self._commands)
        if taken:
            raise ValueError(f"control commands {sorted(taken)} are already answered")
        self._commands.update(commands)
        self._features.append(feature)

    def feature_stats(self):
        """Every added feature's part of ``stats``, in the order they were added."""
        merged = {}
        for feature in self._features:
            merged.update(feature.stats())
        return merged

    def counters(self):
        return {"requests": self.requests, "malformed": self.malformed,
                "rejected": self.rejected, "unknown_commands": self.unknown_commands}

    def start(self):
        self._loop = gevent.spawn(self._serve)

    def _serve(self):
        while True:
            frames = recv_multipart(self.sock, self._wait)
            reply = self._answer(frames)
            if reply is not None:
                # ROUTER drops replies to peers that left; never blocks.
                self.sock.send_multipart(frames[:-1] + [control.encode(reply)])

    def _answer(self, frames):
        self.requests += 1
        if len(frames) < 2:
            self.malformed += 1
            return None
        try:
            request = control.decode(frames[-1])
        except ValueError as exc:
            self.malformed += 1
            return {"v": control.CONTROL_VERSION, "ok": False, "error": "malformed", "message": str(exc)}
        reply = {"v": control.CONTROL_VERSION, "id": request.get("id")}
        version = request.get("v")
        if type(version) is not int or version != control.CONTROL_VERSION:
            self.rejected += 1
            reply.update(ok=False, error="unsupported_version",
                         message=f"control version {version!r} is not {control.CONTROL_VERSION}")
            return reply
        cmd = request.get("cmd")
        method = self._commands.get(cmd) if isinstance(cmd, str) else None
        if method is None:
            self.unknown_commands += 1
            reply.update(ok=False, error="unknown_command", message=f"unknown command {cmd!r}")
            return reply
        try:
            reply.update(method(request) or {})
            reply["ok"] = True
        except RequestError as exc:
            self.rejected += 1
            reply.update(ok=False, error=exc.code, message=str(exc))
        except Exception as exc:  # a bug in a handler must not stop the node
            log.exception("control command %r failed", cmd)
            reply.update(ok=False, error="internal", message=f"{type(exc).__name__}: {exc}")
        return reply

    def stop(self):
        if self._loop is not None:
            self._loop.kill()
        self.sock.close(linger=0)
