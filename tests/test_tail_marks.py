"""Tail loss behind a full queue is counted (docs/PROTOCOL.md 4.3): a reader
that pauses while a burst goes by loses most of it in full queues, the marks
that went by with it too, and still learns every missing number within about
a second of draining, whether its publisher lives on or has closed."""

import json
import subprocess
import sys
import time

import pytest

from nodeproc import ROOT, wait_until

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
payload = "x" * 130  # about 150 bytes on the wire
for _ in range(count):
    client.publish("tail.x", payload)
client.flush()
print(json.dumps("sent"), flush=True)
time.sleep(idle)
client.close()
print(json.dumps("closed"), flush=True)
"""

SENT = 30_000
PAUSE = 3.0


def run_paused_reader(a, b, idle, pending_limit=None):
    """A publisher process at A sends SENT messages, idles ``idle`` s and
    closes; a subscriber at B (queues of 50) reads nothing for PAUSE s, then
    reads until everything is accounted for. Returns its counts and how long
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
            assert json.loads(pub.stdout.readline()) == "sent"
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
                return sub.received + sub.gaps + sub.dropped >= SENT

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
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        counts = {"received": sub.received, "gaps": sub.gaps, "dropped": sub.dropped,
                  "after_pause": round(learned - resumed, 2), "after_last_message": round(learned - last, 2)}
        print("tail loss behind a full queue:", counts)
        assert sub.received + sub.gaps + sub.dropped == SENT, counts
        assert sub.received < SENT, "nothing was lost: the queues did not fill, the test shows nothing"
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
