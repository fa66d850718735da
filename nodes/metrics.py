"""Prometheus metrics of a node (prometheus-client): what ``stats`` says, typed.

One collector reads the node's counters when Prometheus scrapes (nothing is
counted twice or on the message path). Counters are counters (``_total``),
levels are gauges, and no label carries a subject, a pattern, a key or a
connection (cardinality stays fixed). Served at ``/metrics`` on an edge's
HTTP port, and with ``--metrics HOST:PORT`` on a port of its own.
docs/OPERATIONS.md lists every metric (tests/test_metrics.py checks the list
against these tables); every number ``stats`` reports is a metric here or
named in NOT_METRICS with the reason.
"""

from gevent.pywsgi import WSGIServer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

PREFIX = "meshnode_"

# (stats path, metric name, kind, help) for the node's own counters.
NODE = [
    (("messages", "published_here"), "batches_published", "counter",
     "ZeroMQ data messages (batches of one or more messages, marks) published at this node"),
    (("messages", "from_peers"), "batches_from_peers", "counter", "ZeroMQ data messages received from peers"),
    (("messages", "sent_out"), "batches_sent_out", "counter",
     "ZeroMQ data messages published at this node and passed on to its subscribers, local and peers"),
    (("messages", "delivered_from_peers"), "batches_delivered_from_peers", "counter",
     "ZeroMQ data messages from peers delivered to this node's local subscribers"),
    (("bytes", "published_here"), "bytes_published", "counter", "bytes published at this node"),
    (("bytes", "from_peers"), "bytes_from_peers", "counter", "bytes received from peers"),
    (("peers",), "peers", "gauge", "peers in this node's membership (their links may be down)"),
    (("links", "failures"), "link_failures", "counter", "peer links seen going down"),
    (("links", "proxy_restarts"), "proxy_restarts", "counter", "mesh proxy restarts for membership changes (one per burst)"),
    (("control", "requests"), "control_requests", "counter", "control requests answered"),
    (("control", "malformed"), "control_malformed", "counter", "control requests that were not requests"),
    (("control", "rejected"), "control_rejected", "counter", "control requests refused (bad fields, version)"),
    (("control", "unknown_commands"), "control_unknown_commands", "counter", "control requests naming no command"),
    (("revocations",), "revocations", "gauge", "token revocations in force"),
    (("events", "published"), "events_published", "counter", "events published on $events.* (nodes/events.py)"),
    (("uptime",), "uptime_seconds", "gauge", "seconds since the node started"),
]
EDGE = [
    ("messages_in", "counter", "messages published through the edge"),
    ("messages_out", "counter", "frames queued to edge clients"),
    ("slow_consumers", "counter", "edge clients cut off as slow consumers"),
    ("errors", "counter", "error frames and error responses"),
    ("rejected_connections", "counter", "connections refused for auth, origin or capacity"),
    ("refused_connections", "counter", "connections refused at once: every slot taken"),
    ("header_timeouts", "counter", "connections closed for slow headers"),
    ("bad_requests", "counter", "HTTP requests that could not be parsed"),
    ("client_resets", "counter", "clients that went away without closing"),
    ("expired", "counter", "connections ended at their token's exp"),
    ("revoked", "counter", "connections ended by a revocation"),
    ("recoveries", "counter", "recoveries served to edge clients"),
    ("recoveries_incomplete", "counter", "recoveries that could not replay every stream"),
    ("requests", "counter", "requests made through the edge"),
    ("gaps", "counter", "sequence gaps seen by the edge's subscriptions"),
    ("dropped", "counter", "messages the edge's subscriptions had no room for"),
    ("queued_bytes", "gauge", "bytes queued for edge clients"),
    ("http_connections", "gauge", "open HTTP connections"),
    ("max_connections", "gauge", "the WebSocket and SSE cap in force"),
    ("subscriptions", "gauge", "subscriptions of edge clients"),
    ("patterns", "gauge", "distinct patterns the edge subscribes to for its clients"),
    ("streams", "gauge", "publisher streams the edge's subscriptions follow"),
    ("buffer_bytes", "gauge", "the cap on bytes queued for all edge clients (--buffer-bytes)"),
    ("not_live", "counter", "subscriptions not confirmed by the node within 2 s"),
    ("unrenderable", "counter", "messages no edge client could be sent (not JSON-renderable)"),
]
HISTORY = [("recorded", "counter", "messages recorded in history"), ("evicted", "counter", "messages evicted"),
           ("bytes", "gauge", "bytes of history held"), ("subjects", "gauge", "subjects with history"),
           ("malformed", "counter", "messages the history could not decode, not recorded"),
           ("copies", "gauge", "messages of history held that were published at another node (a replica's copies)")]
QUEUES = [("dispatched", "counter", "queue-group messages dispatched from this node"),
          ("no_member", "counter", "queue-group messages that found no member"),
          ("members", "gauge", "queue-group members known"), ("groups", "gauge", "queue groups known"),
          ("reachable", "gauge", "queue-group members whose inbox subscription has reached this node"),
          ("malformed", "counter", "queue-group messages that could not be decoded"),
          ("failed", "counter", "queue-group messages whose dispatch failed (logged)")]
JOBS = [("held", "gauge", "jobs held here until acknowledged"), ("acked", "counter", "jobs acknowledged"),
        ("redelivered", "counter", "jobs given to another member"), ("dead", "counter", "jobs dead-lettered"),
        ("refused_acks", "counter", "acknowledgements refused"),
        ("restored", "counter", "jobs read back from --data-dir when the node started"),
        ("adopted", "counter", "jobs taken over from a node that left the mesh (--job-replicas)"),
        ("resumed", "counter", "restored or adopted jobs kept for the worker that had them, until its deadline")]
