"""An edge: the node's HTTP port for browsers and other non-ZeroMQ clients.

It owns the HTTP server (gevent WSGI with ws4py's upgrade handler), a mesh
Client connected to its own node (edges subscribe and publish like any local
client), the fan-out, the set of live connections and the edge counters.
It is handed what it uses of its node (:class:`NodeParts`), never the node.
Accepting connections is in :mod:`nodes.edge.server`, routing in
:mod:`nodes.edge.routes`, WebSocket in :mod:`nodes.edge.websocket`, Server-Sent
Events in :mod:`nodes.edge.sse`.
"""

import json
import logging
from dataclasses import dataclass, field

from mesh import Client, NoResponders, PayloadTooLarge, RemoteError, RequestTimeout
from mesh.publisher import DEFAULT_STREAM_IDLE

from .auth import Authenticator
from nodes.control import Feature

from .protocol import EdgeError
from .server import EdgeServer
from .fanout import Fanout
from .routes import EdgeApp
from .console import Console
from .floodlog import FloodLog
from .websocket import CLOSE_GOING_AWAY

log = logging.getLogger("meshnode.edge")

LIVE_SECONDS = 2.0  # longest a sub's reply waits for the node to have the subscription
INTEREST_SECONDS_MAX = 30.0  # longest an interest request may wait


@dataclass
class EdgeConfig:
    host: str = "127.0.0.1"
    port: int = 0
    max_payload: int = 1024 * 1024
    max_subscriptions: int = 128
    queue_bytes: int = 1024 * 1024
    max_connections: int = 10_000
    auth: Authenticator = None  # None: every client may do everything
    allowed_origins: list = field(default_factory=list)
    keepalive_seconds: float = 15.0
    request_timeout: float = 30.0
    stream_idle: float = DEFAULT_STREAM_IDLE
    header_timeout: float = 10.0
    buffer_bytes: int = 256 * 1024 * 1024
    max_per_address: int = 0
    hooks_open: bool = False  # /hooks from non-loopback clients without auth (docs/WEBHOOKS.md)


@dataclass
class NodeParts:
    """What an edge uses of its node: the node hands these over, the edge never holds the node."""
    name: str
    events: object  # nodes/events.py: connection and presence events
    revocations: object  # nodes/revocations.py: revoked(sub), revoke(sub, until), default_seconds
    hooks: object  # nodes/hooks/commands.py: add, remove, listing (/hooks)
    metrics: object  # nodes/metrics.py: render() (/metrics)
    members: object  # () -> the peers' member records (the console)
    channel: object  # record -> the node's lasting control channel to that peer (the console)
    own_view: object  # () -> (this node's stats, its peers with their links) (the console)


