"""The console's picture of the mesh: every node, every link, channels, recent events.

``GET /mesh`` on an edge (nodes/edge/routes.py) answers with what this module
gathers: each node's counters (``stats``) and its view of its links
(``peers``), asked of all nodes at once with a short timeout, plus the
mesh-wide channel statistics (mesh/presence.py) and this node's recent
events (nodes/events.py). A node that does not answer is ``down``; so is,
for a while (nodes/events.py, LEFT_KEPT), a peer that left the membership,
with ``left``: when it left. A link is ``up`` only when both ends say so.
The picture is gathered at most once per REFRESH_SECONDS whatever the
number of viewers, and holds at most MAX_NODES nodes. The page
(nodes/edge/static/index.html) turns successive counters into message rates.
"""

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


class Console:
    def __init__(self, parts, client):
        self.parts = parts  # the node's name, members, channels, own view and events (nodes/edge/edge.py)
        self.client = client  # the edge's mesh Client: channel statistics
        self._picture = None
        self._taken = 0.0
        self._gathering = None

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
        channels = gevent.spawn(self.client.channels, MAX_CHANNELS)
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
        for name in sorted(answers):
            stats, peers, why = answers[name]
            nodes.append(_node_row(name, stats, why, left.get(name)))
            for peer in peers or ():
                pair = tuple(sorted((name, peer["name"])))
                links.setdefault(pair, []).append(peer.get("link", "down"))
        for name in (row["name"] for row in nodes if row["state"] == "down"):
            for pair, states in links.items():
                if name in pair and len(states) < 2:
                    states.append("down")  # its end did not answer
        return {"node": node.name, "time": time.time(), "nodes": nodes,
                "links": [{"a": a, "b": b, "state": "up" if states == ["up", "up"] else "down"}
                          for (a, b), states in sorted(links.items()) if a in answers and b in answers],
                "truncated": len(records) > len(shown),
                "channels": channels.value["channels"] if channels.successful() else {},
                "events": list(node.events.recent)[-MAX_EVENTS:]}


def _ask(channel):
    try:
        return channel.request("stats", timeout=ASK_SECONDS), \
            channel.request("peers", timeout=ASK_SECONDS)["peers"], None
    except (TimeoutError, ControlError) as exc:
        return None, None, str(exc)
    except zmq.ZMQError as exc:  # the peer was dropped meanwhile and its channel closed
        return None, None, f"channel closed: {exc}"


def _node_row(name, stats, why, left=None):
    if stats is None:
        return {"name": name, "state": "down", "why": why, **({"left": left} if left is not None else {})}
    edge = stats.get("edge")
    return {"name": name, "state": "up", "uptime": stats["uptime"], "messages": stats["messages"],
            "links": stats["links"], "connections": edge["connections"]["total"] if edge else None}
