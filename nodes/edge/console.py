"""The console's picture of the mesh: every node, every link, channels, recent events.

``GET /mesh`` on an edge (nodes/edge/routes.py) answers with what this module
gathers: each node's counters (``stats``) and its view of its links
(``peers``), asked of all nodes at once with a short timeout, plus the
mesh-wide channel statistics (mesh/presence.py) and this node's recent
events (nodes/events.py). A node that does not answer is ``down``; so is,
for a while (nodes/events.py, LEFT_KEPT), a peer that left the membership,
with ``left``: when it left. A link is ``up`` only when both ends say so.
The picture is gathered at most once per REFRESH_SECONDS whatever the
number of viewers, and every SAMPLE_SECONDS without one, and holds at most
MAX_NODES nodes. Each gathering turns successive counters into each node's
rate (``rate``: data messages per second, published here or from peers),
kept for RATE_SECONDS so that the page's chart is full when it opens
(``GET /mesh?rates=1`` adds ``rates``: node -> [[time, rate], ...]). A node
that is down carries ``since`` (when it was first seen down) and
``last_rate``, its rate before (stale).
"""

import collections

import logging
import time

import gevent
import zmq

from mesh.control import ControlError

log = logging.getLogger("meshnode.console")

ASK_SECONDS = 1.0
REFRESH_SECONDS = 1.0
MAX_NODES = 64
MAX_CHANNELS = 20
MAX_EVENTS = 30
SAMPLE_SECONDS = 2.0
RATE_SECONDS = 300.0


class Console:
    def __init__(self, parts, client):
        self.parts = parts  # the node's name, members, channels, own view and events (nodes/edge/edge.py)
        self.client = client  # the edge's mesh Client: channel statistics
        self._picture = None
        self._taken = 0.0
        self._gathering = None
        self._sampler = None
        self._totals = {}  # node -> (time, messages) of the last gathering that reached it
        self.rates = {}  # node -> deque of (time, rate), RATE_SECONDS of them
        self._down_since = {}  # node -> when a gathering first found it down

    def start(self):
        """Gather every SAMPLE_SECONDS: the rates are there before anyone looks."""
        self._sampler = gevent.spawn(self._sample)

    def stop(self):
        if self._sampler is not None:
            self._sampler.kill(block=False)

    def _sample(self):
        while True:
            self.picture()
            gevent.sleep(SAMPLE_SECONDS)

    def recent_rates(self):
        """node -> [[time, rate], ...] of the last RATE_SECONDS."""
        return {name: [list(point) for point in points] for name, points in self.rates.items()}

    def picture(self):
        """The latest picture, gathered again if older than REFRESH_SECONDS
        (concurrent viewers wait for the same gathering)."""
        if self._picture is None or time.monotonic() - self._taken >= REFRESH_SECONDS:
            if self._gathering is None:
                self._gathering = gevent.spawn(self._gather)
            gathering = self._gathering
            gathering.join()
        return self._picture

    def _gather(self):
        try:
            self._picture = self._take()
            self._taken = time.monotonic()
        except Exception:  # a peer's odd answer must not break the page: keep the last picture
            log.exception("gathering the mesh's picture failed")
        finally:
            self._gathering = None

    def _take(self):
        node = self.parts
        records = sorted(node.members(), key=lambda r: r["name"])
        shown = records[:MAX_NODES - 1]
        asks = {record["name"]: gevent.spawn(_ask, node.channel(record)) for record in shown}
        channels = gevent.spawn(_channels, self.client)
        own = (*node.own_view(), None)
        gevent.joinall([*asks.values(), channels], timeout=ASK_SECONDS + 1.0)
        gevent.killall([g for g in (*asks.values(), channels) if not g.ready()], block=False)  # hold no channel
        answers = {node.name: own}
        for name, greenlet in asks.items():
            answers[name] = greenlet.value if greenlet.successful() and greenlet.value else \
                (None, None, "no answer")
        left = {name: ts for name, ts in node.events.recently_left().items() if name not in answers}
        for name in sorted(left)[:max(0, MAX_NODES - len(answers))]:
            answers[name] = (None, None, "left the mesh")
        nodes, links = [], {}
        now = time.time()
        for name in sorted(answers):
            stats, peers, why = answers[name]
            nodes.append(self._rated(_node_row(name, stats, why, left.get(name)), now))
            for peer in peers or ():
                pair = tuple(sorted((name, peer["name"])))
                links.setdefault(pair, []).append(peer.get("link", "down"))
        for name in (row["name"] for row in nodes if row["state"] == "down"):
            for pair, states in links.items():
                if name in pair and len(states) < 2:
                    states.append("down")  # its end did not answer
        for name in {*self._totals, *self._down_since} - set(answers):  # gone from the picture: forgotten
            for kept in (self.rates, self._totals, self._down_since):
                kept.pop(name, None)
        return {"node": node.name, "time": now, "nodes": nodes,
                "links": [{"a": a, "b": b, "state": "up" if states == ["up", "up"] else "down"}
                          for (a, b), states in sorted(links.items()) if a in answers and b in answers],
                "truncated": len(records) > len(shown),
                "channels": channels.value if channels.successful() else {},
                "events": list(node.events.recent)[-MAX_EVENTS:]}


    def _rated(self, row, now):
        """The row with its rate (or, down, ``since`` and its stale ``last_rate``); keeps the rates."""
        name, points = row["name"], self.rates.get(row["name"])
        if row["state"] != "up":
            row["since"] = self._down_since.setdefault(name, now)
            if points:
                row["last_rate"] = points[-1][1]
            return row
        self._down_since.pop(name, None)
        total = row["messages"]["published_here"] + row["messages"]["from_peers"]
        last = self._totals.get(name)
        self._totals[name] = (now, total)
        if last is not None and now > last[0]:
            if points is None:
                points = self.rates[name] = collections.deque()
            points.append((round(now, 3), round(max(0, total - last[1]) / (now - last[0]), 2)))
            while points and points[0][0] < now - RATE_SECONDS:
                points.popleft()
            row["rate"] = points[-1][1]
        return row


def _ask(channel):
    try:
        return channel.request("stats", timeout=ASK_SECONDS), \
            channel.request("peers", timeout=ASK_SECONDS)["peers"], None
    except (TimeoutError, ControlError) as exc:
        return None, None, str(exc)
    except zmq.ZMQError as exc:  # the peer was dropped meanwhile and its channel closed
        return None, None, f"channel closed: {exc}"


def _channels(client):
    """The mesh's channels (presence), or none when the client is closing or a node fails to answer."""
    try:
        return client.channels(MAX_CHANNELS)["channels"]
    except (TimeoutError, ControlError, zmq.ZMQError, RuntimeError):  # the node stops: its client closed
        return {}


def _node_row(name, stats, why, left=None):
    if stats is None:
        return {"name": name, "state": "down", "why": why, **({"left": left} if left is not None else {})}
    edge = stats.get("edge")
    return {"name": name, "state": "up", "uptime": stats["uptime"], "messages": stats["messages"],
            "links": stats["links"], "connections": edge["connections"]["total"] if edge else None}
