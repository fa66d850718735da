"""Presence and channel statistics of this node's edge: who is subscribed to what.

A *channel* is what edge clients subscribe to. ``presence(channel)`` lists
this node's edge connections (WebSocket and SSE) that are in it, each with
its token's ``sub`` (``user``), transport, address and the patterns that put
it there. For a concrete subject that is every connection that would
receive a message on it (a pattern that matches it); for a pattern with
wildcards, every connection subscribed within it (a pattern it covers).
``channels()`` gives, per subscribed pattern, the connections on it, the
messages that reached this edge on it (``messages``), the copies delivered
(``delivered``) and the time of the last one (nginx-push-stream's channel
statistics).

Both answer control requests (``presence``, ``channels``: docs/PROTOCOL.md)
with at most ``limit`` rows and the true totals; mesh/presence.py asks every
node and adds them up, so what a dead node held vanishes with it. Library
clients subscribe inside ZeroMQ, where the node does not see them one by
one: they are not listed.
"""

from mesh.subjects import Pattern

from nodes.control import Feature, RequestError, bounded_int

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000


def limit_from(value):
    return bounded_int(value, "limit", 1, MAX_LIMIT, DEFAULT_LIMIT)


def presence(edge, channel_text, limit=DEFAULT_LIMIT):
    """This node's connections in ``channel_text`` (ValueError for a bad one)."""
    channel = Pattern(channel_text)
    literal = "*" not in channel_text.split(".") and ">" not in channel_text.split(".")
    rows, users, count = [], set(), 0
    for connection in list(edge.connections) if edge is not None else ():
        if literal:
            patterns = [text for text, pattern in connection.patterns.items() if pattern.matches(channel_text)]
        else:
            patterns = [text for text, pattern in connection.patterns.items() if channel.covers(pattern)]
        if not patterns:
            continue
        count += 1
        users.add(connection.grant.subject)
        if len(rows) < limit:
            rows.append({"connection": connection.id, "user": connection.grant.subject,
                         "transport": connection.kind, "address": connection.address, "patterns": sorted(patterns)})
    named = sorted(u for u in users if u is not None)
    return {"channel": channel_text, "count": count, "user_count": len(named), "users": named[:limit],
            "anonymous": None in users, "connections": rows, "truncated": count > len(rows) or len(named) > limit}


def channels(edge, limit=DEFAULT_LIMIT):
    """Per pattern this edge's clients subscribe to: subscribers and message counters."""
    routes = sorted((edge.fanout.routes.items() if edge is not None else ()),
                    key=lambda item: (-len(item[1].connections), item[0]))
    return {"count": len(routes), "truncated": len(routes) > limit,
            "channels": {text: {"subscribers": len(route.connections), "messages": route.received,
                                "delivered": route.delivered, "last_message": route.last_message,
                                "since": route.since}
                         for text, route in routes[:limit]}}


class Roster(Feature):
    """The ``presence`` and ``channels`` commands; a node without an edge answers them empty."""

    def __init__(self, node_name):
        self.node_name = node_name
        self.edge = None  # set when the node's edge is made

    def commands(self):
        return {"presence": self.cmd_presence, "channels": self.cmd_channels}

    def cmd_presence(self, request):
        """This node's edge connections in a channel."""
        channel = request.get("channel")
        try:
            if not isinstance(channel, str):
                raise ValueError("presence needs a channel: a subject or a pattern")
            return {"node": self.node_name, **presence(self.edge, channel, limit_from(request.get("limit")))}
        except ValueError as exc:
            raise RequestError("bad_request", str(exc)) from None

    def cmd_channels(self, request):
        """Per pattern this node's edge clients subscribe to: subscribers, messages, delivered."""
        try:
            return {"node": self.node_name, **channels(self.edge, limit_from(request.get("limit")))}
        except ValueError as exc:
            raise RequestError("bad_request", str(exc)) from None
