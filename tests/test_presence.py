"""Presence and channel statistics across the mesh (nodes/edge/roster.py, mesh/presence.py):
real edges, real WebSocket clients with tokens, a kill -9 that must leave no ghosts."""

import json
import subprocess
import sys
import time

import jwt
import pytest
from edgehelpers import WS, http, http_address
from meshtest.nodeproc import MESHNODE, linked, wait_until

from mesh import Client

SECRET = "test-secret-of-at-least-thirty-two-bytes"


def token(sub, **claims):
    return jwt.encode({"exp": time.time() + 600, "sub": sub, "subscribe": [">"], "publish": [">"], **claims},
                      SECRET, algorithm="HS256")


def test_presence_and_channels_across_edges_and_no_ghosts_after_kill(start_node):
    a = start_node("A")
    e1 = start_node("E1", "--http", "0", "--auth-secret", SECRET, peers=[a])
    e2 = start_node("E2", "--http", "0", "--auth-secret", SECRET, peers=[a, e1])
    wait_until(lambda: linked(a, e1, e2), what="the mesh")
    alice = WS(f"ws://{http_address(e1)}/ws?token={token('alice')}")
    bob = WS(f"ws://{http_address(e2)}/ws?token={token('bob')}")
    carol = WS(f"ws://{http_address(e2)}/ws?token={token('carol')}")
    try:
        assert alice.request("sub", subject="room.1")["op"] == "ok"
        assert bob.request("sub", subject="room.>")["op"] == "ok"
        assert carol.request("sub", subject="other")["op"] == "ok"
        with Client(a.address) as client:
            here = client.presence("room.1")  # a subject: whoever would receive a message on it
            assert here["count"] == 2 and here["users"] == ["alice", "bob"] and here["unreachable"] == {}
            assert sorted((c["user"], c["node"], c["patterns"][0]) for c in here["connections"]) == \
                [("alice", "E1", "room.1"), ("bob", "E2", "room.>")]
            assert all(c["transport"] == "ws" and c["address"].startswith("127.0.0.1:") for c in here["connections"])
            assert client.presence("room.>")["users"] == ["alice", "bob"]  # a pattern: subscribed within it
            assert client.presence("room.2")["users"] == ["bob"]
            assert client.presence(">")["users"] == ["alice", "bob", "carol"]
            assert client.presence("nobody")["count"] == 0
            for bad in (lambda: client.presence("a..b"), lambda: client.presence("x", limit=0),
                        lambda: client.channels(limit=10_001)):
                with pytest.raises(ValueError):  # told at once, not as every node "unreachable"
                    bad()

            assert client.wait_for_subscription("room.>")  # bob's, from E2 (alice's prefix is room.1.)
            for i in range(3):
                client.publish("room.1", i)
            assert [f["data"] for f in alice.messages(3)] == [0, 1, 2]
            bob.messages(3)
            stats = client.channels()["channels"]
            assert stats["room.1"]["subscribers"] == 1 and stats["room.1"]["nodes"] == ["E1"]
            assert stats["room.1"]["messages"] == 3 and stats["room.1"]["delivered"] == 3
            assert stats["room.>"]["messages"] == 3 and stats["other"]["messages"] == 0
            assert stats["room.1"]["last_message"] > time.time() - 60
            assert list(stats) == ["other", "room.1", "room.>"]  # most subscribers first, then by name

            e2.kill()  # SIGKILL: nothing said goodbye
            after = client.presence("room.1")
            assert after["users"] == ["alice"] and after["count"] == 1  # no ghosts, even before E2 is dropped
            assert set(after["unreachable"]) <= {"E2"}
            wait_until(lambda: a.peer_names() == ["E1"], what="A to drop E2")
            assert client.presence("room.1")["unreachable"] == {}
    finally:
        for ws in (alice, bob, carol):
            try:
                ws.close()
            except OSError:
                pass


def test_presence_over_http_and_the_cli(start_node):
    e = start_node("E", "--http", "0", "--auth-secret", SECRET)
    dave = WS(f"ws://{http_address(e)}/ws?token={token('dave')}")
    try:
        assert dave.request("sub", subject="chat.lobby")["op"] == "ok"
        base = f"http://{http_address(e)}"
        status, body = http("GET", f"{base}/presence/chat.lobby?token={token('eve')}")
        assert status == 200 and body["users"] == ["dave"] and body["connections"][0]["node"] == "E"
        narrow = token("mallory", subscribe=["news.>"])
        assert http("GET", f"{base}/presence/chat.lobby?token={narrow}")[0] == 403
        assert http("GET", f"{base}/presence/chat..x?token={token('eve')}")[0] == 400
        assert http("GET", f"{base}/channels?token={token('eve')}")[0] == 403  # admin only
        status, body = http("GET", f"{base}/channels?token={token('ops', admin=True)}")
        assert status == 200 and body["channels"]["chat.lobby"]["subscribers"] == 1
        assert http("GET", f"{base}/channels?limit=0&token={token('ops', admin=True)}")[0] == 400

        out = subprocess.run([sys.executable, MESHNODE, "presence", "chat.>", "--node", e.address],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["users"] == ["dave"]
        out = subprocess.run([sys.executable, MESHNODE, "channels", "--node", e.address],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "chat.lobby" in json.loads(out.stdout)["channels"]
        bad = subprocess.run([sys.executable, MESHNODE, "presence", "a..b", "--node", e.address],
                             capture_output=True, text=True, timeout=30)
        assert bad.returncode != 0 and "empty token" in bad.stderr
    finally:
        dave.close()
