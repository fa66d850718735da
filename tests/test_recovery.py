"""Recovery from history (docs/HISTORY.md, mesh/recovery.py): a subscriber
that comes back, at any node, with its position gets what it missed, in
order, merged with live messages; or is told which streams it cannot have."""

import threading
import time

import pytest
from meshhelpers import fed_subscription, collect, warm_up
from meshtest.nodeproc import free_port, linked, start_mesh3, wait_until

from mesh import Client, Position

RULE = ("--history", "r.>=20000/300s")



@pytest.fixture
def history_mesh(start_node):
    return start_mesh3(start_node, *RULE)


def read(sub, count, timeout=20):
    return collect(sub, count, timeout)  # skips warm-up messages


def test_a_subscriber_back_at_another_node_gets_exactly_what_it_missed_then_live(history_mesh):
    a, b, c = history_mesh
    with Client(a.address) as publisher:
        with Client(b.address) as first:
            sub = first.subscribe("r.>")
            warm_up(publisher, "r.x", [sub])  # B's subscription reached A (A's recorder subscribes too)
            for i in range(100):
                publisher.publish("r.x", {"i": i})
            publisher.flush()
            assert [m.data["i"] for m in read(sub, 100)] == list(range(100))
            saved = sub.position.to_json()  # what an application would store
        for i in range(100, 5100):  # missed while away
            publisher.publish("r.x", {"i": i})
        publisher.flush()
        wait_until(lambda: a.stats()["history"]["recorded"] >= 5100, what="A to record all")
        stop = threading.Event()

        def keep_publishing():  # live messages arrive during the recovery
            i = 5100
            while not stop.is_set() and i < 8000:
                publisher.publish("r.x", {"i": i})
                i += 1
            publisher.flush()

        live = threading.Thread(target=keep_publishing)
        live.start()
        try:
            with Client(c.address) as second:
                sub = second.subscribe("r.>", since=saved)
                live.join(30)
                got = read(sub, 7900)
        finally:
            stop.set()
            live.join(10)
    assert [m.data["i"] for m in got] == list(range(100, 8000))  # in order, no gap, no duplicate
    assert sum(m.replayed for m in got) >= 5000 and all(m.replayed for m in got[:5000])
    assert sub.recovery.recovered, sub.recovery
    assert sub.recovery.streams == {(publisher.origin, "r.x"): "complete"}


def test_what_history_no_longer_holds_is_reported_not_replayed_in_part(start_node):
    a = start_node("A", "--history", "r.>=10/300s")
    with Client(a.address) as publisher, Client(a.address) as reader:
        sub = reader.subscribe("r.>")
        warm_up(publisher, "r.x", [sub])
        for i in range(5):
            publisher.publish("r.x", i)
            publisher.publish("r.y", i)
        publisher.flush()
        read(sub, 10)
        position = sub.position
        sub.unsubscribe()
        for i in range(5, 55):  # r.x: 50 missed, 10 kept
            publisher.publish("r.x", i)
        publisher.publish("r.y", 5)  # r.y: 1 missed, kept
        publisher.flush()
        wait_until(lambda: a.stats()["history"]["recorded"] >= 61, what="A to record")
        again = reader.subscribe("r.>", since=position)
        recovery = again.recovery
        assert not recovery.recovered
        assert recovery.streams == {(publisher.origin, "r.x"): "evicted", (publisher.origin, "r.y"): "complete"}
        replayed = read(again, 1)
        assert [(m.subject, m.data, m.replayed) for m in replayed] == [("r.y", 5, True)]  # none of r.x
        publisher.publish("r.x", "live")
        assert again.get(10).data == "live"


