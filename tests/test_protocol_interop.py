"""docs/PROTOCOL.md is enough: a raw pyzmq + msgpack client (tests/raw_client.py)
interoperates with real meshnode processes and with the ``mesh`` client library,
on data protocol 2 (batches, epochs, marks) and control protocol 1."""

import threading
import time

import msgpack
import pytest
import zmq

import raw_client
from mesh import Client, PayloadTooLarge
from meshhelpers import WARM_UP, assert_quiet
from meshtest.nodeproc import wait_until


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


def test_raw_batch_of_several_arrives_as_the_individual_messages_in_order(pair):
    """4.2: payload i of a batch starting at seq has seq + i; all share the batch's ts."""
    a, b = pair
    with Client(b.address) as client:
        sub = client.subscribe("batch.>")
        pub = raw_client.Publisher(a.address, origin="raw-batcher")
        try:
            assert pub.wait_for_interest("batch.x", timeout=10)
            first = ["one", b"\x02", {"three": 3}, [4], None]
            assert pub.publish_batch("batch.x", first) == [1, 2, 3, 4, 5]
            assert pub.publish("batch.y", "alone") == 1
            assert pub.publish_batch("batch.x", ["six", "seven"]) == [6, 7]
            ts = time.time()
            pub.send_frames([b"batch.x.", raw_client.encode_batch("raw-batcher", 8, list(range(300)), ts=ts)])
            got = [sub.get(timeout=10) for _ in range(5 + 1 + 2 + 300)]
            assert [(m.subject, m.seq, m.data) for m in got[:8]] == [
                ("batch.x", 1, "one"), ("batch.x", 2, b"\x02"), ("batch.x", 3, {"three": 3}), ("batch.x", 4, [4]),
                ("batch.x", 5, None), ("batch.y", 1, "alone"), ("batch.x", 6, "six"), ("batch.x", 7, "seven")]
            assert [(m.seq, m.data) for m in got[8:]] == [(8 + i, i) for i in range(300)]
            assert all(m.origin == "raw-batcher" for m in got)
            assert len({m.ts for m in got[:5]}) == 1 and got[5].ts >= got[0].ts  # one ts per batch
            assert {m.ts for m in got[8:]} == {ts}
            assert_nothing_more(sub.get)
            assert (sub.received, sub.gaps, sub.malformed) == (308, 0, 0)
        finally:
            pub.close()


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
            assert all(m["epoch"] == 0 for m in got)
            assert_nothing_more(sub.get)
            assert (sub.received, sub.gaps, sub.malformed) == (40, 0, 0)
        # close() sent the client's marks (4.3) on the prefix it knew, b"sensors.": they are read,
        # never delivered, and report nothing lost.
        wait_until(lambda: (sub.process(0.1), sub.marks)[1], timeout=10, what="the library's marks")
        assert sub.streams[(client.origin, "sensors.kitchen.temp")] == [0, 20]
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
        seqs += pub.publish_batch("x", ["b1", "b2"])
        got = [sub.get(timeout=10) for _ in seqs]
        assert [(m["subject"], m["data"], m["seq"]) for m in got] == [
            ("x", "x", 1), ("x.y", "x.y", 1), ("x", "x", 2), ("deep.a.b.c.d", "deep.a.b.c.d", 1),
            ("x", "b1", 3), ("x", "b2", 4)]
        assert all(m["origin"] == pub.origin and m["epoch"] == 0 for m in got)
        assert got[4]["ts"] == got[5]["ts"]
        # Marks on b"" (what '>' subscribes to) for every stream: nothing was lost.
        assert pub.send_all_marks() == [b""]
        wait_until(lambda: (sub.process(0.1), sub.marks)[1], timeout=10, what="the raw marks")
        assert (sub.received, sub.gaps, sub.malformed) == (6, 0, 0)
    finally:
        pub.close()
        sub.close()


# -- (c) control requests ------------------------------------------------------

