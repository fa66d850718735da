"""Cross-origin access for browser pages served from another origin (docs/EDGE.md, CORS).

It owns which origins a browser lets read the edge's answers: every origin
when ``--allowed-origin`` is not given, else only the listed ones. A permitted
origin is echoed in ``Access-Control-Allow-Origin`` with
``Access-Control-Allow-Credentials: true`` (so ``EventSource`` and ``fetch``
with ``credentials: "include"`` work; the edge never reads cookies: a token
is the only authority) on every answer, errors included, with
``Vary: Origin``. A preflight (``OPTIONS``) is answered with the methods of
the route its path names and the request headers the edge reads.
"""

# The request headers the edge reads: a token, JSON bodies, SSE resumption, webhook chains.
ALLOWED_HEADERS = "Authorization, Content-Type, Last-Event-ID, meshnode-hooks"
PREFLIGHT_MAX_AGE = 600  # seconds a browser may keep a preflight's answer


class CrossOrigin:
    def __init__(self, allowed_origins):
        self.allowed = frozenset(allowed_origins)

    def permits(self, origin):
        """Whether a page of ``origin`` may use this edge (always without an allow-list)."""
        return not self.allowed or origin in self.allowed

    def listed(self, origin):
        """Whether ``origin`` is named by ``--allowed-origin``."""
        return origin in self.allowed

    def headers(self, origin):
        """The CORS headers of an answer to a request from ``origin`` (None: not a browser's cross-origin one)."""
        if origin is None:
            return [("Vary", "Origin")] if self.allowed else []
        if not self.permits(origin):
            return [("Vary", "Origin")]
        return [("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Credentials", "true"),
                ("Vary", "Origin")]

    @staticmethod
    def preflight_headers(methods):
        """What a preflight's answer adds for a route taking ``methods``."""
        return [("Access-Control-Allow-Methods", ", ".join(sorted(methods))),
                ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
                ("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE))]
