"""Per-entity subjects: stream state bounded in time, marks that do not double
sparse traffic, tail loss still counted (docs/PROTOCOL.md 4.3, 4.5)."""

import itertools
import json
import subprocess
import sys
import time
import urllib.request

from edgehelpers import WS, http_address
from meshhelpers import collect, drain, fed_subscription, warm_up
from meshtest.nodeproc import ROOT, wait_until

from mesh import Client


def expected_gaps(received, published_per_subject):
    """What the subscriber should count missing: per stream it saw, everything
    from its first received sequence number to the last published one."""
    first, count = {}, {}
    for message in received:
        first.setdefault(message.subject, message.seq)
        count[message.subject] = count.get(message.subject, 0) + 1
    return sum(published_per_subject - first[s] + 1 - count[s] for s in first)


def test_tail_loss_on_many_subjects_is_counted_through_shared_marks(start_node):
    a = start_node("A", "--hwm", "20")
    with Client(a.address, hwm=20) as pub, Client(a.address, hwm=20) as sc:
        sub = sc.subscribe("t.>")
        warm_up(pub, "t.warm", [sub])
        for rnd in range(20):  # 500 streams, 20 messages each, 1 KB: far more than the queues hold
            for i in range(500):
                pub.publish(f"t.{i}", b"x" * 1000)
        got = [m for m in drain(sub) if m.subject != "t.warm"]
        wait_until(lambda: not drain(sub, quiet=1.5), timeout=10, what="the marks")
        assert 0 < len(got) < 500 * 20, "expected the tiny queues to drop messages"
        lost_tails = sum(1 for s in {m.subject for m in got}
                         if max(m.seq for m in got if m.subject == s) < 20)
        assert lost_tails > 0, "no stream lost its last message: the test shows nothing"
        assert sub.gaps == expected_gaps(got, 20)
        assert pub.counters()["mark_messages"] < 10  # one shared marks message, not one per stream


