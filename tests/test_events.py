"""The events channel (nodes/events.py): node enter/exit, link up/down, edge
clients and presence, published on $events.* subjects, with real nodes."""

import time

import jwt
from edgehelpers import WS, http_address
from meshtest.nodeproc import wait_until

from mesh import Client


def collect(sub, until, timeout=15):
    """Events from ``sub`` until ``until(events)`` holds; fail after ``timeout`` s."""
    events = []
    deadline = time.monotonic() + timeout
    while not until(events):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"events seen so far: {events}"
        try:
            events.append(sub.get(timeout=min(remaining, 0.5)).data)
        except TimeoutError:
            pass
    return events


def listening(node, subject):
    """Once ``node``'s own client (which publishes its events) is there and
    the subscription to ``subject`` has reached its node."""
    wait_until(lambda: node.stats()["events"]["ready"], what=f"{node.name}'s own client")
    with Client(node.address) as probe:
        assert probe.wait_for_interest(subject)
    time.sleep(0.2)  # the own client's socket reads the same notice


def of(events, kind, **fields):
    return [e for e in events if e["event"] == kind and all(e.get(k) == v for k, v in fields.items())]


def test_a_node_that_comes_and_is_killed_is_reported_once_with_its_links(start_node):
    a = start_node("A")
    b = start_node("B", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"] and b.peer_names() == ["A"], what="A and B linked")
    with Client(b.address) as client:
        events = client.subscribe("$events.>")
        everything = client.subscribe(">")
        listening(a, "$events.node.enter")
        c = start_node("C", peers=[a, b])
        seen = collect(events, lambda got: len(of(got, "link.up", peer="C")) == 2 and of(got, "node.enter"))
        assert of(seen, "node.enter") == [of(seen, "node.enter", node="C", by="A")[0]]  # A reports, once
        assert {e["node"] for e in of(seen, "link.up", peer="C")} == {"A", "B"}
        c.kill()  # SIGKILL: C says nothing; the others notice
        seen += collect(events, lambda got: of(got, "node.exit", node="C") and len(of(got, "link.down")) == 2,
                        timeout=20)
        time.sleep(1)
        while True:  # drain what else came
            try:
                seen.append(events.get(timeout=0.2).data)
            except TimeoutError:
                break
        assert len(of(seen, "node.exit", node="C")) == 1 and of(seen, "node.exit")[0]["by"] == "A"
        assert {e["node"] for e in of(seen, "link.down", peer="C")} == {"A", "B"}
        assert all(e["ts"] > 0 for e in seen)
        # ">" is every application subject, not the mesh's own ones (mesh/subjects.py).
        client.publish("app.x", 1)
        assert everything.get(timeout=5).subject == "app.x"
        assert everything.pending == 0


def test_edge_clients_connect_join_leave_and_disconnect(start_node):
    e = start_node("E", "--http", "0")
    with Client(e.address) as client:
        everything = client.subscribe(">")
        assert client.wait_for_interest("any.thing")
        assert not client.has_interest("$events.client.connect")  # ">" does not want system subjects
        everything.unsubscribe()
        events = client.subscribe("$events.>")
        listening(e, "$events.client.connect")
        ws = WS(f"ws://{http_address(e)}/ws")
        assert ws.request("sub", subject="room.1")["op"] == "ok"
        assert ws.request("unsub", subject="room.1")["op"] == "ok"
        assert ws.request("sub", subject="room.2")["op"] == "ok"
        ws.close()
        seen = collect(events, lambda got: of(got, "client.disconnect"))
    kinds = [(e["event"], e.get("pattern")) for e in seen]
    assert kinds == [("client.connect", None), ("presence.join", "room.1"), ("presence.leave", "room.1"),
                     ("presence.join", "room.2"), ("presence.leave", "room.2"), ("client.disconnect", None)]
    assert len({e["connection"] for e in seen}) == 1 and seen[0]["transport"] == "ws"
    assert seen[0]["address"].startswith("127.0.0.1:") and seen[0]["node"] == "E"


def test_only_admin_tokens_may_subscribe_to_events(start_node):
    secret = "test-secret-of-at-least-thirty-two-bytes"
    e = start_node("E", "--http", "0", "--auth-secret", secret)

    def token(**claims):
        return jwt.encode({"exp": time.time() + 600, "sub": "u", "subscribe": [">"], **claims}, secret,
                          algorithm="HS256")

    user = WS(f"ws://{http_address(e)}/ws?token={token()}")
    refused = user.request("sub", subject="$events.>")
    assert refused["op"] == "error" and refused["code"] == "forbidden"
    assert user.request("sub", subject=">")["op"] == "ok"  # allowed, and it carries no events
    admin = WS(f"ws://{http_address(e)}/ws?token={token(admin=True, sub='ops')}")
    assert admin.request("sub", subject="$events.>")["op"] == "ok"
    listening(e, "$events.client.connect")
    third = WS(f"ws://{http_address(e)}/ws?token={token(sub='carol')}")
    frames = admin.messages(1)
    if frames[0]["subject"] == "$events.presence.join":  # the admin's own subscription, if it was live in time
        assert frames[0]["data"]["user"] == "ops"
        frames = admin.messages(1)
    assert frames[0]["subject"] == "$events.client.connect" and frames[0]["data"]["user"] == "carol"
    with Client(e.address) as client:
        client.publish("app.y", 1)
    frame = user.messages(1)[0]
    assert frame["subject"] == "app.y"  # not the events before it
    for ws in (user, admin, third):
        ws.close()
