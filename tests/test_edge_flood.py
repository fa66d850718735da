"""The edge under a publish flood (issue 22): fast readers keep up and are never
cut, a reader that stalls is, the edge's queues are bounded as a whole, a
publisher can wait for the mesh's interest, and error frames echo their id."""

import json
import os
import subprocess
import sys
import time

import websocket
from bench.wsclient import upgrade
from edgehelpers import WS, http, http_address
from meshtest.nodeproc import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Reader:
    """bench/wsreader.py in a process of its own, stopped by PID."""

    def __init__(self, address, path, count):
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.wsreader", address, path, str(count)],
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout.readline().strip() == "ready"

    def result(self, timeout=60):
        out, _ = self.proc.communicate(timeout=timeout)
        return json.loads(out)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def stalled_websocket(address, path):
    """A WebSocket that never reads, with a small receive buffer."""
    host, port = address.rsplit(":", 1)
    return upgrade(host, port, path, rcvbuf=4096)[0]


def flood(address, count, payload):
    """Publish ``count`` frames over one WebSocket as fast as it takes them; wait for every ok."""
    publisher = websocket.create_connection(f"ws://{address}/ws", timeout=30)
    try:
        frame = {"op": "pub", "subject": "flood.x", "data": payload}
        for i in range(count):
            frame["id"] = i
            publisher.send(json.dumps(frame))
        oks = 0
        while oks < count:
            reply = json.loads(publisher.recv())
            assert reply["op"] == "ok", reply
            oks += 1
    finally:
        publisher.close()


def test_a_websocket_flood_reaches_fast_readers_whole_and_cuts_only_the_stalled_one(start_node):
    e = start_node("E", "--http", "0")
    address = http_address(e)
    count = 10_000
    readers = [Reader(address, "/ws/flood.>", count) for _ in range(3)]
    stalled = stalled_websocket(address, "/ws/flood.>")
    try:
        wait_until(lambda: http("GET", f"http://{address}/stats")[1]["connections"]["ws"] == 4, what="readers")
        flood(address, count, "x" * 1000)
        results = [reader.result() for reader in readers]
        assert results == [{"messages": count, "close": None}] * 3
        stats = http("GET", f"http://{address}/stats")[1]
        assert stats["slow_consumers"] == 1  # the stalled one, and only it
        assert stats["dropped"] == 0 and stats["gaps"] == 0
        assert stats["messages_in"] == count
    finally:
        for reader in readers:
            reader.kill()
        stalled.close()


def test_the_edge_buffers_are_bounded_as_a_whole(start_node):
    """Each stalled client stays under its own --queue-bytes; together they
    would pass --buffer-bytes, so the edge cuts them off as they get there."""
    e = start_node("E", "--http", "0", "--queue-bytes", "1000000", "--buffer-bytes", "1500000")
    address = http_address(e)
    stalled = [stalled_websocket(address, "/ws/flood.>") for _ in range(4)]
    reader = Reader(address, "/ws/flood.>", 1500)
    try:
        wait_until(lambda: http("GET", f"http://{address}/stats")[1]["connections"]["ws"] == 5, what="clients")
        queued = []
        publisher = WS(f"ws://{address}/ws")
        for i in range(1500):  # 1.5 MB for each client: over its own limit too, eventually
            publisher.send({"op": "pub", "subject": "flood.x", "data": "y" * 1000, "id": i})
            if i % 100 == 0:
                queued.append(http("GET", f"http://{address}/stats")[1]["queued_bytes"])
        assert reader.result() == {"messages": 1500, "close": None}
        stats = http("GET", f"http://{address}/stats")[1]
        assert max(queued) <= 1_500_000 + 4 * 1100
        assert stats["slow_consumers"] == 4
        wait_until(lambda: http("GET", f"http://{address}/stats")[1]["connections"]["ws"] == 1, timeout=15,
                   what="the stalled clients to be released (their close frame waits up to 5 s)")
        e.stop()
        assert "the edge's buffers (1500000 bytes for all connections) are full" in e.stderr_text
        assert "receive failed" not in e.stderr_text  # a connection we cut is no error
    finally:
        reader.kill()
        for sock in stalled:
            sock.close()


def test_a_publisher_can_wait_for_a_subscriber_anywhere_in_the_mesh(start_node):
    a = start_node("A")
    e = start_node("E", "--http", "0", peers=[a])
    f = start_node("F", "--http", "0", peers=[a, e])
    wait_until(lambda: e.peer_names() == ["A", "F"] and f.peer_names() == ["A", "E"], what="links")
    publisher = WS(f"ws://{http_address(e)}/ws")
    started = time.monotonic()
    refused = publisher.request("interest", subject="far.x", timeout=0.3)
    assert refused["code"] == "no_interest" and time.monotonic() - started >= 0.3
    status, body = http("GET", f"http://{http_address(e)}/interest/far.x?timeout=0.2")
    assert (status, body["error"]) == (504, "no_interest")
    subscriber = WS(f"ws://{http_address(f)}/ws")
    assert subscriber.request("sub", subject="far.>")["op"] == "ok"
    assert publisher.request("interest", subject="far.x", timeout=5)["op"] == "ok"
    assert http("GET", f"http://{http_address(e)}/interest/far.y?timeout=5")[0] == 200
    assert publisher.request("pub", subject="far.x", data="first")["op"] == "ok"
    assert subscriber.messages(1)[0]["data"] == "first"  # not lost to the slow joiner
    assert publisher.request("interest", subject="far.x", timeout="soon")["code"] == "bad_frame"
    assert http("GET", f"http://{http_address(e)}/interest/far.x?timeout=-1")[0] == 400


def test_error_frames_echo_the_request_id(start_node):
    e = start_node("E", "--http", "0")
    ws = WS(f"ws://{http_address(e)}/ws")
    # An integer msgpack cannot hold was once an internal error with "id": null.
    ws.send({"op": "pub", "subject": "big.int", "data": 2 ** 70, "id": "req-7"})
    reply = ws.recv()
    assert (reply["op"], reply["id"], reply["code"]) == ("error", "req-7", "bad_data")
    status, body = http("POST", f"http://{http_address(e)}/pub/big.int", str(2 ** 70).encode(),
                        {"Content-Type": "application/json"})
    assert (status, body["error"]) == (400, "bad_data")
    assert e.stop() == 0 and "Traceback" not in e.stderr_text
