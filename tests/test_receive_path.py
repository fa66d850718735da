"""The client's receive path at scale and as a gevent citizen (mesh/receiver.py):
one socket for any number of subscriptions, bounded per-subscription queues,
no polling, fair to other greenlets, and a WebSocket edge holding 10,000
patterns."""

import json
import os
import subprocess
import sys
import threading
import time

from edgehelpers import WS, http_address
from meshhelpers import collect, warm_up
from meshtest.nodeproc import ROOT, wait_until

from mesh import Client


def open_descriptors():
    return len(os.listdir("/proc/self/fd"))


def test_thousands_of_subscriptions_share_one_socket_and_each_gets_its_own(start_node):
    a = start_node("A")
    with Client(a.address) as pub, Client(a.address) as client:
        before = open_descriptors()
        subs = [client.subscribe(f"user.{i}.notify") for i in range(5000)]
        assert open_descriptors() - before < 10, "descriptors grew with the subscriptions"
        warm_up(pub, "user.0.notify", [subs[0]])
        wait_until(lambda: pub.has_interest("user.4999.notify"), what="the last subscription's interest")
        for i in range(5000):
            pub.publish(f"user.{i}.notify", i)
        for i, sub in enumerate(subs):
            assert [m.data for m in collect(sub, 1)] == [i]
        assert all(sub.gaps == 0 and sub.dropped == 0 and sub.pending == 0 for sub in subs)
        assert client.counters()["subscriptions"] == 5000
        assert threading.active_count() < 10, "a thread per subscription"


def test_overlapping_subscriptions_each_get_a_copy_and_unsubscribing_one_keeps_the_other(start_node):
    a = start_node("A")
    with Client(a.address) as pub, Client(a.address) as client:
        first, second, wide = client.subscribe("p.x"), client.subscribe("p.x"), client.subscribe("p.>")
        warm_up(pub, "p.x", [first, second, wide])
        pub.publish("p.x", 1)
        assert [collect(s, 1)[0].data for s in (first, second, wide)] == [1, 1, 1]
        first.unsubscribe()  # the same ZeroMQ prefix stays subscribed for the second
        for i in range(100):
            pub.publish("p.x", i)
        assert [m.data for m in collect(second, 100)] == list(range(100))
        assert [m.data for m in collect(wide, 100)] == list(range(100))
        assert second.gaps == wide.gaps == 0


def test_a_slow_subscription_loses_and_counts_while_the_fast_one_beside_it_gets_everything(start_node):
    a = start_node("A")
    with Client(a.address) as pub, Client(a.address) as client:
        fast = client.subscribe("s.>")
        slow = client.subscribe("s.>", pending_limit=100)
        warm_up(pub, "s.warm", [fast, slow])
        for i in range(10_000):
            pub.publish("s.x", i)
        assert [m.data for m in collect(fast, 10_000)] == list(range(10_000))
        assert fast.gaps == fast.dropped == 0
        assert slow.pending == 100 and slow.dropped == 10_000 - 100
        assert [m.data for m in collect(slow, 100)] == list(range(100))  # the oldest kept, in order


def test_a_new_subscription_never_gets_what_waited_in_the_socket_before_it(start_node):
    """Messages that reached the client's socket for a subscription nobody read
    before it went stay queued in libzmq; the next subscription on the prefix
    must not take them for live ones (an old message first, then a jump
    counted as gaps)."""
    a = start_node("A")
    with Client(a.address) as pub, Client(a.address) as reader:
        first = reader.subscribe("st.>")
        warm_up(pub, "st.x", [first])
        for i in range(100):  # never read: they wait in the reader's socket
            pub.publish("st.x", i)
        pub.flush()
        time.sleep(0.3)  # for the reader's socket to take them in
        first.unsubscribe()
        wait_until(lambda: not pub.has_interest("st.x"), what="the interest to go")
        for i in range(100, 150):  # nobody wants these
            pub.publish("st.x", i)
        pub.flush()
        second = reader.subscribe("st.>")
        assert pub.wait_for_interest("st.x")
        for i in range(150, 200):
            pub.publish("st.x", i)
        pub.flush()
        assert [m.data for m in collect(second, 50)] == list(range(150, 200))
        assert second.gaps == 0


def test_unsubscribe_and_close_wake_a_blocked_reader_at_once(start_node):
    a = start_node("A")
    client = Client(a.address)
    outcomes = []

    def read(sub):
        try:
            sub.get()  # no timeout: only an unsubscribe or a close ends it
        except RuntimeError as exc:
            outcomes.append(str(exc))

    follower_sub, leader_sub = client.subscribe("w.a"), client.subscribe("w.b")
    readers = [threading.Thread(target=read, args=(s,)) for s in (leader_sub, follower_sub)]
    for reader in readers:
        reader.start()
        time.sleep(0.1)  # the first leads (waits on the socket), the second follows
    follower_sub.unsubscribe()
    readers[1].join(2)
    assert not readers[1].is_alive(), "unsubscribe did not wake its reader"
    client.close()
    readers[0].join(2)
    assert not readers[0].is_alive(), "close did not wake the reader on the socket"
    assert outcomes == ["subscription is closed"] * 2


