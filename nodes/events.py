"""Events: what happens to the mesh, published on system subjects anyone may subscribe to.

=============================  ==================================================
subject                        data (every event also has ``ts``, Unix seconds)
=============================  ==================================================
``$events.node.enter``         ``node`` (who came), ``by`` (the node reporting it)
``$events.node.exit``          ``node`` (who went), ``by``
``$events.link.up``            ``node`` (the reporting end), ``peer``
``$events.link.down``          ``node``, ``peer``
``$events.client.connect``     ``node``, ``connection``, ``transport``, ``user``, ``address``
``$events.client.disconnect``  the same
``$events.client.slow``        the same and ``reason``: cut off as a slow consumer
``$events.presence.join``      ``node``, ``connection``, ``user``, ``pattern``
``$events.presence.leave``     the same
=============================  ==================================================

``$`` subjects are matched only by name (``$events.>``, not ``>``:
mesh/subjects.py), and an edge with auth on lets only admin tokens, or
tokens that name them, subscribe.

A peer's enter and exit are reported by one node only: the lowest-named of
the members that started before it (enter) or that remain (exit), as this
node sees the mesh; while two nodes' views differ an event may come twice. A link has two ends and each reports
its own. Events go out through the node's own client and only when a
subscription prefix in the mesh names them (``$events.``; the empty prefix
of ``>`` does not count for system subjects: mesh/publisher.py), so nobody
listening costs one interest check.
The last RECENT events are kept for the console (nodes/edge/console.py), and
so is, for LEFT_KEPT seconds, when each peer that is gone left (the
latest LEFT_MAX).
"""

import collections
import logging
import time

from .control import Feature

log = logging.getLogger("meshnode.events")

TOPIC = "$events"
RECENT = 100
LEFT_KEPT = 300.0  # seconds a departed peer is remembered (the console shows it as down)
LEFT_MAX = 1000  # departed peers remembered at most, the latest


class Events(Feature):
    def __init__(self, node_name):
        self.node = node_name
        self.client = None  # the node's own mesh Client, once connected
        self.recent = collections.deque(maxlen=RECENT)
        self.published = 0
        self.left = {}  # name -> Unix time it left the membership, for LEFT_KEPT seconds

    def emit(self, kind, **fields):
        """Record an event of ``kind`` (``node.exit``, ``client.connect``...) and
        publish it on ``$events.<kind>`` if anyone listens (a history recorder too)."""
        event = {"event": kind, "ts": time.time(), **fields}
        self.recent.append(event)
        client = self.client
        subject = f"{TOPIC}.{kind}"
        if client is None or client.closed or not client.has_interest(subject, history=True):
            return
        try:
            client.publish(subject, event)
            self.published += 1
        except Exception as exc:  # an event must never break what caused it
            log.warning("could not publish %s: %s", subject, exc)

    def recently_left(self):
        """name -> Unix time it left, for the peers gone in the last LEFT_KEPT seconds."""
        since = time.time() - LEFT_KEPT
        return {name: ts for name, ts in self.left.items() if ts >= since}

    def stats(self):
        return {"events": self.counters()}

    def counters(self):
        return {"ready": self.client is not None, "published": self.published, "recent": len(self.recent)}

    def members_changed(self, before, after, started):
        """The peers changed from ``before`` to ``after`` (name -> member
        record; this node started at ``started``): report the changes this
        node is the one to report."""
        for name in sorted(set(after) - set(before)):
            joined = after[name].get("started", 0)
            older = {self.node} if started < joined else set()
            older.update(n for n, record in after.items() if n != name and record.get("started", 0) < joined)
            if older and min(older) == self.node:  # one of those who were there reports a newcomer
                self.emit("node.enter", node=name, by=self.node)
        now = time.time()
        for name in set(after) | {n for n, ts in self.left.items() if ts < now - LEFT_KEPT}:
            self.left.pop(name, None)
        for name in sorted(set(before) - set(after)):
            self.left[name] = now
            if len(self.left) > LEFT_MAX:
                del self.left[next(iter(self.left))]
            if min({self.node, *after}) == self.node:
                self.emit("node.exit", node=name, by=self.node)

    def link_changed(self, peer, state):
        self.emit(f"link.{state}", node=self.node, peer=peer)

    def connection_event(self, kind, connection, **extra):
        """``client.connect``, ``client.disconnect`` or ``client.slow`` of an edge connection."""
        self.emit(f"client.{kind}", node=self.node, connection=connection.id, transport=connection.kind,
                  user=connection.grant.subject, address=connection.address,
                  **({"console": True} if connection.console else {}), **extra)

    def presence_event(self, kind, connection, pattern_text):
        """``presence.join`` or ``presence.leave``: an edge connection (un)subscribed."""
        self.emit(f"presence.{kind}", node=self.node, connection=connection.id, user=connection.grant.subject,
                  pattern=pattern_text, **({"console": True} if connection.console else {}))
