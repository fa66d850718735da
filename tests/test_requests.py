"""Request/reply across real nodes (mesh/requests.py): answers come back to
whoever asked, no responders fails fast, silence times out, failures travel."""

import json
import threading
import time

import pytest
from meshtest.nodeproc import wait_until

from mesh import Client, NoResponders, RemoteError, RequestTimeout


@pytest.fixture
def pair(start_node):
    a = start_node("A")
    b = start_node("B", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"] and b.peer_names() == ["A"], what="link")
    return a, b


def test_a_request_at_one_node_is_answered_by_a_responder_at_another(pair):
    a, b = pair
    with Client(a.address) as responder, Client(b.address) as asker:
        responder.serve("math.double", lambda message: message.data * 2)
        responder.serve("math.fail", lambda message: 1 / 0)
        assert asker.wait_for_interest("math.double")
        assert asker.request("math.double", 21, timeout=5).data == 42
        with pytest.raises(RemoteError, match="ZeroDivisionError"):
            asker.request("math.fail", 1, timeout=5)
        results, errors = {}, []

        def ask(worker):
            try:
                for i in range(20):
                    results[(worker, i)] = asker.request("math.double", worker * 100 + i, timeout=5).data
            except Exception as exc:  # reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=ask, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:3]
        assert results == {(w, i): (w * 100 + i) * 2 for w in range(8) for i in range(20)}  # each to its asker
        plain = Client(b.address)
        sub = plain.subscribe("math.>")
        assert responder.wait_for_interest("math.x")
        responder.publish("math.x", 1)
        with pytest.raises(ValueError, match="not a request"):
            plain.respond(sub.get(timeout=5), "answer")
        plain.close()


def test_no_responders_fails_fast_and_silence_times_out(pair):
    a, b = pair
    with Client(a.address) as asker, Client(b.address) as mute:
        started = time.monotonic()
        with pytest.raises(NoResponders):
            asker.request("nobody.home", 1, timeout=10)
        assert time.monotonic() - started < 1  # not the timeout
        mute.subscribe("quiet.>")  # subscribed, never answers
        wait_until(lambda: asker.has_interest("quiet.x"), what="interest")
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            asker.request("quiet.x", 1, timeout=0.5)
        assert 0.5 <= time.monotonic() - started < 3


def test_requests_from_the_edge_over_websocket_and_post(start_node):
    a = start_node("A")
    e = start_node("E", "--http", "0", peers=[a])
    wait_until(lambda: e.peer_names() == ["A"], what="link")
    from edgehelpers import WS, http, http_address

    base = f"http://{http_address(e)}"
    with Client(a.address) as responder, Client(a.address) as mute:
        responder.serve("svc.echo", lambda message: {"echo": message.data})
        mute.subscribe("svc.mute")
        with Client(e.address) as probe:
            assert probe.wait_for_interest("svc.echo") and probe.wait_for_interest("svc.mute")
        ws = WS(f"ws://{http_address(e)}/ws")
        ws.send({"op": "req", "subject": "svc.echo", "data": [1, 2], "id": "r1"})
        assert ws.recv() == {"op": "reply", "id": "r1", "data": {"echo": [1, 2]}, "origin": responder.origin}
        assert ws.request("req", subject="svc.none", data=1)["code"] == "no_responders"
        assert ws.request("req", subject="svc.mute", data=1, timeout=0.3)["code"] == "timeout"
        assert ws.request("req", subject="svc.echo")["code"] == "bad_frame"  # no data
        # The connection keeps reading while a request waits.
        ws.send({"op": "req", "subject": "svc.mute", "data": 1, "timeout": 1, "id": "slow"})
        ws.send({"op": "ping"})
        assert ws.recv() == {"op": "pong"}
        assert ws.recv()["id"] == "slow"
        status, body = http("POST", f"{base}/req/svc.echo", b'"hi"', {"Content-Type": "application/json"})
        assert (status, body["data"]) == (200, {"echo": "hi"})
        assert http("POST", f"{base}/req/svc.none", b"1")[0] == 503
        assert http("POST", f"{base}/req/svc.mute?timeout=0.3", b"1")[0] == 504
        assert http("GET", f"{base}/req/svc.echo")[0] == 405


def test_meshnode_request_and_reply(pair):
    import subprocess
    import sys

    from meshtest.nodeproc import MESHNODE

    a, b = pair
    responder = subprocess.Popen([sys.executable, MESHNODE, "reply", "cli.>", "--node", a.address, "--count", "2",
                                  "--command", "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"n\"] + 1)'"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "answering requests" in responder.stderr.readline()
        with Client(b.address) as probe:
            assert probe.wait_for_interest("cli.x")
        ask = [sys.executable, MESHNODE, "request", "--node", b.address]
        done = subprocess.run(ask + ["cli.x", '{"n": 41}'], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and json.loads(done.stdout)["data"] == 42
        failed = subprocess.run(ask + ["cli.x", '"not a map"'], capture_output=True, text=True, timeout=30)
        assert failed.returncode == 1 and "exit 1" in failed.stderr
        nobody = subprocess.run(ask + ["nobody.x", "1"], capture_output=True, text=True, timeout=30)
        assert nobody.returncode == 1 and "no subscriber" in nobody.stderr
        assert responder.wait(10) == 0
    finally:
        if responder.poll() is None:
            responder.kill()
            responder.wait()