GREEN_PROGRAM = r"""
import json, sys, time
from gevent import monkey; monkey.patch_all()
import gevent
sys.path.insert(0, sys.argv[1])
from mesh import Client

address, count = sys.argv[2], int(sys.argv[3])
ticks = []
def ticker():
    while True:
        gevent.sleep(0.005)
        ticks.append(time.monotonic())
gevent.spawn(ticker)
gevent.sleep(0.05)
result = {}

client = Client(address)
# 1. a greenlet blocked in get() is woken by unsubscribe from another greenlet
blocked = client.subscribe("green.blocked")
def read_blocked():
    try:
        blocked.get()
    except RuntimeError:
        result["woken"] = True
reader = gevent.spawn(read_blocked)
gevent.sleep(0.1)
blocked.unsubscribe()
reader.join(2)
result["woken"] = result.get("woken", False)

# 2. publishing a long burst leaves the other greenlets running
start = time.monotonic()
for i in range(count):
    client.publish("green.nobody", i)
client.flush()
end = time.monotonic()
result["publish_ticks"] = sum(start < t < end for t in ticks)

# 3. draining a long stream leaves them running too
sub = client.subscribe("green.s")
print("ready", flush=True)
first = sub.get(timeout=30)
start, n = time.monotonic(), 1
while n < count:
    message = sub.get(timeout=10)
    sum(range(30))  # a little work per message, as an application does
    n += 1
end = time.monotonic()
result.update(drain_ticks=sum(start < t < end for t in ticks), drained=n, seconds=end - start, gaps=sub.gaps)
client.close()
print(json.dumps(result), flush=True)
"""


def test_under_gevent_other_greenlets_run_while_a_stream_is_published_and_drained(start_node):
    a = start_node("A")
    b = start_node("B", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"], what="link")
    count = 200_000
    program = subprocess.Popen([sys.executable, "-c", GREEN_PROGRAM, ROOT, b.address, str(count)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert program.stdout.readline().strip() == "ready"
        with Client(a.address) as pub:
            assert pub.wait_for_interest("green.s")
            for i in range(count):
                pub.publish("green.s", i)
        result = json.loads(program.stdout.readline())
        assert program.wait(30) == 0
    finally:
        program.kill()
        program.wait()
    assert result["woken"], "unsubscribe did not wake a greenlet blocked in get()"
    assert result["drained"] == count and result["gaps"] == 0
    # Before the fair receive path the ticker did not run at all during either loop.
    assert result["publish_ticks"] >= 10, result
    assert result["drain_ticks"] >= 10, result


def test_idle_subscriptions_cost_no_cpu(start_node):
    a = start_node("A")
    with Client(a.address) as client:
        subs = [client.subscribe(f"idle.{i}") for i in range(1000)]
        blocked = threading.Thread(target=lambda: _expect_timeout(subs[0], 2.0))  # leads, waits
        blocked.start()
        before = os.times()
        time.sleep(2.0)
        after = os.times()
        blocked.join()
    used = (after.user - before.user) + (after.system - before.system)
    # The old receive path woke each reader every 0.1 s: 1,000 subscriptions
    # burned about a whole core (2 s here). Nothing should run now.
    assert used < 0.3, f"{used:.2f} s of CPU in 2 s with 1,000 idle subscriptions"


def _expect_timeout(sub, seconds):
    try:
        sub.get(timeout=seconds)
    except TimeoutError:
        return
    raise AssertionError("an idle subscription received a message")


def test_an_edge_holds_10000_patterns_over_100_websockets_each_getting_its_own(start_node):
    a = start_node("A")
    e = start_node("E", "--http", "0", peers=[a])
    wait_until(lambda: a.peer_names() == ["E"], what="link")
    url = f"ws://{http_address(e)}/ws"
    connections = [WS(url) for _ in range(100)]
    try:
        for c, ws in enumerate(connections):
            for k in range(100):  # pipelined: send all, then read the 100 oks
                ws.send({"op": "sub", "id": k, "subject": f"user.{c}.{k}.>"})
            replies = [ws.recv() for _ in range(100)]
            assert [r["op"] for r in replies] == ["ok"] * 100, [r for r in replies if r["op"] != "ok"][:3]
        stats = json.loads(_get(f"http://{http_address(e)}/stats"))
        assert stats["patterns"] == 10_000
        with Client(a.address) as pub:
            wait_until(lambda: pub.has_interest("user.99.99.x"), what="interest for the last pattern")
            for c in range(100):
                for k in range(100):
                    pub.publish(f"user.{c}.{k}.x", [c, k])
        for c, ws in enumerate(connections):
            got = sorted(tuple(frame["data"]) for frame in ws.messages(100, timeout=30))
            assert got == [(c, k) for k in range(100)]
    finally:
        for ws in connections:
            ws.close()


def _get(url):
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()
