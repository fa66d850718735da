"""Recovery at the edge (docs/HISTORY.md): a WebSocket that subscribes with
``recover`` at another edge, an event stream with Last-Event-ID, and the
position POST /pub returns. Real node processes, websocket-client, raw sockets."""

import json
import threading
from urllib.parse import quote

import pytest
from edgehelpers import SSE, WS, http, http_address
from meshtest.nodeproc import linked, wait_until

from mesh import Client

RULE = ("--history", "w.>=20000/300s")


@pytest.fixture
def two_edges(start_node):
    a = start_node("A", *RULE)
    e1 = start_node("E1", "--http", "0", *RULE, peers=[a])
    e2 = start_node("E2", "--http", "0", *RULE, peers=[a, e1])
    wait_until(lambda: linked(a, e1, e2), what="links")
    return a, e1, e2


def position_of(frames):
    """What a client keeps: the last (epoch, seq) per stream and the newest ts."""
    streams = {}
    for f in frames:
        streams[(f["origin"], f["subject"])] = [f["origin"], f["subject"], f["epoch"], f["seq"]]
    return {"t": max(f["ts"] for f in frames), "s": list(streams.values())}


def seen_at(edge, a, publisher, count):
    """The msg frames a WebSocket at ``edge`` subscribed to w.> got, until it
    had ``count`` of the integers ``publisher`` (at ``a``) sends on w.x (the
    first may be lost while its subscription crosses to A); and the next integer."""
    ws = WS(f"ws://{http_address(edge)}/ws")
    assert ws.request("sub", subject="w.>")["op"] == "ok"
    wait_until(lambda: publisher.wait_for_interest("w.x") and a.stats()["peers"] == 2, what="interest")
    got = []
    i = 0
    while len(got) < count:
        publisher.publish("w.x", i)
        i += 1
        try:
            got += [f for f in [ws.recv(0.05)] if f["op"] == "msg"]
        except Exception:  # websocket timeout: publish again
            pass
    ws.close()
    return got, i


def test_a_websocket_back_at_another_edge_recovers_then_goes_live(two_edges):
    a, e1, e2 = two_edges
    with Client(a.address) as publisher:
        got, i = seen_at(e1, a, publisher, 10)
        position = position_of(got)
        resume_from = got[-1]["data"]
        for _ in range(500):  # missed while away
            publisher.publish("w.x", i)
            i += 1
        publisher.flush()
        wait_until(lambda: a.stats()["history"]["recorded"] >= i, what="A to record")
        stop = threading.Event()

        def live():
            j = i
            while not stop.is_set() and j < i + 300:
                publisher.publish("w.x", j)
                j += 1
                stop.wait(0.002)
            publisher.flush()

        thread = threading.Thread(target=live)
        second = WS(f"ws://{http_address(e2)}/ws")
        thread.start()
        second.send({"op": "sub", "subject": "w.>", "recover": position, "id": 5})
        frames, ok = [], None
        while ok is None or not frames or frames[-1]["data"] != i + 299:  # the ok, and the last live one
            frame = second.recv(20)
            if frame["op"] == "msg":
                frames.append(frame)
            elif frame.get("id") == 5:
                ok = frame
        stop.set()
        thread.join(10)
    data = [f["data"] for f in frames]
    assert data == list(range(resume_from + 1, data[-1] + 1))  # in order, nothing lost or twice
    assert data[-1] == i + 299
    assert all(f.get("replayed") for f in frames[:500]) and not frames[-1].get("replayed")
    assert ok["op"] == "ok" and ok["recovered"] is True and ok["replayed"] >= 500 and ok["incomplete"] == []
    assert http("GET", f"http://{http_address(e2)}/stats")[1]["recoveries"] == 1


def test_an_event_stream_resumes_from_last_event_id_and_post_gives_a_position(two_edges):
    a, e1, e2 = two_edges
    base1 = f"http://{http_address(e1)}"
    status, body = http("POST", f"{base1}/pub/w.p", b'"first"', {"Content-Type": "application/json"})
    assert status == 200 and body["position"]["s"][0][1:] == ["w.p", 0, body["seq"]]
    for n in range(5):
        http("POST", f"{base1}/pub/w.p", json.dumps(n).encode(), {"Content-Type": "application/json"})
    wait_until(lambda: e1.stats()["history"]["recorded"] >= 6, what="E1 to record its own publishes")
    # A stream started after the first POST: the five that followed it, then live.
    stream = SSE(http_address(e2), f"/sub/w.p?since={quote(json.dumps(body['position']))}")
    recovery = stream.event()
    assert json.loads(recovery["data"])["recovered"] is True
    events = [stream.event() for _ in range(5)]
    assert [json.loads(ev["data"])["data"] for ev in events] == [0, 1, 2, 3, 4]
    assert all(json.loads(ev["data"])["replayed"] for ev in events)
    stream.close()
    # Last-Event-ID: the id of the third event brings the fourth and fifth.
    again = SSE(http_address(e2), "/sub/w.p", headers=(f"Last-Event-ID: {events[2]['id']}",))
    again.event()  # the recovery event
    assert [json.loads(again.event()["data"])["data"] for _ in range(2)] == [3, 4]
    http("POST", f"{base1}/pub/w.p", b"5", {"Content-Type": "application/json"})
    live = json.loads(again.event()["data"])
    assert live["data"] == 5 and "replayed" not in live
    again.close()


def test_bad_positions_at_the_edge(two_edges):
    a, e1, e2 = two_edges
    ws = WS(f"ws://{http_address(e1)}/ws")
    for bad in ("nonsense", {"t": 1}, {"t": 1, "s": [["o", "w.x", -1, 0]]}, 7):
        reply = ws.request("sub", subject="w.>", recover=bad)
        assert reply["code"] == "bad_position", reply
    stream = SSE(http_address(e1), "/sub/w.x", headers=("Last-Event-ID: garbage",))
    assert stream.status == 400
    stream.close()


def test_a_websocket_recovering_while_a_dead_node_is_still_listed_is_told_which_stream_at_once(two_edges):
    """The node that recorded a stream is killed; a WebSocket recovers at an
    edge whose membership still lists it: the edge gives it 1 s, then names
    it and the stream it could not check."""
    a, e1, e2 = two_edges
    with Client(a.address) as publisher:
        got, _ = seen_at(e1, a, publisher, 1)
        a.kill()
    assert "A" in e2.peer_names()  # still listed: static membership drops a peer after 5 s unheard
    second = WS(f"ws://{http_address(e2)}/ws")
    ok = second.request("sub", subject="w.>", recover=position_of(got))
    second.close()
    assert ok["op"] == "ok" and ok["recovered"] is False and ok["replayed"] == 0
    assert ok["incomplete"] == [[got[0]["origin"], "w.x", "unreachable"]]
    assert [entry.split(":")[0] for entry in ok["unreachable"]] == ["A"]
    assert "within 1.0 s" in ok["unreachable"][0], ok