def test_streams_of_a_node_that_died_are_reported(history_mesh, start_node):
    a, b, c = history_mesh
    with Client(a.address) as publisher, Client(b.address) as reader:
        sub = reader.subscribe("r.>")
        warm_up(publisher, "r.x", [sub])
        publisher.publish("r.x", 1)
        publisher.flush()
        read(sub, 1)
        position = sub.position
        a.kill()
    wait_until(lambda: "A" not in c.peer_names(), timeout=15, what="C to drop A")
    with Client(c.address) as again:
        recovery = again.subscribe("r.>", since=position).recovery
    assert not recovery.recovered
    assert recovery.streams == {(publisher.origin, "r.x"): "unknown"}


def test_bad_positions_are_clear_errors(start_node):
    a = start_node("A", *RULE)
    with Client(a.address) as client:
        for text in ("garbage", "{}", '{"t": "x", "s": []}', '{"t": 1, "s": [["o", "r.x", -1, 2]]}'):
            with pytest.raises(ValueError):
                client.subscribe("r.>", since=text)
        for bad in (0, -1, "1", True):
            with pytest.raises(ValueError, match="history_timeout"):
                client.subscribe("r.>", since=Position({}, 1.0), history_timeout=bad)
        huge = Position({(f"o{i}", "r.x"): (0, 1) for i in range(2000)}, 1.0)
        recovery = client.subscribe("r.>", since=huge).recovery
        assert not recovery.recovered and "at most 1000" in recovery.problems[0]
        assert Position.from_json(huge.to_json()).streams == huge.streams