def test_raw_control_requests(start_node):
    a = start_node("A", "--max-payload", "65536")
    info = raw_client.hello(a.address)
    assert info["ok"] is True and info["v"] == 1 and info["id"] == 1
    assert info["name"] == "A"
    assert info["protocol"] == 2 == raw_client.DATA_VERSION
    assert info["max_payload"] == 65536
    ready = dict(part.split("=", 1) for part in a.ready_line.split()[2:])
    assert info["endpoints"] == {k: ready[k] for k in ("ingress", "out", "remote")}
    member = info["member"]
    assert set(member) >= {"name", "control", "ingress", "out", "remote", "instance", "started", "protocol"}
    assert member["control"] == f"tcp://{a.address}" and member["protocol"] == 2
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
    sub = subprocess.Popen([sys.executable, script, "sub", a.address, "cli.>", "--count", "3", "--timeout", "20"],
                           stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        published = []
        while sub.poll() is None and time.monotonic() < deadline:
            out = subprocess.run([sys.executable, script, "pub", a.address, "cli.test", '{"n": 1}', "2", "three",
                                  "--wait", "2"], capture_output=True, text=True, timeout=30, check=True).stdout
            published.append(json.loads(out))
            try:
                sub.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        assert sub.wait(timeout=5) == 0
        assert all(p["seqs"] == [1, 2, 3] and p["seq"] == 1 for p in published)
        lines = [json.loads(sub.stdout.readline()) for _ in range(3)]
        # The three data of one `pub` travel as one batch: all or nothing, in order.
        assert [(m["subject"], m["data"], m["seq"], m["epoch"]) for m in lines] == [
            ("cli.test", {"n": 1}, 1, 0), ("cli.test", 2, 2, 0), ("cli.test", "three", 3, 0)]
        assert len({m["origin"] for m in lines}) == 1 and lines[0]["origin"] in {p["origin"] for p in published}
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
        sub.stdout.close()


# -- (d) malformed data messages -------------------------------------------------

def _bad_messages():
    """Messages a subscriber of bad.> must drop and count (PROTOCOL.md 5); none changes gaps."""
    ts = time.time()
    good = raw_client.encode_batch("raw-bad", 1, ["looks fine"])
    marks = raw_client.encode_marks("raw-bad", [["bad.x", 0, 1]])
    head = msgpack.packb(2) + msgpack.packb("raw-bad") + msgpack.packb(0) + msgpack.packb(1) + msgpack.packb(ts)
    return [
        [b"bad.x."],                                                  # 1 frame
        [b"bad.x.", good, b"extra"],                                  # 3 frames
        [b"bad.x.", b"\xc1\xc1 not msgpack"],                         # not msgpack
        [b"bad.x.", msgpack.packb([3, "raw-bad", 0, 1, ts, ["v3"]])],  # unknown version
        [b"bad.x.", msgpack.packb([1, "raw-bad", 1, ts, "v1"])],      # a version-1 envelope (section 1)
        [b"bad.x.", msgpack.packb({"v": 2, "data": "map"})],          # not an array
        [b"bad.x.", msgpack.packb([2, "raw-bad", 0, 1, ts])],         # 5 elements
        [b"bad.x.", msgpack.packb([2, 42, 0, 1, ts, ["origin int"]])],  # origin not a str
        [b"bad.x.", msgpack.packb([2, "raw-bad", "0", 1, ts, ["x"]])],  # epoch not an int
        [b"bad.x.", msgpack.packb([2, "raw-bad", -1, 1, ts, ["x"]])],  # epoch < 0
        [b"bad.x.", msgpack.packb([2, "raw-bad", 0, "1", ts, ["x"]])],  # seq not an int
        [b"bad.x.", msgpack.packb([2, "raw-bad", 0, 0, ts, ["x"]])],  # seq 0
        [b"bad.x.", msgpack.packb([2, "raw-bad", 0, True, ts, ["x"]])],  # seq a bool
        [b"bad.x.", msgpack.packb([2, "raw-bad", 0, 1, ts, []])],     # no payloads
        [b"bad.x.", msgpack.packb([2, "raw-bad", 0, 1, ts, "x"])],    # payloads not an array
        [b"bad.x.", b"\x96" + head + b"\x93\xa1a\xa2\xff\xfe\xa1c"],  # one payload not UTF-8: all dropped
        [b"bad.x", good],                                             # no trailing '.' or NUL
        [b"bad.x\x01", good],
        [b"bad.\xff\xfe.", good],                                     # subject not UTF-8
        [b"bad.\x00"],                                                # marks, 1 frame
        [b"bad.\x00", b"\xc1"],                                       # marks, not msgpack
        [b"bad.\x00", good],                                          # marks topic, batch body
        [b"bad.x.\x00", msgpack.packb([2, "raw-bad", [["bad.x", 0]]])],  # a short mark entry
        [b"bad.x.\x00", msgpack.packb([2, "raw-bad", [["bad.x", 0, True]]])],  # a bool seq
        [b"bad.\x00", msgpack.packb([1, "raw-bad", [["bad.x", 0, 5]]])],  # version 1
        [b"bad.x.", marks],                                           # batch topic, marks body
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
            with pytest.raises(ValueError):  # the limit is on the whole body: a batch may not pass it either
                pub.publish_batch("big.x", [b"x" * 400] * 3)
            assert pub.wait_for_interest("big.x", timeout=10)

            def batch_of_size(seq, size):
                empty = raw_client.encode_batch("raw-big", seq, [b""])  # the payload is c4 00
                data = b"x" * (size - len(empty) - 1)  # c5 + 2 length bytes + data
                body = raw_client.encode_batch("raw-big", seq, [data])
                assert len(body) == size
                return body, data

            # Implementation note of PROTOCOL.md 4.5: the node's own limit is per
            # frame, max_payload + 768; up to there a frame still passes.
            body, data = batch_of_size(1, max_payload + 768)
            pub.send_frames([b"big.x.", body])
            first = sub.get(timeout=10)
            assert (first.seq, first.data) == (1, data)
            # Over it, the node closes the publisher's connection: the frame is lost.
            pub.send_frames([b"big.x.", batch_of_size(2, max_payload + 769)[0]])
            # The publisher reconnects by itself; publish until something arrives.
            seq = 2
            deadline = time.monotonic() + 10
            while True:
                assert time.monotonic() < deadline, "nothing arrived after the oversized frame"
                seq += 1
                pub.send_frames([b"big.x.", raw_client.encode_batch("raw-big", seq, ["after"])])
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


# -- helpers for library (Message) and raw (dict) subscribers alike -------------------

WARM = WARM_UP


def _field(message, name):
    return message[name] if isinstance(message, dict) else getattr(message, name)


def _warm_up(publish, subject, subs, timeout=10.0):
    """Publish WARM on ``subject`` until every subscriber got one: their subscriptions
    have reached the publisher (6)."""
    pending = list(subs)
    deadline = time.monotonic() + timeout
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} subscribers never received {subject!r}"
        publish(subject, WARM)
        for sub in list(pending):
            try:
                while _field(sub.get(timeout=0.05), "data") != WARM:
                    pass
                pending.remove(sub)
            except TimeoutError:
                pass


def _next(sub, timeout=10.0):
    """The next message that is not a warm-up."""
    deadline = time.monotonic() + timeout
    while True:
        message = sub.get(timeout=max(0.01, deadline - time.monotonic()))
        if _field(message, "data") != WARM:
            return message


def _quiet(sub, seconds=0.3):
    """Nothing but warm-ups arrives for ``seconds`` (a library subscription applies marks meanwhile)."""
    assert_quiet(sub, seconds, data_of=lambda message: _field(message, "data"))


# -- version 1 meets version 2 (PROTOCOL.md 1) -------------------------------------

def test_version_1_envelopes_are_malformed_at_version_2_subscribers(pair):
    """A v1 envelope that reaches a v2 subscriber (from a raw publisher) is dropped and
    counted, never delivered, at the library and at the raw client alike."""
    a, b = pair
    ts = time.time()
    old = [
        [b"v1.x.", msgpack.packb([1, "raw-v1", 1, ts, "v1 message"])],
        [b"v1.x.", msgpack.packb([1, "raw-v1", 2, ts, {"seq": 2}])],
        [b"v1.x.", msgpack.packb([1, "raw-v1", 2, ts, None, 1])],          # a v1 sequence mark
        [b"v1.x.", msgpack.packb([1, "raw-v1", 0, 3, ts, ["v1 tag"]])],     # v2 layout, version 1
    ]
    with Client(b.address) as client:
        lib = client.subscribe("v1.>")
        raw = raw_client.Subscriber(a.address, "v1.>")
        pub = raw_client.Publisher(a.address, origin="raw-v1")
        try:
            _warm_up(pub.publish, "v1.warm", [lib, raw])
            for frames in old:
                pub.send_frames(frames)
            assert pub.publish("v1.x", "v2 message") == 1
            for sub in (lib, raw):
                message = _next(sub)
                assert (_field(message, "subject"), _field(message, "seq"), _field(message, "data")) == (
                    "v1.x", 1, "v2 message")
                _quiet(sub)
            assert (lib.malformed, lib.gaps) == (len(old), 0)
            assert (raw.malformed, raw.gaps) == (len(old), 0)
        finally:
            pub.close()
            raw.close()


def test_a_node_refuses_a_version_1_member_record(pair):
    a, b = pair
    member = raw_client.hello(b.address)["member"]
    assert member["protocol"] == 2
    old = {**member, "name": "OLD", "instance": "v1-instance", "protocol": 1}
    reply = raw_client.request(a.address, "peer", member=old)
    assert (reply["ok"], reply["error"]) == (False, "bad_member")
    assert "protocol" in reply["message"]
    reply = raw_client.request(a.address, "peer", member={**old, "protocol": 3})
    assert (reply["ok"], reply["error"]) == (False, "bad_member")
    assert a.peer_names() == ["B"]  # no mixed mesh
    assert a.alive() and a.request("ping")["pong"] is True


def _fake_node(protocol):
    """A control ROUTER that answers hello like a node of data protocol ``protocol``."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()
    endpoints = {k: f"tcp://127.0.0.1:{port}" for k in ("ingress", "out", "remote")}

    def serve():
        while not stop.is_set():
            if not router.poll(50):
                continue
            *route, body = router.recv_multipart()
            request = msgpack.unpackb(body)
            router.send_multipart(route + [msgpack.packb({
                "v": 1, "id": request.get("id"), "ok": True, "name": "OLD", "protocol": protocol,
                "max_payload": 1048576, "endpoints": endpoints})])
        router.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"127.0.0.1:{port}", stop, thread


def test_version_2_clients_refuse_a_version_1_node_at_hello():
    for protocol in (1, 2):
        address, stop, thread = _fake_node(protocol)
        try:
            if protocol == 1:
                with pytest.raises(RuntimeError, match="speaks data protocol 1"):
                    Client(address, timeout=5)
                with pytest.raises(raw_client.ProtocolError, match="data protocol 1"):
                    raw_client.hello(address)
            else:  # the same fake speaking 2 is accepted: the refusal is about the version
                assert raw_client.hello(address)["protocol"] == 2
        finally:
            stop.set()
            thread.join(5)


# -- marks and epochs (PROTOCOL.md 4.2, 4.3) -----------------------------------------

def test_raw_marks_are_counted_by_library_and_raw_subscribers(pair):
    a, b = pair
    with Client(b.address) as client:
        lib = client.subscribe("mk.>")
        raw = raw_client.Subscriber(b.address, "mk.>")
        pub = raw_client.Publisher(a.address, origin="raw-marks")

        def settle(sentinel):
            """Publish a sentinel on another stream: once it is read, all sent before it was too."""
            pub.publish("mk.sentinel", sentinel)
            assert _field(_next(lib), "data") == sentinel
            assert _field(_next(raw), "data") == sentinel
            return lib.gaps, raw.gaps

        try:
            _warm_up(pub.publish, "mk.warm", [lib, raw])
            assert pub.publish_batch("mk.x", ["a", "b", "c"]) == [1, 2, 3]
            assert [_next(lib).seq for _ in range(3)] == [1, 2, 3]
            assert [_next(raw)["seq"] for _ in range(3)] == [1, 2, 3]
            assert settle("s0") == (0, 0)
            # The publisher says it sent up to 5: 4 and 5 never came (tail loss). Again: no change.
            pub.send_marks(b"mk.", [["mk.x", 0, 5]])
            pub.send_marks(b"mk.x.", [["mk.x", 0, 5], ["mk.x", 0, 4]])  # any marks topic the prefix admits
            # Ignored: a stream never seen, a subject the pattern does not match, an older seq.
            pub.send_marks(b"mk.", [["mk.never", 0, 9], ["mkx.y", 0, 9], ["mk.x", 0, 2]])
            assert settle("s1") == (2, 2)
            # Another origin's marks about the same subject: a stream never seen.
            pub.send_frames([b"mk.\x00", raw_client.encode_marks("someone-else", [["mk.x", 0, 50]])])
            assert settle("s2") == (2, 2)
            # Another epoch of which nothing arrived: its seq is a gap, and it is the epoch known now.
            pub.send_marks(b"mk.", [["mk.x", 1, 4]])
            assert settle("s3") == (6, 6)
            pub.send_frames([b"mk.x.", raw_client.encode_batch("raw-marks", 5, ["epoch 1, seq 5"], epoch=1)])
            assert _next(lib).seq == 5 and _next(raw)["seq"] == 5
            assert settle("s4") == (6, 6)  # epoch 1 continues at 5: nothing lost
            # An empty marks message is well formed and says nothing; extra elements are ignored (1).
            pub.send_marks(b"mk.", [])
            pub.send_frames([b"mk.\x00", msgpack.packb([2, "raw-marks", [["mk.x", 1, 6, "extra"]], "extra"])])
            assert settle("s5") == (7, 7)
            _quiet(lib)
            _quiet(raw)
            assert (lib.malformed, raw.malformed) == (0, 0)
        finally:
            pub.close(marks=False)
            raw.close()


def test_raw_subscriber_counts_tail_loss_from_library_marks(pair):
    """A raw subscriber that misses a library publisher's last messages learns of
    them from the marks the publisher sends (here on close())."""
    a, b = pair
    keeper = Client(b.address)  # keeps b"tail." wanted while the lossy subscriber steps away
    keep = keeper.subscribe("tail.>")
    watcher = raw_client.Subscriber(b.address, "tail.>")   # sees everything
    lossy = raw_client.Subscriber(b.address, "tail.>")     # will miss 4..6
    try:
        with Client(a.address) as client:
            _warm_up(client.publish, "tail.warm", [keep, watcher, lossy])
            for i in range(1, 4):
                assert client.publish("tail.x", i) == i
            assert [_next(lossy)["seq"] for _ in range(3)] == [1, 2, 3]
            # Step away from the messages but keep the marks: a prefix filter of b"tail.\x00"
            # admits marks on b"tail." and no topic frame (4.1); the keeper keeps b"tail." wanted.
            lossy.sock.setsockopt(zmq.SUBSCRIBE, b"tail.\x00")
            lossy.sock.setsockopt(zmq.UNSUBSCRIBE, b"tail.")
            time.sleep(0.2)
            for i in range(4, 7):
                assert client.publish("tail.x", i) == i
            client.flush()
            assert [_field(_next(keep), "seq") for _ in range(6)] == [1, 2, 3, 4, 5, 6]
            assert [_next(watcher)["seq"] for _ in range(6)] == [1, 2, 3, 4, 5, 6]
            lossy.process(0.3)
            assert lossy.gaps == 0  # nothing later on tail.x came: the loss is not visible yet
        # close() sent the marks: tail.x ended at 6 in epoch 0 (and tail.warm where it ended).
        wait_until(lambda: (lossy.process(0.1), lossy.gaps)[1], timeout=10, what="marks at the lossy subscriber")
        lossy.process(0.3)
        assert (lossy.gaps, lossy.malformed) == (3, 0)
        assert lossy.streams[(client.origin, "tail.x")] == [0, 6]
        _quiet(lossy)  # nothing of tail.x after stepping away (warm-ups still in flight are fine)
        wait_until(lambda: (watcher.process(0.1), watcher.marks)[1], timeout=10, what="marks at the watcher")
        _quiet(watcher)
        assert (watcher.gaps, watcher.malformed) == (0, 0)
        _quiet(keep)
        assert (keep.gaps, keep.malformed) == (0, 0)
    finally:
        lossy.close()
        watcher.close()
        keeper.close()


def test_a_new_epoch_counts_its_missing_first_messages(pair):
    """4.2: seq 1..3 in epoch 0, then a batch at seq 3 in epoch 1: 2 messages of epoch 1 were lost."""
    a, b = pair
    with Client(b.address) as client:
        lib = client.subscribe("ep.>")
        raw = raw_client.Subscriber(b.address, "ep.>")
        pub = raw_client.Publisher(a.address, origin="raw-epoch")
        try:
            _warm_up(pub.publish, "ep.warm", [lib, raw])

            def send(epoch, seq, *datas):
                pub.send_frames([b"ep.x.", raw_client.encode_batch("raw-epoch", seq, list(datas), epoch=epoch)])

            for seq in (1, 2, 3):
                send(0, seq, f"e0 s{seq}")
            send(1, 3, "e1 s3")
            send(1, 4, "e1 s4", "e1 s5")
            want = [(0, 1, "e0 s1"), (0, 2, "e0 s2"), (0, 3, "e0 s3"), (1, 3, "e1 s3"), (1, 4, "e1 s4"),
                    (1, 5, "e1 s5")]
            assert [(m.seq, m.data) for m in (_next(lib) for _ in want)] == [(s, d) for _, s, d in want]
            assert [(m["epoch"], m["seq"], m["data"]) for m in (_next(raw) for _ in want)] == want
            _quiet(lib)
            assert (lib.gaps, lib.malformed) == (2, 0)
            assert (raw.gaps, raw.malformed) == (2, 0)
            # Epoch 1 again at seq 7: 6 was lost. An older seq is delivered, is no gap, lowers nothing.
            send(1, 7, "e1 s7")
            send(1, 2, "e1 s2 again")
            send(1, 8, "e1 s8")
            want = [(7, "e1 s7"), (2, "e1 s2 again"), (8, "e1 s8")]
            assert [(m.seq, m.data) for m in (_next(lib) for _ in want)] == want
            assert [(m["seq"], m["data"]) for m in (_next(raw) for _ in want)] == want
            assert (lib.gaps, raw.gaps) == (3, 3)
            # Back to epoch 0 (another epoch than the one known) at seq 1: nothing lost.
            send(0, 1, "e0 again")
            assert _next(lib).data == "e0 again" and _next(raw)["data"] == "e0 again"
            assert (lib.gaps, raw.gaps) == (3, 3)
            assert raw.streams[("raw-epoch", "ep.x")] == [0, 1]
        finally:
            pub.close(marks=False)
            raw.close()


# -- the rules a raw client needs beyond frames: the sentinel, reader prefixes, restarts ---

def test_a_raw_publisher_that_publishes_at_once_reaches_the_subscribers_that_were_there(pair):
    """PROTOCOL.md 6, the sentinel: a raw publisher that waits for it loses
    none of its first messages to subscribers that were there before it."""
    a, b = pair
    with Client(a.address) as near, Client(b.address) as far:
        subs = [near.subscribe("first.>"), far.subscribe("first.>")]
        probe = raw_client.Publisher(a.address)
        assert probe.wait_for_interest("first.x", timeout=10)
        probe.close(marks=False)
        for round_ in range(10):
            pub = raw_client.Publisher(a.address, origin=f"first-{round_}")
            for i in range(30):  # at once: no wait for interest
                pub.publish("first.x", i)
            pub.close(marks=False)
            for sub in subs:
                got = [sub.get(timeout=10) for _ in range(30)]
                assert [(m.origin, m.data) for m in got] == [(f"first-{round_}", i) for i in range(30)]
        for sub in subs:
            assert_nothing_more(sub.get)


def test_a_recorder_is_announced_but_is_no_reader_to_a_raw_publisher(start_node):
    """PROTOCOL.md 6: a recorder's prefixes end inside a token; interest counts reader prefixes only."""
    a = start_node("A", "--history", "rec.>=100/60s", "--history", "one.two=100/60s")
    pub = raw_client.Publisher(a.address)
    try:
        assert b"rec.a" in pub.interest and b"one.two" in pub.interest and b"rec." not in pub.interest
        assert not pub.has_interest("rec.x") and not pub.has_interest("one.two")
        pub.publish("rec.x", "kept")  # the socket still sends it: the recorder receives
        pub.publish("one.two", "kept too")
        wait_until(lambda: a.stats()["history"]["recorded"] == 2, what="the recorder")
        with Client(a.address) as reader:
            reader.subscribe("rec.>")
            assert pub.wait_for_interest("rec.x") and not pub.has_interest("one.two")
        wait_until(lambda: not pub.has_interest("rec.x"), what="the reader's interest to go")
    finally:
        pub.close(marks=False)


def test_a_raw_client_notices_a_restart_by_the_instance_in_hello(start_node):
    """PROTOCOL.md 7.5: same control address, new instance, new data endpoints to attach to."""
    from meshtest.nodeproc import NodeProcess, free_port

    port = free_port()
    node = NodeProcess("R", port=port)
    try:
        before = raw_client.hello(node.address)
        sub = raw_client.Subscriber(node.address, "rs.>")
        node.kill()
        node = NodeProcess("R", port=port)
        after = raw_client.hello(node.address)
        assert after["member"]["instance"] != before["member"]["instance"]
        assert after["member"]["started"] > before["member"]["started"]
        sub.close()  # attach again: new sockets to the endpoints of the new hello
        sub = raw_client.Subscriber(node.address, "rs.>")
        pub = raw_client.Publisher(node.address)
        assert pub.wait_for_interest("rs.x")
        pub.publish("rs.x", "after the restart")
        assert sub.get(timeout=10)["data"] == "after the restart"
        pub.close(marks=False)
        sub.close()
    finally:
        node.kill()
