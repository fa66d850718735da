"""Multi-node behaviour with real meshnode processes on loopback."""

import pytest

from mesh import Client, PayloadTooLarge
from meshhelpers import assert_quiet, collect, warm_up
from meshtest.nodeproc import linked, wait_until

SUBJECTS = ["orders.eu.new", "orders.us.new", "orders.eu.old", "orders", "ordersx.eu.new",
            "orders.eu.new.x", "other.eu.new", "orders.asia.new"]


def test_three_nodes_wildcards_exactly_once_in_order(mesh3):
    a, b, c = mesh3
    with Client(a.address) as pub, Client(b.address) as cb, Client(c.address) as cc:
        star = cb.subscribe("orders.*.new")
        tail = cc.subscribe("orders.>")
        literal = cc.subscribe("orders")
        warm_up(pub, "orders.warm.new", [star, tail])
        warm_up(pub, "orders", [literal])
        sent = []
        for i in range(300):
            subject = SUBJECTS[i % len(SUBJECTS)]
            pub.publish(subject, {"i": i})
            sent.append((subject, i))
        want_star = [s for s in sent if s[0] in ("orders.eu.new", "orders.us.new", "orders.asia.new")]
        want_tail = [s for s in sent if s[0].startswith("orders.")]
        want_literal = [s for s in sent if s[0] == "orders"]
        for sub, want in ((star, want_star), (tail, want_tail), (literal, want_literal)):
            got = collect(sub, len(want))
            assert [(m.subject, m.data["i"]) for m in got] == want
            assert all(m.origin == pub.origin for m in got)
            assert_quiet(sub)
            assert sub.gaps == 0 and sub.malformed == 0


def test_per_publisher_order_and_sequences_with_two_publishers(mesh3):
    a, b, c = mesh3
    with Client(a.address) as pa, Client(b.address) as pb, Client(c.address) as sc:
        sub = sc.subscribe("load.>")
        warm_up(pa, "load.warm", [sub])
        warm_up(pb, "load.warm", [sub])
        for i in range(2000):
            pa.publish("load.a", i)
            pb.publish("load.b", i)
        got = collect(sub, 4000)
        for origin in (pa.origin, pb.origin):
            mine = [m for m in got if m.origin == origin]
            assert [m.data for m in mine] == list(range(2000))
            assert [m.seq for m in mine] == list(range(1, 2001))
        assert sub.gaps == 0