def test_meshnode_sub_keeps_its_position_in_a_file_and_recovers_from_it(start_node, tmp_path):
    import json
    import subprocess
    import sys

    from meshtest.nodeproc import MESHNODE

    a = start_node("A", *RULE)
    position_file = str(tmp_path / "position.json")
    command = [sys.executable, MESHNODE, "sub", "r.>", "--node", a.address, "--position-file", position_file]
    with Client(a.address) as publisher:
        first = subprocess.Popen(command + ["--count", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        i = 0
        try:
            while first.poll() is None and i < 400:  # until it has its 3 messages
                publisher.publish("r.x", {"i": i})
                publisher.flush()
                i += 1
                threading.Event().wait(0.05)
            out, _ = first.communicate(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        seen = [json.loads(line)["data"]["i"] for line in out.splitlines()]
        assert len(seen) == 3 and seen == list(range(seen[0], seen[0] + 3))
        for j in range(i, i + 10):
            publisher.publish("r.x", {"i": j})
        publisher.flush()
        wait_until(lambda: a.stats()["history"]["recorded"] >= i + 10, what="A to record")
    second = subprocess.run(command + ["--count", "5"], capture_output=True, text=True, timeout=30)
    assert [json.loads(line)["data"]["i"] for line in second.stdout.splitlines()] == \
        list(range(seen[-1] + 1, seen[-1] + 6))
    assert "recovered: " in second.stderr and "NOT" not in second.stderr
    with open(position_file) as f:
        saved = f.read()
    third = subprocess.run([*command[:-2], "--since", saved, "--count", "1", "--timeout", "2"], capture_output=True,
                           text=True, timeout=30)
    assert [json.loads(line)["data"]["i"] for line in third.stdout.splitlines()] == [seen[-1] + 6]
    bad = subprocess.run([*command[:-2], "--since", "nonsense"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "a position is JSON" in bad.stderr


def test_a_replay_that_does_not_meet_live_delivery_is_a_gap():
    """The merge rule on its own: history up to seq 3, live from seq 6."""
    from mesh.envelope import Message
    from mesh.recovery import Recovery, _check_streams
    from mesh.subjects import Pattern

    key = ("o", "r.x")
    found = {key: {(0, s): Message("r.x", s, "o", s, 0.0, 0, True) for s in (2, 3)}}
    for live_from, want in ((6, "gap"), (4, "complete"), (3, "complete")):
        recovery = Recovery()
        held = [Message("r.x", s, "o", s, 0.0, 0) for s in range(live_from, 8)]
        replayed, reach = _check_streams(Pattern("r.>"), {key: (0, 1)}, found, {key: "complete"}, held, recovery)
        assert recovery.streams == {key: want}, live_from
        assert (reach, len(replayed)) == (({key: (0, 3)}, 2) if want == "complete" else ({}, 0))
    recovery = Recovery()
    _check_streams(Pattern("r.>"), {key: (0, 0)}, found, {key: "complete"}, [], recovery)
    assert recovery.streams == {key: "gap"}  # seq 1 is missing


def test_copies_on_several_nodes_merge_into_one_stream():
    """The merge of copies (--history-replicas) on its own: pages of one
    stream from two nodes, as the history command gives them (partial: what is
    left of an evicted stream too). One node evicted, the other kept it all:
    complete, each message once. Both evicted, neither kept what the other
    lost: evicted. For a stream the position does not name (each node sends
    what was published since its time): complete when a copy holds the newest
    message the other evicted, else evicted."""
    from mesh.recovery import Recovery, _check_streams, _merge
    from mesh.subjects import Pattern

    key = ("o", "r.x")

    def page(seqs, evicted_to=None):
        return {"messages": [["r.x", "o", 0, s, 0.0, s] for s in seqs], "next": None,
                "streams": [["o", "r.x", "complete" if evicted_to is None else "evicted"]],
                "evicted": [] if evicted_to is None else [["o", "r.x", 0, evicted_to]]}

    def recover(named, *pages):
        found, states, recovery = {}, {}, Recovery()
        for reply in pages:
            _merge(reply, found, states, recovery)
        replayed, _ = _check_streams(Pattern("r.>"), named, found, states, [], recovery)
        return recovery.streams[key], [m.seq for m in replayed]

    position = {key: (0, 5)}
    whole = list(range(6, 101))
    assert recover(position, page(range(46, 101), 45), page(whole)) == ("complete", whole)
    assert recover(position, page(whole), page(range(46, 101), 45)) == ("complete", whole)  # in either order
    assert recover(position, page(range(46, 101), 45), page(range(21, 101), 20)) == ("evicted", [])
    assert recover({}, page(range(21, 101), 20)) == ("evicted", [])  # the position does not name it
    assert recover({}, page(range(21, 101), 20), page(range(1, 101))) == ("complete", list(range(1, 101)))
    assert recover({}, page(range(21, 101), 20), page(range(31, 101), 30)) == ("evicted", [])
    assert recover({}, page(range(31, 101), 30), page(range(21, 101))) == ("complete", list(range(21, 101)))


def test_a_subscriber_whose_node_restarts_recovers_what_was_published_meanwhile(start_node):
    """recover=True: after the reconnect, what the publisher's node recorded
    while this node was down is replayed: nothing missed, no gaps."""
    port = free_port()
    a = start_node("A", *RULE)
    b = start_node("B", "--port", str(port), *RULE, peers=[a])
    wait_until(lambda: a.peer_names() == ["B"], what="link")
    with Client(a.address) as publisher, Client(b.address) as reader:
        sub = reader.subscribe("r.>", recover=True)
        warm_up(publisher, "r.x", [sub])
        for i in range(10):
            publisher.publish("r.x", {"i": i})
        publisher.flush()
        assert [m.data["i"] for m in read(sub, 10)] == list(range(10))
        b.kill()
        wait_until(lambda: not reader.connected, timeout=10, what="the reader to notice")
        for i in range(10, 510):  # recorded at A while B is down
            publisher.publish("r.x", {"i": i})
        publisher.flush()
        start_node("B", "--port", str(port), *RULE, "--peer", a.address)
        wait_until(lambda: reader.connected and reader.reconnects == 1, timeout=15, what="the reconnect")
        wait_until(lambda: sub.recovery is not None, timeout=15, what="the recovery")
        for i in range(510, 520):
            publisher.publish("r.x", {"i": i})
        publisher.flush()
        got = [m.data["i"] for m in read(sub, 510)]
    assert got == list(range(10, 520))
    assert sub.recovery.recovered, sub.recovery
    assert sub.gaps == 0


def test_live_copies_of_replayed_messages_are_not_delivered_twice():
    """A replay goes first; the same messages may still come live behind it."""
    from mesh.envelope import Message

    sub = fed_subscription(1000)
    key = ("o", "r.x")
    sub.accept(key, 0, 100, [Message("r.x", 100, "o", 100, 0.0)], 1.0)
    sub.begin_hold()
    sub.end_hold([Message("r.x", s, "o", s, 0.0, 0, True) for s in range(101, 106)], lambda m: True)
    live = [Message("r.x", s, "o", s, 0.0) for s in range(104, 108)]
    sub.accept(key, 0, 104, live, 2.0)
    assert [m.seq for m in sub.inbox] == [100, 101, 102, 103, 104, 105, 106, 107]
    assert sub.gaps == 0


def test_evicted_streams_are_named_and_what_they_lost_is_counted_also_by_the_cli(start_node):
    """A stream the position does not name, evicted since its time, is named
    (not left out); a named stream history evicted counts what it lost in
    gaps: the evicted part at once, the rest when live delivery resumes."""
    import json
    import subprocess
    import sys

    from meshtest.nodeproc import MESHNODE

    a = start_node("A", "--history", "r.keep.>=1000/300s", "--history", "r.>=10/300s")
    with Client(a.address) as publisher, Client(a.address) as reader:
        sub = reader.subscribe("r.>")
        warm_up(publisher, "r.x", [sub])
        for i in range(5):
            publisher.publish("r.named", i)
        publisher.flush()
        read(sub, 5)
        position = sub.position
        sub.unsubscribe()
        for i in range(5, 55):  # r.named: 50 missed, the last 10 kept, 40 evicted
            publisher.publish("r.named", i)
        for i in range(30):  # a stream the position does not name: 20 evicted
            publisher.publish("r.ev", i)
        for i in range(750):  # kept whole
            publisher.publish("r.keep.a", i)
        publisher.flush()
        wait_until(lambda: a.stats()["history"]["recorded"] >= 835, what="A to record")
        again = reader.subscribe("r.>", since=position)
        recovery = again.recovery
        assert not recovery.recovered, recovery
        assert recovery.streams == {(publisher.origin, "r.named"): "evicted", (publisher.origin, "r.ev"): "evicted",
                                    (publisher.origin, "r.keep.a"): "complete", (publisher.origin, "r.x"): "complete"}
        assert recovery.replayed == 750
        assert recovery.lost == 40 and again.gaps == 40  # seq 6 to 45 of r.named are gone from history
        assert [m.data for m in read(again, 750)] == list(range(750))
        publisher.publish("r.named", 55)  # live again: 46 to 55 were in history but not replayed (all or nothing)
        publisher.flush()
        assert again.get(10).data == 55
        assert again.gaps == 50  # received 1 + gaps 50 = the 51 sent after the position
    cli = subprocess.run([sys.executable, MESHNODE, "sub", "r.>", "--node", a.address, "--since", position.to_json(),
                          "--count", "750", "--timeout", "5"], capture_output=True, text=True, timeout=60)
    assert [json.loads(line)["data"] for line in cli.stdout.splitlines()] == list(range(750))
    assert "NOT fully recovered: 750 messages replayed" in cli.stderr, cli.stderr
    assert f"'r.ev from {publisher.origin}': 'evicted'" in cli.stderr
    assert f"'r.named from {publisher.origin}': 'evicted'" in cli.stderr
    assert "41 messages known lost" in cli.stderr  # seq 6 to 46: the live one pushed one more out


def test_live_messages_never_pass_the_replay_at_the_hand_over():
    """The hand-over on its own, driven into the race: a live batch that
    arrives while the replay is being queued waits for it, then follows it,
    counted from where the replay ended (no gap)."""
    from mesh.envelope import Message

    sub = fed_subscription()
    key = ("o", "r.x")
    sub.accept(key, 0, 1, [Message("r.x", 1, "o", 1, 0.0)], 1.0)
    assert sub.begin_hold().streams == {key: (0, 1)}
    sub.accept(key, 0, 8, [Message("r.x", s, "o", s, 0.0) for s in (8, 9)], 1.0)  # held
    arrivals = []

    def keep_live(message):  # runs inside the hand-over: a live batch arrives right now
        if not arrivals:
            arrivals.append(threading.Thread(
                target=sub.accept, args=(key, 0, 10, [Message("r.x", 10, "o", 10, 0.0)], 1.0)))
            arrivals[0].start()
            arrivals[0].join(0.2)  # it must wait for the hand-over (on the old code it went first)
        return True

    sub.end_hold([Message("r.x", s, "o", s, 0.0, 0, True) for s in range(2, 8)], keep_live, {key: (0, 1)})
    arrivals[0].join(10)
    assert [m.seq for m in sub.inbox] == list(range(1, 11))
    assert sub.gaps == 0


def test_what_history_evicted_is_counted_once_even_if_a_live_copy_comes_late():
    """Nothing of a stream was delivered and history evicted up to seq 45
    after the reader's 5: 40 counted at the hand-over; a live copy of 44 or
    45 still in flight is not delivered (it is counted), 46 on is."""
    from mesh.envelope import Message

    sub = fed_subscription()
    key = ("o", "r.x")
    sub.begin_hold()
    assert sub.end_hold([], lambda m: True, {key: (0, 5)}, {key: (0, 45)}) == 40
    sub.accept(key, 0, 44, [Message("r.x", s, "o", s, 0.0) for s in (44, 45, 46, 47)], 1.0)
    assert [m.seq for m in sub.inbox] == [46, 47]
    assert sub.gaps == 40  # received 2 + gaps 40 = the 42 sent after seq 5


def test_the_hand_over_is_atomic_when_raced_200_times():
    """A live thread keeps delivering while the replay is handed over, 200
    times with a thread switch forced every microsecond: every message once,
    in order, and no gap counted."""
    import sys

    from mesh.envelope import Message

    key = ("o", "r.x")
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    failures = []
    try:
        for run in range(200):
            sub = fed_subscription()
            sub.accept(key, 0, 1, [Message("r.x", 1, "o", 1, 0.0)], 1.0)
            sub.begin_hold()

            def live():
                for seq in range(101, 201):
                    sub.accept(key, 0, seq, [Message("r.x", seq, "o", seq, 0.0)], 1.0)

            thread = threading.Thread(target=live)
            thread.start()  # history holds 2..100; live begins at 101
            sub.end_hold([Message("r.x", s, "o", s, 0.0, 0, True) for s in range(2, 101)], lambda m: True,
                         {key: (0, 1)})
            thread.join(10)
            seqs = [m.seq for m in sub.inbox]
            if seqs != list(range(1, 201)) or sub.gaps:
                failures.append((run, sub.gaps, [s for i, s in enumerate(seqs) if s != i + 1][:5]))
    finally:
        sys.setswitchinterval(interval)
    assert not failures, f"{len(failures)} of 200 runs: (run, gaps, first misplaced) {failures[:5]}"


def test_a_node_restarted_under_live_traffic_replays_before_live_every_time(start_node):
    """recover=True, about 1,500 msg/s on each of two subjects, the
    subscriber's node killed and restarted four times while its reader waits
    in get() (threads switch every 10 us, so the reader runs during the
    hand-over): each stream arrives in order without a duplicate, and no gap
    is counted."""
    import sys

    port = free_port()
    a = start_node("A", *RULE)
    b = start_node("B", "--port", str(port), *RULE, peers=[a])
    wait_until(lambda: a.peer_names() == ["B"], what="link")
    got, stop = {"r.a": [], "r.b": []}, threading.Event()
    with Client(a.address) as publisher, Client(b.address) as reader:
        sub = reader.subscribe("r.>", recover=True)
        warm_up(publisher, "r.x", [sub])

        def publish():
            i = 0
            while not stop.is_set():
                for subject in got:
                    publisher.publish(subject, i)
                i += 1
                time.sleep(0.0005)
            publisher.flush()

        def consume():
            while not stop.is_set() or sub.pending:
                try:
                    message = sub.get(0.2)
                except TimeoutError:
                    continue
                if message.subject in got:
                    got[message.subject].append(message.data)

        threads = [threading.Thread(target=publish), threading.Thread(target=consume)]
        for thread in threads:
            thread.start()
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)
        try:
            for restart in range(1, 5):
                time.sleep(1.0)
                b.kill()
                wait_until(lambda: not reader.connected, timeout=10, what="the reader to notice")
                b = start_node("B", "--port", str(port), *RULE, "--peer", a.address)
                wait_until(lambda: reader.connected and reader.reconnects == restart, timeout=15,
                           what="the reconnect")
                wait_until(lambda: sub.recovery is not None and not sub.holding, timeout=15, what="the recovery")
                assert sub.recovery.recovered, sub.recovery
            time.sleep(1.0)
        finally:
            sys.setswitchinterval(interval)
            stop.set()
            for thread in threads:
                thread.join(15)
    for subject, values in got.items():
        assert values == list(range(values[0], values[0] + len(values))), \
            f"{subject}: out of order or repeated at {[v for i, v in enumerate(values) if v != values[0] + i][:5]}"
    assert sub.gaps == 0


def test_a_dead_node_still_listed_is_asked_once_briefly_and_its_streams_named(start_node):
    """kill -9 of two nodes (one holds history of a stream the reader needs)
    while membership still lists them: the recovery at a third node asks
    every node at once, gives each 1 s (not the client's 20 s timeout),
    names both and the stream it could not check, and recovers the rest.
    Once membership has dropped them they are not asked at all."""
    a = start_node("A", *RULE)
    b = start_node("B", *RULE, peers=[a])
    c = start_node("C", *RULE, peers=[a, b])
    d = start_node("D", peers=[a, b, c])
    wait_until(lambda: linked(a, b, c, d), what="four linked nodes")
    with Client(a.address) as at_a, Client(b.address) as at_b, Client(c.address, timeout=20) as reader:
        sub = reader.subscribe("r.>")
        warm_up(at_a, "r.a", [sub])
        warm_up(at_b, "r.b", [sub])
        for client, subject in ((at_a, "r.a"), (at_b, "r.b")):
            client.publish(subject, "seen")
            client.flush()
        read(sub, 2)
        position = sub.position
        sub.unsubscribe()
        for client, subject in ((at_a, "r.a"), (at_b, "r.b")):
            for i in range(100):
                client.publish(subject, i)
            client.flush()
        for node in (a, b):
            wait_until(lambda: node.stats()["history"]["recorded"] >= 102, what="the records")
        a.kill()
        d.kill()
        assert {"A", "D"} <= set(c.peer_names())  # still listed (dropped after 5 s unheard)
        started = time.monotonic()
        again = reader.subscribe("r.>", since=position)
        elapsed = time.monotonic() - started
        recovery = again.recovery
        assert not recovery.recovered
        assert recovery.streams == {(at_a.origin, "r.a"): "unreachable", (at_b.origin, "r.b"): "complete"}
        assert sorted(entry.split(":")[0] for entry in recovery.unreachable) == ["A", "D"]
        assert all("within 1.0 s" in entry for entry in recovery.unreachable), recovery.unreachable
        assert [m.data for m in read(again, 100)] == list(range(100))
        assert elapsed < 10, elapsed  # the old walk waited 20 s for each dead node in turn
        wait_until(lambda: not {"A", "D"} & set(c.peer_names()), timeout=15, what="C to drop A and D")
        recovery = reader.subscribe("r.>", since=position).recovery
        assert recovery.unreachable == []  # membership dropped them: not asked
        assert recovery.streams == {(at_a.origin, "r.a"): "unknown", (at_b.origin, "r.b"): "complete"}