def test_sparse_per_entity_traffic_adds_few_wire_messages(start_node):
    a = start_node("A")
    b = start_node("B", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"], what="link")
    with Client(a.address) as pub, Client(b.address) as sc:
        sub = sc.subscribe("u.>")
        warm_up(pub, "u.warm", [sub])
        before = b.stats()["messages"]["from_peers"]
        for i in range(10_000):
            pub.publish(f"u.{i}.notify", i)
        time.sleep(1.5)  # the marks go out about a second after the burst
        for i in range(10_000):  # a second message per stream: now marks could count something
            pub.publish(f"u.{i}.notify", i)
        got = collect(sub, 20_000, timeout=30)
        wait_until(lambda: pub.counters()["mark_messages"] >= 2, timeout=5, what="two rounds of marks")
        crossed = b.stats()["messages"]["from_peers"] - before
        assert len(got) == 20_000 and sub.gaps == 0
        assert crossed <= 20_000 * 1.10, f"{crossed} wire messages for 20,000 published"


def test_idle_streams_are_forgotten_on_both_ends_and_come_back_in_a_new_epoch(start_node):
    a = start_node("A")
    with Client(a.address, stream_idle=1) as pub, Client(a.address, stream_idle=1) as sc:
        sub = sc.subscribe("e.>")
        warm_up(pub, "e.warm", [sub])
        for i in range(2000):
            pub.publish(f"e.{i}", i)
        collect(sub, 2000)
        assert pub.counters()["streams"] >= 2000 and sub.streams >= 2000
        wait_until(lambda: pub.counters()["streams"] == 0, timeout=10, what="the publisher to forget")
        time.sleep(1.0)
        pub.publish("e.0", "again")  # a stream forgotten at both ends starts over
        message = collect(sub, 1)[0]
        assert (message.data, message.seq) == ("again", 1)
        assert sub.streams == 1, "the subscriber still holds forgotten streams"
        assert sub.gaps == 0

    # A subscriber that still remembers the stream sees the new epoch begin at 1: no loss.
    with Client(a.address, stream_idle=1) as pub, Client(a.address) as sc:
        sub = sc.subscribe("f.x")
        warm_up(pub, "f.x", [sub])
        pub.publish("f.x", "before")
        collect(sub, 1)
        wait_until(lambda: pub.counters()["streams_forgotten"] > 0, timeout=10, what="the publisher to forget")
        pub.publish("f.x", "after")
        assert [(m.data, m.seq) for m in collect(sub, 1)] == [("after", 1)]
        assert sub.gaps == 0


ROUNDS_PROGRAM = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from mesh import Client

def report(**fields):
    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
    print(json.dumps({"rss": rss, "blocks": sys.getallocatedblocks(), **fields}), flush=True)

client = Client(sys.argv[2], stream_idle=1)
if sys.argv[3] == "sub":
    sub = client.subscribe("r.>")
    print(json.dumps("ready"), flush=True)
    count = 0
    while True:
        for message in sub.take(timeout=60):
            if message.subject == "r.tock":  # sent once both ends should have forgotten the round
                report(streams=sub.streams, gaps=sub.gaps, dropped=sub.dropped)
                count = 0
            else:
                count += 1
                if count == 200_000:
                    print(json.dumps("drained"), flush=True)
else:
    while not client.has_interest("r.x"):
        time.sleep(0.01)
    for rnd in range(3):
        sys.stdin.readline()
        for i in range(200_000):
            client.publish(f"r.{rnd}.{i}", i)
        client.flush()
        sys.stdin.readline()
        client.publish("r.tock", rnd)  # the subscriber sweeps when something arrives
        client.flush()
        report(streams=client.counters()["streams"])
"""


def test_three_rounds_of_200000_new_subjects_do_not_grow_publisher_or_subscriber(start_node):
    a = start_node("A")
    b = start_node("B", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"], what="link")
    sub = subprocess.Popen([sys.executable, "-c", ROUNDS_PROGRAM, ROOT, b.address, "sub"],
                           stdout=subprocess.PIPE, text=True)
    pub = None
    rounds = []
    try:
        assert json.loads(sub.stdout.readline()) == "ready"
        pub = subprocess.Popen([sys.executable, "-c", ROUNDS_PROGRAM, ROOT, a.address, "pub"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(3):
            pub.stdin.write("round\n")
            pub.stdin.flush()
            assert json.loads(sub.stdout.readline()) == "drained"
            time.sleep(2.5)  # longer than stream_idle, and than the marks' second
            pub.stdin.write("tock\n")
            pub.stdin.flush()
            rounds.append((json.loads(pub.stdout.readline()), json.loads(sub.stdout.readline())))
        assert pub.wait(60) == 0
    finally:
        for proc in (pub, sub):
            if proc is not None:
                proc.kill()
                proc.wait()
    assert all(p["streams"] <= 1 and s["streams"] <= 1 for p, s in rounds), rounds  # not 200,000
    assert all(s["gaps"] == s["dropped"] == 0 for _, s in rounds), rounds
    # Python objects: 200,000 remembered streams are over a million blocks.
    # Resident memory: before bounded stream state each round grew both sides
    # by 50-80 MiB; what still varies is libzmq's buffers for the backlog of a
    # subscriber that lags (tens of MiB, given back to the allocator).
    for side in (0, 1):
        blocks = [r[side]["blocks"] for r in rounds]
        assert blocks[2] - blocks[0] < 50_000, (["pub", "sub"][side], rounds)
        sizes = [r[side]["rss"] for r in rounds]
        assert sizes[2] - sizes[0] < 60, (["pub", "sub"][side], rounds)


def test_an_edge_forgets_idle_streams_of_a_wide_subscription(start_node):
    a = start_node("A")
    e = start_node("E", "--http", "0", "--stream-idle", "1", peers=[a])
    wait_until(lambda: a.peer_names() == ["E"], what="link")
    ws = WS(f"ws://{http_address(e)}/ws")
    try:
        assert ws.request("sub", subject="ent.>")["op"] == "ok"
        stats_url = f"http://{http_address(e)}/stats"
        with Client(a.address) as pub:
            wait_until(lambda: pub.has_interest("ent.x"), what="the edge's interest")
            for i in range(3000):
                pub.publish(f"ent.{i}", i)
            assert len(ws.messages(3000, timeout=30)) == 3000
            assert _stats(stats_url)["streams"] >= 3000
            time.sleep(2.5)
            pub.publish("ent.again", 1)
            ws.messages(1)
            assert _stats(stats_url)["streams"] <= 2  # "ent.again" and maybe one swept late
    finally:
        ws.close()


def _stats(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_a_stream_back_after_being_forgotten_has_its_loss_counted():
    """A cut longer than stream_idle while other streams keep arriving: the
    subscription forgets the cut stream, and when it comes back in the same
    epoch, what was lost meanwhile is counted (received + gaps = sent), by
    its next batch or by its next mark. A stream forgotten at both ends (a
    new epoch from 1) loses nothing; past MAX_FORGOTTEN_STREAMS the oldest
    forgotten are no longer known."""
    from mesh.envelope import Message
    from mesh.subscription import MAX_FORGOTTEN_STREAMS

    sub = fed_subscription(pattern=">", stream_idle=1.0)
    start = time.monotonic()  # ``now`` below counts seconds from here

    def feed(origin, subject, epoch, seq, count, now):
        batch = Message.numbered(subject, list(range(count)), origin, seq, 0.0, epoch)
        sub.accept((origin, subject), epoch, seq, batch, start + now)

    live = itertools.count(1)  # a stream that keeps coming, once a second: the others are forgotten
    feed("cut", "s", 1, 1, 10, now=0.0)  # 1..10 arrive
    feed("mark", "s", 1, 1, 5, now=0.0)
    for second in range(1, 6):
        feed("live", "s", 1, next(live), 1, now=float(second))
    assert sub.streams == 1 and sub.gaps == 0
    feed("cut", "s", 1, 31, 5, now=6.0)  # 11..30 were lost in the cut
    assert sub.gaps == 20
    sub.apply_mark(("mark", "s"), 1, 12, start + 6.0)  # its publisher sent up to 12: 6..12 never came
    assert sub.gaps == 27
    assert sub.received + len(sub.inbox) - 5 == 10 + 5 + 5  # nothing delivered twice or dropped

    feed("new", "s", 1, 1, 3, now=7.0)
    for second in range(8, 12):
        feed("live", "s", 1, next(live), 1, now=float(second))
    feed("new", "s", 2, 1, 2, now=12.0)  # forgotten by its publisher too: a new epoch from 1, nothing lost
    assert sub.gaps == 27

    for i in range(MAX_FORGOTTEN_STREAMS + 1):  # one stream more than is kept
        feed(f"many{i}", "s", 1, 1, 1, now=13.0)
    for second in range(14, 18):
        feed("live", "s", 1, next(live), 1, now=float(second))
    feed("many0", "s", 1, 5, 1, now=18.0)  # the oldest forgotten: a stream never seen, its baseline
    feed("many1", "s", 1, 5, 1, now=18.0)  # still kept: 2..4 lost
    assert sub.gaps == 27 + 3
