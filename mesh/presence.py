"""Presence and channel statistics across the mesh: every node's part, added up.

Each node knows only its own edge connections (nodes/edge/roster.py); these
functions ask every node (mesh/everynode.py) and merge the answers. A node
that does not answer within ``timeout`` is listed in ``unreachable`` and
its connections are absent: presence is read live, never remembered, so a
node that died leaves no ghosts.
"""

from .everynode import ask_every_node

DEFAULT_TIMEOUT = 1.0


def presence(client, channel, limit=1000, timeout=DEFAULT_TIMEOUT):
    """Who is in ``channel`` (a subject or a pattern) on every node.

    ``{"channel", "count", "user_count", "users", "anonymous", "connections"
    (each with its "node"), "truncated", "nodes", "unreachable"}``: ``count``
    is the mesh-wide total of connections; ``user_count`` the distinct users
    (a user connected to two nodes counts once) among those the nodes listed,
    exact unless ``truncated``; the lists hold at most ``limit`` entries.
    """
    _check_limit(limit)
    replies, missing = ask_every_node(client, "presence", timeout, channel=channel, limit=limit)
    users, connections, count, truncated, anonymous = set(), [], 0, False, False
    for name, reply in sorted(replies.items()):
        count += reply["count"]
        users.update(reply["users"])
        anonymous = anonymous or reply["anonymous"]
        truncated = truncated or reply["truncated"]
        connections.extend({**row, "node": name} for row in reply["connections"])
    named = sorted(users)
    return {"channel": channel, "count": count, "user_count": len(named), "users": named[:limit],
            "anonymous": anonymous, "connections": connections[:limit],
            "truncated": truncated or len(connections) > limit or len(named) > limit,
            "nodes": sorted(replies), "unreachable": missing}


def channels(client, limit=1000, timeout=DEFAULT_TIMEOUT):
    """Per pattern edge clients subscribe to, across the mesh: ``subscribers``
    and ``delivered`` summed over nodes; ``messages`` (what reached an edge
    on the pattern; every edge with subscribers sees each message once) and
    ``last_message`` the largest; ``nodes`` where it has subscribers."""
    _check_limit(limit)
    replies, missing = ask_every_node(client, "channels", timeout, limit=limit)
    merged, truncated = {}, False
    for name, reply in sorted(replies.items()):
        truncated = truncated or reply["truncated"]
        for text, stats in reply["channels"].items():
            total = merged.setdefault(text, {"subscribers": 0, "messages": 0, "delivered": 0,
                                             "last_message": None, "nodes": []})
            total["subscribers"] += stats["subscribers"]
            total["delivered"] += stats["delivered"]
            total["messages"] = max(total["messages"], stats["messages"])
            if stats["last_message"] is not None:
                total["last_message"] = max(total["last_message"] or 0, stats["last_message"])
            total["nodes"].append(name)
    ordered = sorted(merged.items(), key=lambda item: (-item[1]["subscribers"], item[0]))
    return {"channels": dict(ordered[:limit]), "truncated": truncated or len(ordered) > limit,
            "nodes": sorted(replies), "unreachable": missing}


def _check_limit(limit):
    if type(limit) is not int or not 1 <= limit <= 10_000:
        raise ValueError("limit must be an integer from 1 to 10000")