class Edge(Feature):
    def __init__(self, node_address, config, curve, parts):
        self.config = config
        self.events = parts.events
        self.revocations = parts.revocations
        self.hooks = parts.hooks
        self.metrics = parts.metrics
        self.auth = config.auth or Authenticator()
        self.counts = {"messages_in": 0, "messages_out": 0, "slow_consumers": 0, "errors": 0,
                      "rejected_connections": 0, "unrenderable": 0, "not_live": 0, "client_resets": 0,
                      "header_timeouts": 0, "refused_connections": 0, "expired": 0, "revoked": 0,
                      "recoveries": 0, "recoveries_incomplete": 0, "requests": 0,
                      "bad_requests": 0}
        self.floodlog = FloodLog(log)
        self.connections = set()
        self.queued_total = 0  # bytes queued for all connections, bounded by buffer_bytes
        self.client = Client(node_address, curve=curve, stream_idle=config.stream_idle)
        self.fanout = Fanout(self.client, self.counts)
        self.view = Console(parts, self.client)  # the console's picture (GET /mesh)
        self.server = EdgeServer((config.host, config.port), EdgeApp(self), self)
        self.server.init_socket()
        self.port = self.server.server_port

    def start(self):
        self.server.start()
        self.view.start()

    def wait_live(self, pattern):
        """Until the node has the subscription for ``pattern``: then a message
        published at this node (by any edge client, POST or library client)
        reaches it. Counted in ``not_live`` if that takes longer than LIVE_SECONDS."""
        if not self.client.wait_for_subscription(pattern.text, LIVE_SECONDS):
            self.counts["not_live"] += 1
            log.warning("subscription to %r not confirmed by the node within %s s", pattern.text, LIVE_SECONDS)

    def grant_for(self, token, request_id=None):
        """The Grant of a token; EdgeError 401 if it is missing, invalid, expired or revoked."""
        try:
            grant = self.auth.grant(token)
        except EdgeError as exc:
            exc.request_id = request_id
            raise
        if grant.subject is not None and self.revocations.revoked(grant.subject):
            raise EdgeError("unauthorized", f"the tokens of {grant.subject!r} are revoked", request_id, 401)
        return grant

    def end_grants_of(self, subject):
        """A revocation: close every connection whose token names ``subject``."""
        for connection in list(self.connections):
            if connection.grant.subject == subject and not (connection.closed or connection.cut):
                self.counts["revoked"] += 1
                connection.end_grant("token_revoked", f"the tokens of {subject!r} are revoked")

    def wait_for_interest(self, subject, timeout, request_id=None):
        """Until a subscriber somewhere in the mesh covers ``subject`` (then what
        this edge publishes on it is delivered there); EdgeError ``no_interest``
        after ``timeout`` seconds."""
        timeout = min(max(timeout, 0.0), INTEREST_SECONDS_MAX)
        if not self.client.wait_for_interest(subject, timeout):
            raise EdgeError("no_interest", f"no subscriber in the mesh covers {subject!r} after {timeout} s",
                            request_id, 504)

    def publish(self, grant, subject, data, request_id=None, headers=None):
        """Publish for an edge client (with message ``headers``, PROTOCOL.md 4.2);
        EdgeError if not allowed or too large."""
        if not grant.may_publish(subject):
            raise EdgeError("forbidden", f"not allowed to publish on {subject!r}", request_id, 403)
        try:
            seq = self.client.publish(subject, data, headers)
        except PayloadTooLarge as exc:
            raise EdgeError("too_large", str(exc), request_id, 413) from None
        except (ValueError, TypeError, OverflowError) as exc:  # OverflowError: integers msgpack cannot hold
            raise EdgeError("bad_data", str(exc), request_id, 400) from None
        self.counts["messages_in"] += 1
        return seq

    def request(self, grant, subject, data, timeout, request_id=None):
        """A request for an edge client: the reply Message, or EdgeError
        no_responders (503), timeout (504), remote_error (502)."""
        if not grant.may_publish(subject):
            raise EdgeError("forbidden", f"not allowed to publish on {subject!r}", request_id, 403)
        self.counts["requests"] += 1
        try:
            return self.client.request(subject, data, timeout)
        except NoResponders as exc:
            raise EdgeError("no_responders", str(exc), request_id, 503) from None
        except RequestTimeout as exc:
            raise EdgeError("timeout", str(exc), request_id, 504) from None
        except RemoteError as exc:
            raise EdgeError("remote_error", str(exc), request_id, 502) from None
        except PayloadTooLarge as exc:
            raise EdgeError("too_large", str(exc), request_id, 413) from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise EdgeError("bad_data", str(exc), request_id, 400) from None

    def position_after(self, subject, seq):
        """The position (JSON-ready) just after what this edge published as ``seq`` on ``subject``."""
        position = self.client.stream_position(subject, seq)
        return json.loads(position.to_json())

    def stats(self):
        return {"edge": self.counters()}

    def counters(self):
        kinds = [c.kind for c in self.connections]
        return {
            "connections": {"ws": kinds.count("ws"), "sse": kinds.count("sse"), "total": len(kinds)},
            "http_connections": len(self.server.pool),  # every open HTTP connection, requests included
            "max_connections": self.config.max_connections,
            "subscriptions": sum(len(c.patterns) for c in self.connections),
            "patterns": len(self.fanout.routes),
            "queued_bytes": self.queued_total,
            "buffer_bytes": self.config.buffer_bytes,
            "gaps": self.fanout.gaps,
            "dropped": self.fanout.dropped,
            "streams": self.fanout.streams,
            **self.counts,
        }

    def stop(self):
        for connection in list(self.connections):
            if connection.kind == "ws":
                connection.cut_off("server is shutting down", CLOSE_GOING_AWAY)
            else:
                connection.release()
        self.view.stop()
        self.server.stop(timeout=2)
        self.client.close()
