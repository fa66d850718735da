"""Tail loss behind a full queue is counted (docs/PROTOCOL.md 4.3): a reader
that pauses while a burst goes by loses most of it in full queues, the marks
that went by with it too, and still learns every missing number within about
a second of draining, whether its publisher lives on or has closed."""

import json
import subprocess
import sys
import time

import pytest

from meshhelpers import collect, drain, warm_up
from meshtest.nodeproc import ROOT, free_port, wait_until

from mesh import Client

PUBLISHER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from mesh import Client

count, idle = int(sys.argv[3]), float(sys.argv[4])
client = Client(sys.argv[2])
if not client.wait_for_interest("tail.x", 10):
    sys.exit("no interest")
print(json.dumps("ready"), flush=True)
sys.stdin.readline()
payload = "x" * 1000  # 30 MB in all: more than the queues and socket buffers on the way hold
for _ in range(count):
    client.publish("tail.x", payload)
client.flush()
print(json.dumps(count), flush=True)
time.sleep(idle)
client.close()
print(json.dumps("closed"), flush=True)
"""

SENT = 30_000
PAUSE = 3.5  # not a whole number of seconds: marks rounds come every second from the burst on


def run_paused_reader(a, b, idle, pending_limit=None):
    """A publisher process at A sends SENT messages, idles ``idle`` s and
    closes; a subscriber at B (queues of 50) reads nothing until PAUSE s
    after the burst, then reads until everything is accounted for. Returns its counts and how long
    it took to account for everything, from the end of the pause and from
    its last message."""
    with Client(b.address, hwm=50, **({} if pending_limit is None else {"pending_limit": pending_limit})) as sc:
        sub = sc.subscribe("tail.>")
        pub = subprocess.Popen([sys.executable, "-c", PUBLISHER, ROOT, a.address, str(SENT), str(idle)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert json.loads(pub.stdout.readline()) == "ready"
            pub.stdin.write("go\n")
            pub.stdin.flush()
            sent = json.loads(pub.stdout.readline())
            time.sleep(PAUSE)  # the reader calls nothing: queues fill, the rest is dropped
            resumed = last = time.monotonic()
            seqs = []

            def accounted():
                nonlocal last
                try:
                    while True:
                        seqs.append(sub.get(timeout=0.02).seq)
                        last = time.monotonic()
                except TimeoutError:
                    pass
                return sub.received + sub.gaps + sub.dropped >= sent

            deadline = time.monotonic() + PAUSE + idle + 10
            while not accounted() and time.monotonic() < deadline:
                pass
            learned = time.monotonic()
            time.sleep(1.5)  # repeated marks change nothing more
            accounted()
            assert json.loads(pub.stdout.readline()) == "closed"
            assert pub.wait(10) == 0
        finally:
            pub.kill()
            pub.wait()
        assert seqs == sorted(set(seqs)), "out of order or twice"
        counts = {"sent": sent, "received": sub.received, "gaps": sub.gaps, "dropped": sub.dropped,
                  "after_pause": round(learned - resumed, 2), "after_last_message": round(learned - last, 2)}
        print("tail loss behind a full queue:", counts)
        assert sub.received + sub.gaps + sub.dropped == sent, counts
        assert sub.received < sent, "nothing was lost: the queues did not fill, the test shows nothing"
        return counts


@pytest.mark.parametrize("idle", [0.0, 6.0], ids=["closes-at-once", "idles-6s-then-closes"])
def test_a_paused_reader_learns_the_tail_it_lost_even_after_its_publisher_closed(start_node, idle):
    a = start_node("A")
    b = start_node("B", "--hwm", "50", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"] and b.linked_names() == ["A"], what="link")
    run_paused_reader(a, b, idle)


def test_what_the_subscription_had_no_room_for_is_dropped_not_also_a_gap(start_node):
    a = start_node("A")
    b = start_node("B", "--hwm", "50", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"] and b.linked_names() == ["A"], what="link")
    counts = run_paused_reader(a, b, 0.0, pending_limit=20)
    assert counts["dropped"] > 0, "the subscription's own queue never overflowed: the test shows nothing"


def test_a_node_repeats_the_marks_a_closing_raw_publisher_hands_it(start_node):
    """Written from docs/PROTOCOL.md alone (tests/raw_client.py): a raw
    publisher whose last five messages were lost hands its node the end of
    its stream and closes without marks; the node repeats them, under the
    publisher's origin, for the seconds asked, and counting them twice
    changes nothing."""
    import raw_client

    a = start_node("A")
    sub = raw_client.Subscriber(a.address, "raw.>")
    pub = raw_client.Publisher(a.address)
    try:
        assert pub.wait_for_interest("raw.t")
        for i in range(10):
            pub.publish("raw.t", i)
        assert [sub.get()["seq"] for _ in range(10)] == list(range(1, 11))
        reply = raw_client.request(a.address, "marks", origin=pub.origin, streams=[["raw.t", 0, 15]], seconds=3)
        assert reply["ok"] and reply["kept"] == 1, reply
        pub.close(marks=False)
        wait_until(lambda: sub.process(0.2) is not None and sub.marks >= 2, timeout=10, what="two rounds of marks")
        assert sub.gaps == 5 and sub.received == 10
        wait_until(lambda: raw_client.request(a.address, "stats")["marks"]["origins"] == 0, timeout=10,
                   what="the node to stop repeating after 3 s")
        marks = raw_client.request(a.address, "stats")["marks"]
        assert marks["handed_over"] == 1 and marks["messages"] >= 2 and marks["streams"] == 0, marks
    finally:
        sub.close()


BAD_MARKS = [
    ({"streams": [["a", 0, 1]], "seconds": 1}, "origin"),
    ({"origin": "", "streams": [["a", 0, 1]], "seconds": 1}, "origin"),
    ({"origin": "o", "streams": "a", "seconds": 1}, "streams"),
    ({"origin": "o", "streams": [["a", 0, 1]] * 1001, "seconds": 1}, "streams"),
    ({"origin": "o", "streams": [["a", 0, 0]], "seconds": 1}, "stream"),
    ({"origin": "o", "streams": [["a", -1, 1]], "seconds": 1}, "stream"),
    ({"origin": "o", "streams": [["a", True, 1]], "seconds": 1}, "stream"),
    ({"origin": "o", "streams": [["a", 0]], "seconds": 1}, "stream"),
    ({"origin": "o", "streams": [["a", 0, 1], "a"], "seconds": 1}, "stream"),
    ({"origin": "o", "streams": [["a.*", 0, 1]], "seconds": 1}, "wildcard"),
    ({"origin": "o", "streams": [["a..b", 0, 1]], "seconds": 1}, "subject"),
    ({"origin": "o", "streams": [["a", 0, 1]]}, "seconds"),
    ({"origin": "o", "streams": [["a", 0, 1]], "seconds": 0}, "seconds"),
    ({"origin": "o", "streams": [["a", 0, 1]], "seconds": "1"}, "seconds"),
]


def test_marks_with_bad_fields_are_refused_and_nothing_is_kept(start_node):
    import raw_client

    a = start_node("A")
    for fields, says in BAD_MARKS:
        reply = raw_client.request(a.address, "marks", **fields)
        assert reply.get("error") == "bad_request" and says in reply["message"], (fields, reply)
    assert raw_client.request(a.address, "stats")["marks"]["streams"] == 0
    assert raw_client.request(a.address, "ping")["ok"]


def test_a_subscriber_back_from_its_node_restart_learns_what_a_quiet_stream_sent_meanwhile(start_node):
    """No later message is needed: the publisher's next marks tell it."""
    from test_reconnect import restart

    port = free_port()
    a = start_node("A", "--port", str(port))
    b = start_node("B", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"], what="link")
    with Client(a.address) as sc, Client(b.address) as pub:
        sub = sc.subscribe("q.>")
        warm_up(pub, "q.x", [sub])
        pub.publish("q.x", "before")
        assert collect(sub, 1)[0].data == "before"
        start_again = restart(start_node, a, "kill", "--peer", b.address)
        wait_until(lambda: not sc.connected, timeout=5, what="the subscriber to notice")
        for i in range(50):
            pub.publish("q.x", i)  # nobody can take these, and the stream goes quiet
        time.sleep(1.5)  # the round of marks after them finds nobody either
        start_again()
        wait_until(lambda: sc.connected and b.linked_names() == ["A"], timeout=15, what="A back")
        assert drain(sub, quiet=3) == [] and sub.gaps == 50
