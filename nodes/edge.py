"""An edge: the node's HTTP port for browsers and other non-ZeroMQ clients.

It owns the HTTP server (gevent WSGI with ws4py's upgrade handler), a mesh
Client connected to its own node (edges subscribe and publish like any local
client), the fan-out, the set of live connections and the edge counters.
Routing is in :mod:`nodes.http`, WebSocket handling in :mod:`nodes.websocket`.
"""

import logging
from dataclasses import dataclass, field

from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from mesh import Client, PayloadTooLarge
from mesh.publisher import DEFAULT_STREAM_IDLE

from .auth import Authenticator
from .edgeproto import EdgeError
from .fanout import Fanout
from .ratelog import RateLog
from .http import EdgeApp
from .websocket import CLOSE_GOING_AWAY, EdgeHandler

log = logging.getLogger("meshnode.edge")

LIVE_SECONDS = 2.0  # longest a sub's reply waits for the node to have the subscription
# Descriptors the node keeps for itself: its ZeroMQ sockets and their mailboxes,
# a TCP connection per peer link and per local client socket, ZooKeeper, logs.
RESERVED_FILES_MIN = 256
RESERVED_FILES_MAX = 4096
# HTTP connections beyond the WebSocket/SSE cap, for requests and for the 503s
# that refuse a long-lived connection when the cap is reached.
REQUEST_HEADROOM = 64


def connection_budget(wanted, open_files):
    """The edge's cap on WebSocket and SSE connections: ``wanted``, or, if less,
    what the open-file limit leaves after the node's reserve (an eighth of the
    limit, 256 to 4,096) and the headroom for plain requests."""
    reserve = min(RESERVED_FILES_MAX, max(RESERVED_FILES_MIN, open_files // 8))
    budget = max(1, open_files - reserve - REQUEST_HEADROOM)
    if wanted > budget:
        log.warning("--max-connections %d lowered to %d: the open-file limit is %d and the node keeps %d "
                    "(raise the limit, e.g. LimitNOFILE= in systemd)", wanted, budget, open_files, reserve)
        return budget
    return wanted


@dataclass
class EdgeConfig:
    host: str = "127.0.0.1"
    port: int = 0
    max_payload: int = 1024 * 1024
    max_subscriptions: int = 128
    queue_bytes: int = 1024 * 1024
    max_connections: int = 10_000
    auth_secret: str = None
    allowed_origins: list = field(default_factory=list)
    keepalive_seconds: float = 15.0
    request_timeout: float = 30.0
    stream_idle: float = DEFAULT_STREAM_IDLE
    header_timeout: float = 10.0


class Edge:
    def __init__(self, node_address, config, curve=None):
        self.config = config
        self.auth = Authenticator(config.auth_secret)
        self.stats = {"messages_in": 0, "messages_out": 0, "slow_consumers": 0, "errors": 0,
                      "rejected_connections": 0, "unrenderable": 0, "not_live": 0, "client_resets": 0,
                      "header_timeouts": 0}
        self.ratelog = RateLog(log)
        self.connections = set()
        self.client = Client(node_address, curve=curve, stream_idle=config.stream_idle)
        self.fanout = Fanout(self.client, self.stats)
        # Every HTTP connection, finished request or not, holds a slot: when all are
        # taken the server stops accepting (new ones wait in the listen queue,
        # half-open ones are closed after --header-timeout) instead of running
        # the process out of descriptors.
        self.server = WSGIServer((config.host, config.port), EdgeApp(self), log=None, handler_class=EdgeHandler,
                                 spawn=Pool(config.max_connections + REQUEST_HEADROOM))
        self.server.init_socket()
        self.port = self.server.server_port

    def start(self):
        self.server.start()

    def wait_live(self, pattern):
        """Until the node has the subscription for ``pattern``: then a message
        published at this node (by any edge client, POST or library client)
        reaches it. Counted in ``not_live`` if that takes longer than LIVE_SECONDS."""
        if not self.client.wait_for_subscription(pattern.text, LIVE_SECONDS):
            self.stats["not_live"] += 1
            log.warning("subscription to %r not confirmed by the node within %s s", pattern.text, LIVE_SECONDS)

    def publish(self, grant, subject, data, request_id=None):
        """Publish for an edge client; EdgeError if not allowed or too large."""
        if not grant.may_publish(subject):
            raise EdgeError("forbidden", f"not allowed to publish on {subject!r}", request_id, 403)
        try:
            seq = self.client.publish(subject, data)
        except PayloadTooLarge as exc:
            raise EdgeError("too_large", str(exc), request_id, 413) from None
        except (ValueError, TypeError) as exc:
            raise EdgeError("bad_data", str(exc), request_id, 400) from None
        self.stats["messages_in"] += 1
        return seq

    def counters(self):
        kinds = [c.kind for c in self.connections]
        return {
            "connections": {"ws": kinds.count("ws"), "sse": kinds.count("sse"), "total": len(kinds)},
            "http_connections": len(self.server.pool),  # every open HTTP connection, requests included
            "max_connections": self.config.max_connections,
            "subscriptions": sum(len(c.patterns) for c in self.connections),
            "patterns": len(self.fanout.routes),
            "queued_bytes": sum(c.queued_bytes for c in self.connections),
            "gaps": self.fanout.gaps,
            "dropped": self.fanout.dropped,
            "streams": self.fanout.streams,
            **self.stats,
        }

    def stop(self):
        for connection in list(self.connections):
            if connection.kind == "ws":
                connection.cut_off("server is shutting down", CLOSE_GOING_AWAY)
            else:
                connection.release()
        self.server.stop(timeout=2)
        self.client.close()