def test_no_subscriber_means_no_traffic_to_peers_and_unsubscribe_stops_it(start_node):
    a = start_node("A")
    b = start_node("B", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"] and b.peer_names() == ["A"], what="link")
    with Client(a.address) as pub, Client(b.address) as sb:
        for i in range(500):
            pub.publish("quiet.x", i)
        assert not pub.has_interest("quiet.x")
        # Nothing left the publisher, nothing crossed to B.
        assert a.stats()["messages"]["published_here"] == 0
        assert b.stats()["messages"]["from_peers"] == 0
        assert b.stats()["bytes"]["from_peers"] == 0

        other = sb.subscribe("elsewhere.>")
        assert pub.wait_for_interest("elsewhere.y")
        for i in range(500):
            pub.publish("quiet.x", i)  # interest elsewhere does not pull this subject
        sub = sb.subscribe("quiet.>")
        warm_up(pub, "quiet.warm", [sub])
        crossed_before = b.stats()["messages"]["from_peers"]
        for i in range(100):
            pub.publish("quiet.x", i)
        assert len(collect(sub, 100)) == 100
        assert 0 < b.stats()["messages"]["from_peers"] - crossed_before <= 100  # batches: fewer messages

        sub.unsubscribe()
        other.unsubscribe()
        wait_until(lambda: not pub.has_interest("quiet.x"), what="interest to be withdrawn")
        settled = b.stats()
        for i in range(500):
            pub.publish("quiet.x", i)
        after = b.stats()
        assert after["messages"]["from_peers"] == settled["messages"]["from_peers"]
        assert after["bytes"]["from_peers"] == settled["bytes"]["from_peers"]


def test_late_node_joins_and_stopped_node_leaves_the_rest_working(start_node):
    a = start_node("A")
    b = start_node("B", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"], what="A to see B")
    with Client(a.address) as pa, Client(b.address) as cb:
        at_b = cb.subscribe("news.>")
        warm_up(pa, "news.warm", [at_b])

        c = start_node("C", peers=[a])
        wait_until(lambda: linked(a, b, c), what="C to join (it learns B from A)")
        with Client(c.address) as cc:
            at_c = cc.subscribe("news.>")
            warm_up(pa, "news.warm", [at_c])
            warm_up(cc, "news.warm", [at_b])
            pa.publish("news.one", 1)
            assert collect(at_c, 1)[0].data == 1
            assert collect(at_b, 1)[0].data == 1

            assert b.stop() == 0
            wait_until(lambda: a.peer_names() == ["C"], timeout=3, what="A to drop B at once")
            pa.publish("news.two", 2)
            assert collect(at_c, 1)[0].data == 2
            cc.publish("news.three", 3)
            with Client(a.address) as ca:
                at_a = ca.subscribe("news.>")
                warm_up(cc, "news.warm", [at_a])
                cc.publish("news.four", 4)
                assert collect(at_a, 1)[0].data == 4


def test_restarted_node_is_relinked(start_node):
    a = start_node("A")
    b = start_node("B", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"], what="A to see B")
    b.kill()
    wait_until(lambda: a.peer_names() == [], timeout=10, what="A to expire the killed B")
    b2 = start_node("B", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"], what="A to relink B")
    with Client(a.address) as pa, Client(b2.address) as cb:
        sub = cb.subscribe("again")
        warm_up(pa, "again", [sub])
        assert pa.publish("again", "x") > 1


def test_loss_is_visible_as_sequence_gaps(start_node):
    """A subscriber that falls behind a tiny queue loses messages, and knows how many."""
    a = start_node("A", "--hwm", "50")
    with Client(a.address, hwm=50) as pub, Client(a.address, hwm=50) as sc:
        sub = sc.subscribe("flood.>")
        warm_up(pub, "flood.warm", [sub])
        for i in range(50_000):  # 50 MB: far more than the queues and TCP buffers hold
            pub.publish("flood.x", b"x" * 1000)
        got = []
        try:
            while True:
                got.append(sub.get(timeout=0.5))
        except TimeoutError:
            pass
        flood = [m for m in got if m.subject == "flood.x"]
        assert len(flood) < 50_000, "expected the tiny queue to drop messages"
        # Loss between received messages and loss after the last one received:
        # the publisher's sequence mark (sent within a second of going idle)
        # says 50,000 were published, so the tail counts too.
        wait_until(lambda: sub_gaps_settled(sub), timeout=5, what="the sequence mark")
        assert sub.gaps == 50_000 - flood[0].seq + 1 - len(flood)
        assert [m for m in got if m.data is None] == [], "a mark was delivered as a message"


def sub_gaps_settled(sub):
    """Read (and discard) anything still arriving; true once nothing does."""
    try:
        sub.get(timeout=1.5)
        return False
    except TimeoutError:
        return True


def test_bad_input_from_the_library_user(start_node):
    a = start_node("A", "--max-payload", "1000")
    with Client(a.address) as client:
        assert client.max_payload == 1000
        with pytest.raises(ValueError, match="wildcard"):
            client.publish("a.*", 1)
        with pytest.raises(ValueError, match="empty token"):
            client.subscribe("a..b")
        with pytest.raises(PayloadTooLarge, match="over the limit of 1000 bytes"):
            client.publish("big", b"x" * 2000)
        with pytest.raises(TypeError):
            client.publish("obj", object())
        sub = client.subscribe("small")
        warm_up(client, "small", [sub])
        assert client.publish("small", b"x" * 900) > 0
        assert collect(sub, 1)[0].data == b"x" * 900
    assert a.alive()


def peer_links(node):
    return {p["name"]: p["link"] for p in node.request("peers")["peers"]}


def test_link_state_shows_a_frozen_peer_within_the_heartbeat_timeout(start_node):
    """A peer that stops answering (no TCP reset) is seen down by ZMTP heartbeats
    (the TTL of its PINGs, 3 s), long before membership would drop it (5 s
    here); and stays down while its kernel accepts our reconnection (up is
    ZMTP's handshake, not TCP's). A peer frozen before its link's first PING:
    tests/test_liveness.py."""
    import os
    import signal
    import time

    a = start_node("A")
    b = start_node("B", peers=[a])
    wait_until(lambda: peer_links(a) == {"B": "up"}, what="link up")
    time.sleep(2)  # the link has had its first PINGs
    os.kill(b.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        wait_until(lambda: peer_links(a).get("B") == "down", timeout=8, what="heartbeat to notice")
        print(f"[measure] frozen peer seen down after {time.monotonic() - started:.2f} s")
        time.sleep(0.5)  # a reconnection's TCP handshake has long succeeded by now
        assert peer_links(a).get("B") != "up"
        assert a.stats()["links"]["failures"] == 1
    finally:
        os.kill(b.pid, signal.SIGCONT)
    wait_until(lambda: peer_links(a) == {"B": "up"}, timeout=10, what="link back up")
