"""docs/PROTOCOL.md is enough: a raw pyzmq + msgpack client (tests/raw_client.py)
interoperates with real meshnode processes and with the ``mesh`` client library."""

import time

import msgpack
import pytest
import zmq

import raw_client
from mesh import Client, PayloadTooLarge
from nodeproc import wait_until


@pytest.fixture
def pair(start_node):
    """Two linked nodes A and B (B names A; the link is symmetric)."""
    a = start_node("A")
    b = start_node("B", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"], what="A to see B")
    wait_until(lambda: b.peer_names() == ["A"], what="B to see A")
    return a, b


def assert_nothing_more(get, seconds=0.3):
    with pytest.raises(TimeoutError):
        extra = get(timeout=seconds)
        print("unexpected:", extra)


# -- (a) raw publisher -> mesh.Client subscriber on another node ----------------

PAYLOADS = ["hi", b"\x00\x01\xff", {"qty": 2, "items": ["a", "b"]}, {1: "int key"}, [1, 2.5, None, True],
            None, 2 ** 63 - 1, -7, 3.25, "ünïcode ✓", b"", ""]


def test_raw_publisher_to_library_subscriber_on_peer(pair):
    a, b = pair
    with Client(b.address) as client:
        sub = client.subscribe("orders.*.new")
        pub = raw_client.Publisher(a.address, origin="raw-pub-1")
        try:
            assert pub.wait_for_interest("orders.eu.new", timeout=10), "B's subscription never reached A"
            assert b"orders." in pub.interest  # the notice carries the pattern's prefix
            sent = []
            for i, data in enumerate(PAYLOADS * 3):
                subject = ("orders.eu.new", "orders.us.new")[i % 2]
                seq = pub.publish(subject, data)
                sent.append((subject, seq, data))
                # Same prefix, no match: the subscriber must skip these silently.
                pub.publish("orders.eu.old", data)
                pub.publish("orders.eu.new.x", data)
            got = [sub.get(timeout=10) for _ in sent]
            assert [(m.subject, m.seq, m.data) for m in got] == sent
            for subject in ("orders.eu.new", "orders.us.new"):
                assert [m.seq for m in got if m.subject == subject] == list(range(1, len(PAYLOADS) * 3 // 2 + 1))
            assert all(m.origin == "raw-pub-1" for m in got)
            assert all(abs(m.ts - time.time()) < 60 for m in got)
            assert_nothing_more(sub.get)
            assert (sub.received, sub.gaps, sub.malformed) == (len(sent), 0, 0)
        finally:
            pub.close()
    stats = a.stats()
    assert stats["messages"]["published_here"] >= len(sent) * 3


# -- (b) mesh.Client publisher -> raw wildcard subscriber on another node ------

def test_library_publisher_to_raw_wildcard_subscriber_on_peer(pair):
    a, b = pair
    sub = raw_client.Subscriber(b.address, "sensors.*.temp")
    assert sub.pattern.prefix == b"sensors."
    try:
        with Client(a.address) as client:
            assert client.wait_for_interest("sensors.kitchen.temp", timeout=10)
            want = []
            for i in range(40):
                room = ("kitchen", "garage")[i % 2]
                data = {"c": 20 + i / 4, "raw": bytes([i]), "room": room}
                seq = client.publish(f"sensors.{room}.temp", data)
                want.append((f"sensors.{room}.temp", seq, data))
                for other in ("sensors.kitchen.humidity", "sensors.temp", "sensors.a.b.temp", "sensorsx.a.temp"):
                    client.publish(other, i)
            got = [sub.get(timeout=10) for _ in want]
            assert [(m["subject"], m["seq"], m["data"]) for m in got] == want
            assert [m["seq"] for m in got if m["subject"] == "sensors.kitchen.temp"] == list(range(1, 21))
            assert [m["seq"] for m in got if m["subject"] == "sensors.garage.temp"] == list(range(1, 21))
            assert all(m["origin"] == client.origin for m in got)
            assert all(isinstance(m["ts"], float) and abs(m["ts"] - time.time()) < 60 for m in got)
            assert_nothing_more(sub.get)
            assert (sub.received, sub.gaps, sub.malformed) == (40, 0, 0)
    finally:
        sub.close()


def test_raw_publisher_to_raw_subscriber_full_wildcard(pair):
    """Both ends raw: '>' subscribes to the empty prefix (everything)."""
    a, b = pair
    sub = raw_client.Subscriber(b.address, ">")
    assert sub.pattern.prefix == b""
    pub = raw_client.Publisher(a.address)
    try:
        assert pub.wait_for_interest("x", timeout=10)
        assert b"" in pub.interest
        seqs = [pub.publish(s, s) for s in ("x", "x.y", "x", "deep.a.b.c.d")]
        got = [sub.get(timeout=10) for _ in seqs]
        assert [(m["subject"], m["data"], m["seq"]) for m in got] == [
            ("x", "x", 1), ("x.y", "x.y", 1), ("x", "x", 2), ("deep.a.b.c.d", "deep.a.b.c.d", 1)]
        assert all(m["origin"] == pub.origin for m in got)
    finally:
        pub.close()
        sub.close()


# -- (c) control requests ------------------------------------------------------

def test_raw_control_requests(start_node):
    a = start_node("A", "--max-payload", "65536")
    info = raw_client.hello(a.address)
    assert info["ok"] is True and info["v"] == 1 and info["id"] == 1
    assert info["name"] == "A"
    assert info["protocol"] == 1
    assert info["max_payload"] == 65536
    ready = dict(part.split("=", 1) for part in a.ready_line.split()[2:])
    assert info["endpoints"] == {k: ready[k] for k in ("ingress", "out", "remote")}
    member = info["member"]
    assert set(member) >= {"name", "control", "ingress", "out", "remote", "instance", "started", "protocol"}
    assert member["control"] == f"tcp://{a.address}" and member["protocol"] == 1
    assert all(member[k] == info["endpoints"][k] for k in ("ingress", "out", "remote"))

    pong = raw_client.request(a.address, "ping")
    assert pong == {"v": 1, "id": 1, "ok": True, "pong": True}

    unknown = raw_client.send_raw_request(a.address, msgpack.packb({"v": 1, "cmd": "nope", "id": "req-9"}))
    assert unknown["ok"] is False
    assert unknown["error"] == "unknown_command"
    assert unknown["id"] == "req-9"
    assert "nope" in unknown["message"]

    for body in (b"\xc1 this is not msgpack", msgpack.packb([1, "hello"]), b""):
        bad = raw_client.send_raw_request(a.address, body)
        assert bad["ok"] is False and bad["error"] == "malformed", body
        assert "id" not in bad
        assert isinstance(bad["message"], str)

    bye = raw_client.request(a.address, "bye")
    assert (bye["ok"], bye["error"]) == (False, "bad_request")
    peer = raw_client.request(a.address, "peer", member={"name": "X"})
    assert (peer["ok"], peer["error"]) == (False, "bad_member")

    # REQ framing (empty delimiter frame) and pipelined DEALER requests work too.
    req_reply = raw_client.send_raw_request(a.address, msgpack.packb({"v": 1, "cmd": "ping", "id": 5}),
                                            socket_type=zmq.REQ)
    assert req_reply["pong"] is True and req_reply["id"] == 5
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://{a.address}")
    try:
        dealer.send_multipart([b"", msgpack.packb({"v": 1, "cmd": "ping", "id": 1})])
        dealer.send(msgpack.packb({"v": 1, "cmd": "peers", "id": 2}))
        replies = []
        for _ in range(2):
            assert dealer.poll(5000)
            replies.append(dealer.recv_multipart())
        assert replies[0][0] == b"" and len(replies[0]) == 2
        assert msgpack.unpackb(replies[0][1])["pong"] is True
        assert len(replies[1]) == 1
        assert msgpack.unpackb(replies[1][0]) == {"v": 1, "id": 2, "ok": True, "peers": []}
    finally:
        dealer.close()

    # The node is still up and serving after all of that.
    assert a.alive()
    assert raw_client.request(a.address, "ping")["pong"] is True
    stats = raw_client.request(a.address, "stats")
    assert stats["ok"] is True and stats["name"] == "A"
    assert stats["control"]["malformed"] >= 3
    assert stats["control"]["unknown_commands"] >= 1
    assert raw_client.hello(a.address)["member"]["instance"] == member["instance"]


def test_raw_client_script(start_node):
    """The raw client also runs as a script (hello, sub, pub)."""
    import json
    import subprocess
    import sys

    a = start_node("A")
    script = raw_client.__file__
    out = subprocess.run([sys.executable, script, "hello", a.address], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert json.loads(out)["name"] == "A"
    sub = subprocess.Popen([sys.executable, script, "sub", a.address, "cli.>", "--count", "1", "--timeout", "20"],
                           stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while sub.poll() is None and time.monotonic() < deadline:
            subprocess.run([sys.executable, script, "pub", a.address, "cli.test", '{"n": 1}', "--wait", "2"],
                           capture_output=True, timeout=30, check=True)
            try:
                sub.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        assert sub.wait(timeout=5) == 0
        line = json.loads(sub.stdout.readline())
        assert line["subject"] == "cli.test" and line["data"] == {"n": 1} and line["seq"] == 1
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
        sub.stdout.close()


# -- (d) malformed data messages -------------------------------------------------

def _bad_messages():
    ts = time.time()
    good = raw_client.encode_envelope("raw-bad", 1, "looks fine")
    return [
        [b"bad.x."],                                                  # 1 frame
        [b"bad.x.", good, b"extra"],                                  # 3 frames
        [b"bad.x.", b"\xc1\xc1 not msgpack"],                         # not msgpack
        [b"bad.x.", msgpack.packb([2, "raw-bad", 1, ts, "v2"])],      # unknown version
        [b"bad.x.", msgpack.packb({"v": 1, "data": "map"})],          # not an array
        [b"bad.x.", msgpack.packb([1, "raw-bad", 1, ts])],            # 4 elements
        [b"bad.x.", msgpack.packb([1, 42, 1, ts, "origin int"])],     # origin not a str
        [b"bad.x.", msgpack.packb([1, "raw-bad", "1", ts, "seq"])],   # seq not an int
        [b"bad.x", good],                                             # no trailing '.'
        [b"bad.\xff\xfe.", good],                                     # subject not UTF-8
    ]


def test_library_subscribers_drop_and_count_malformed_messages(pair):
    a, b = pair
    with Client(a.address) as ca, Client(b.address) as cb:
        local = ca.subscribe("bad.>")
        remote = cb.subscribe("bad.>")
        pub = raw_client.Publisher(a.address, origin="raw-bad")
        try:
            # Publish until both subscribers (same node and peer) have one message.
            pending = {id(local): local, id(remote): remote}
            deadline = time.monotonic() + 10
            while pending:
                assert time.monotonic() < deadline, "subscribers never got the warm-up"
                pub.publish("bad.warm", "warm")
                for key, sub in list(pending.items()):
                    try:
                        assert sub.get(timeout=0.05).subject == "bad.warm"
                        del pending[key]
                    except TimeoutError:
                        pass
            warm_sent = pub.seqs["bad.warm"]

            bad = _bad_messages()
            for frames in bad:
                pub.send_frames(frames)
            assert pub.publish("bad.x", "good 1") == 1
            for frames in bad[:3]:
                pub.send_frames(frames)
            assert pub.publish("bad.x", "good 2") == 2

            for sub in (local, remote):
                got = []
                while len(got) < 2:
                    message = sub.get(timeout=10)
                    if message.subject == "bad.warm":
                        continue  # a warm-up still in flight
                    got.append(message)
                assert [(m.subject, m.data, m.seq, m.origin) for m in got] == [
                    ("bad.x", "good 1", 1, "raw-bad"), ("bad.x", "good 2", 2, "raw-bad")]
                assert sub.malformed == len(bad) + 3
                assert sub.gaps == 0
                # Drain the trailing warm-ups; nothing else may follow.
                while True:
                    try:
                        assert sub.get(timeout=0.3).subject == "bad.warm"
                    except TimeoutError:
                        break
                assert 3 <= sub.received <= warm_sent + 2  # at least one warm-up, both goods
        finally:
            pub.close()
    for node in (a, b):
        assert node.alive()
        assert node.request("ping")["pong"] is True


def test_raw_subscriber_drops_and_counts_malformed_messages(start_node):
    a = start_node("A")
    sub = raw_client.Subscriber(a.address, "bad.>")
    pub = raw_client.Publisher(a.address, origin="raw-bad")
    try:
        assert pub.wait_for_interest("bad.x", timeout=10)
        bad = _bad_messages()
        for frames in bad:
            pub.send_frames(frames)
        pub.publish("bad.x", "good")
        message = sub.get(timeout=10)
        assert (message["subject"], message["data"], message["seq"]) == ("bad.x", "good", 1)
        assert sub.malformed == len(bad)
    finally:
        pub.close()
        sub.close()


# -- size limits -----------------------------------------------------------------

def test_oversized_frames_are_dropped_by_the_node_and_show_as_a_gap(start_node):
    max_payload = 1000
    a = start_node("A", "--max-payload", str(max_payload))
    with Client(a.address) as client:
        assert client.max_payload == max_payload
        with pytest.raises(PayloadTooLarge):
            client.publish("big.x", b"x" * max_payload)
        sub = client.subscribe("big.>")
        pub = raw_client.Publisher(a.address, origin="raw-big")
        try:
            assert pub.max_payload == max_payload
            with pytest.raises(ValueError):
                pub.publish("big.x", b"x" * max_payload)
            assert pub.wait_for_interest("big.x", timeout=10)

            def envelope(seq, size):
                empty = raw_client.encode_envelope("raw-big", seq, b"")  # data is c4 00
                data = b"x" * (size - len(empty) - 1)  # c5 + 2 length bytes + data
                env = raw_client.encode_envelope("raw-big", seq, data)
                assert len(env) == size
                return env, data

            # Implementation note of PROTOCOL.md 4.4: the node's own limit is per
            # frame, max_payload + 768; up to there a frame still passes.
            env, data = envelope(1, max_payload + 768)
            pub.send_frames([b"big.x.", env])
            first = sub.get(timeout=10)
            assert (first.seq, first.data) == (1, data)
            # Over it, the node closes the publisher's connection: the frame is lost.
            pub.send_frames([b"big.x.", envelope(2, max_payload + 769)[0]])
            # The publisher reconnects by itself; publish until something arrives.
            seq = 2
            deadline = time.monotonic() + 10
            while True:
                assert time.monotonic() < deadline, "nothing arrived after the oversized frame"
                seq += 1
                pub.send_frames([b"big.x.", raw_client.encode_envelope("raw-big", seq, "after")])
                try:
                    after = sub.get(timeout=0.2)
                    break
                except TimeoutError:
                    pass
            assert after.data == "after" and after.seq >= 3
            assert sub.gaps == after.seq - 2  # seq 2 (and anything lost with it) is a visible gap
            assert sub.malformed == 0
        finally:
            pub.close()
    assert a.alive()
    assert a.request("ping")["pong"] is True