HOOKS = [("delivered", "counter", "webhook deliveries made from this node"),
         ("retried", "counter", "webhook attempts retried"), ("failed", "counter", "webhook deliveries failed"),
         ("refused", "counter", "webhook deliveries refused by the target policy"),
         ("looped", "counter", "webhook deliveries dropped: the message came from that hook's own delivery")]


# stats numbers that are not metrics, each with why (a path names everything under it).
NOT_METRICS = {
    ("v",): "the control protocol's version", ("id",): "the request's id",
    ("links", "up"): "meshnode_links{state}", ("links", "down"): "meshnode_links{state}",
    ("links", "heartbeats"): "how often mesh_in pings its peers (mesh/liveness.py): a diagnosis of `meshnode stats`",
    ("edge", "connections"): "meshnode_edge_connections{kind}; total is their sum",
    ("proxies",): "frames and bytes through each libzmq proxy socket: a diagnosis of `meshnode stats`",
    ("marks",): "tail marks (docs/PROTOCOL.md): a diagnosis of `meshnode stats`",
    ("events", "recent"): "the events held for the console",
    ("history", "budget"): "the --history-bytes setting",
    ("history", "disk"): "the history file's writer (--data-dir): a diagnosis of `meshnode stats`",
    ("history", "caught_up"): "a replica's catch-up on its holders' older history: a diagnosis of `meshnode stats`",
    ("queues", "jobs", "disk"): "the jobs file's writer (--data-dir): a diagnosis of `meshnode stats`",
    ("job_replicas",): "the copies of held jobs (--job-replicas): a diagnosis of `meshnode stats`",
    ("hooks",): "each hook's own counters carry its key and URL (no label does): `meshnode hooks ls`",
}


def metric_paths():
    """{stats path: metric name} of every number that is a metric (labelled ones by their family)."""
    paths = {path: name for path, name, _, _ in NODE}
    paths.update({("edge", key): f"edge_{key}" for key, _, _ in EDGE})
    paths.update({(section, key): f"{section}_{key}" for section, table in (("history", HISTORY), ("queues", QUEUES))
                  for key, _, _ in table})
    paths.update({("queues", "jobs", key): f"jobs_{key}" for key, _, _ in JOBS})
    paths.update({("hook_totals", key): f"hooks_{key}" for key, _, _ in HOOKS})
    return paths


def metric_names():
    """Every metric's full name (counters with _total), as Prometheus shows it and docs/OPERATIONS.md lists it."""
    tables = [(name, kind) for _, name, kind, _ in NODE]
    tables += [(f"{section}_{key}", kind) for section, table in (("edge", EDGE), ("history", HISTORY),
                                                                 ("queues", QUEUES), ("jobs", JOBS), ("hooks", HOOKS))
               for key, kind, _ in table]
    return {PREFIX + name + ("_total" if kind == "counter" else "") for name, kind in tables} | \
        {PREFIX + "links", PREFIX + "edge_connections", PREFIX + "hooks"}


def _family(name, kind, help_text, value, labels=None):
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    family = cls(PREFIX + name, help_text, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


class NodeCollector:
    def __init__(self, stats):
        self._stats = stats  # a callable: the node's stats map

    def collect(self):
        stats = self._stats()
        for path, name, kind, help_text in NODE:
            value = stats
            for part in path:
                value = value[part]
            yield _family(name, kind, help_text, value)
        links = GaugeMetricFamily(PREFIX + "links", "peer links by state", labels=["state"])
        for state in ("up", "down"):
            links.add_metric([state], stats["links"][state])
        yield links
        edge = stats.get("edge")
        if edge is not None:
            for key, kind, help_text in EDGE:
                yield _family(f"edge_{key}", kind, help_text, edge[key])
            connections = GaugeMetricFamily(PREFIX + "edge_connections", "edge connections by kind", labels=["kind"])
            for kind in ("ws", "sse"):
                connections.add_metric([kind], edge["connections"][kind])
            yield connections
        for section, table in (("history", HISTORY), ("queues", QUEUES)):
            values = stats.get(section)
            if values is not None:
                for key, kind, help_text in table:
                    yield _family(f"{section}_{key}", kind, help_text, values[key])
        jobs = (stats.get("queues") or {}).get("jobs")
        if jobs is not None:
            for key, kind, help_text in JOBS:
                yield _family(f"jobs_{key}", kind, help_text, jobs[key])
        totals = stats.get("hook_totals")  # of every hook this node delivered, removed ones too
        if totals is not None:
            yield _family("hooks", "gauge", "webhooks registered", len(stats.get("hooks", ())))
            for key, kind, help_text in HOOKS:
                yield _family(f"hooks_{key}", kind, help_text, totals[key])


class Metrics:
    def __init__(self, stats):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(stats))
        self._server = None

    def render(self):
        """``(content type, body)`` of a scrape."""
        return CONTENT_TYPE_LATEST, generate_latest(self.registry)

    def serve(self, host, port):
        """Serve /metrics on a port of its own; returns the port."""
        self._server = WSGIServer((host, port), make_wsgi_app(self.registry), log=None)
        self._server.start()
        return self._server.server_port

    def stop(self):
        if self._server is not None:
            self._server.stop(timeout=1)
