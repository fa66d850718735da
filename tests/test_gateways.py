"""Groups joined by gateways (nodes/gateway.py, discovery/gateways.py), with
real ZooKeeper and real ``meshnode`` processes: delivery between groups, no
duplicates, interest that goes away with its subscribers, and a gateway
killed with SIGKILL whose successor takes over."""

import json
import os
import signal
import time

import pytest
from kazoo.client import KazooClient

from mesh import Client, Position
from meshhelpers import assert_quiet, collect, drain, warm_up
from meshtest.nodeproc import meshnode, free_port, linked, wait_until


@pytest.fixture
def grouped(zk_server, zk_node):
    """grouped(name, group, gateway=False, timeout="2"): a node of ``group`` found through ZooKeeper
    (``timeout``: its session, seconds)."""
    def start(name, group, gateway=False, timeout="2"):
        return zk_node(name, zk_server.hosts, "--group", group, *(["--gateway"] if gateway else []),
                       timeout=timeout)
    return start


def gateway_of(node):
    return node.stats().get("gateway", {})


def serving(gateway, groups):
    """The gateway is active and linked to a candidate of each of ``groups``."""
    stats = gateway_of(gateway)
    return stats.get("active") and stats["groups"] == sorted(groups) and stats["gateway_links"]["up"] >= len(groups)


def test_two_groups_exchange_messages_through_their_gateways_once_each(grouped):
    a1, a2 = grouped("a1", "A", gateway=True), grouped("a2", "A")
    b1, b2 = grouped("b1", "B", gateway=True), grouped("b2", "B")
    wait_until(lambda: linked(a1, a2) and linked(b1, b2), what="each group a full mesh of its own")
    assert a2.peer_names() == ["a1"] and b2.peer_names() == ["b1"]  # no links across groups
    wait_until(lambda: serving(a1, ["B"]) and serving(b1, ["A"]), what="both gateways active and linked")
    clients = {n.name: Client(n.address) for n in (a1, a2, b1, b2)}
    try:
        subs = {name: c.subscribe("news.>") for name, c in clients.items()}
        for name, client in clients.items():  # from a gateway and from a plain member of each group
            warm_up(client, f"news.{name}", subs.values())
            for i in range(50):
                client.publish(f"news.{name}", i)
            client.flush()
            for sub_name, sub in subs.items():
                got = [m.data for m in collect(sub, 50)]
                assert got == list(range(50)), f"{name} -> {sub_name}"
        for sub in subs.values():
            assert_quiet(sub)  # nothing twice
        crossed = gateway_of(a1)["messages"]
        assert crossed["to_other_groups"] > 0 and crossed["from_other_groups"] > 0
    finally:
        for c in clients.values():
            c.close()


def test_four_groups_every_node_gets_every_message_once(grouped):
    """With more than two groups a message could reach a group by two ways
    (straight from the publisher's gateway, or relayed by a third group's):
    every node gets each message exactly once."""
    groups = {g: [grouped(f"{g.lower()}1", g, gateway=True), grouped(f"{g.lower()}2", g, gateway=True),
                  grouped(f"{g.lower()}3", g)] for g in "ABCD"}
    nodes = [n for members in groups.values() for n in members]
    wait_until(lambda: all(linked(*members) for members in groups.values()), timeout=20, what="four groups")
    wait_until(lambda: all(sum(gateway_of(n)["active"] for n in members[:2]) == 1
                           and serving(next(n for n in members[:2] if gateway_of(n)["active"]),
                                       sorted(set("ABCD") - {g}))
                           for g, members in groups.items()), timeout=20, what="one gateway per group, linked")
    clients = {n.name: Client(n.address) for n in nodes}
    try:
        subs = {name: c.subscribe("all.>") for name, c in clients.items()}
        publishers = [clients[members[2].name] for members in groups.values()]
        for publisher in publishers:
            warm_up(publisher, f"all.{publisher.node}", subs.values())
        for publisher in publishers:
            for i in range(30):
                publisher.publish(f"all.{publisher.node}", i)
            publisher.flush()
        for name, sub in subs.items():
            got = {}
            for message in collect(sub, 30 * len(publishers)):
                got.setdefault(message.subject, []).append(message.data)
            assert got == {f"all.{p.node}": list(range(30)) for p in publishers}, name
            assert_quiet(sub)
    finally:
        for c in clients.values():
            c.close()


def test_interest_crosses_only_while_a_subscriber_wants_it(grouped):
    # Two candidates per group: the waiting ones' group faces carry interest too, and must not keep it.
    a1, a2 = grouped("a1", "A", gateway=True), grouped("a2", "A", gateway=True)
    b1, b2 = grouped("b1", "B", gateway=True), grouped("b2", "B", gateway=True)
    wait_until(lambda: serving(a1, ["B"]) and serving(b1, ["A"]) and linked(a1, a2) and linked(b1, b2),
               what="two groups")
    publisher, listener = Client(a2.address), Client(b2.address)
    try:
        wait_until(lambda: not publisher.has_interest("only.b"), what="nobody wants only.b yet")
        sub = listener.subscribe("only.b")
        wait_until(lambda: publisher.has_interest("only.b"), what="b2's interest reaching a2 through gateways")
        warm_up(publisher, "only.b", [sub])
        sub.unsubscribe()
        # The gateways' own subscriptions must not keep the interest alive (no echo between gateways).
        wait_until(lambda: not publisher.has_interest("only.b"), what="the interest withdrawn in group A")
        before = gateway_of(a1)["messages"]["to_other_groups"]
        for i in range(20):
            publisher.publish("only.b", i)
        publisher.flush()
        time.sleep(0.5)
        assert gateway_of(a1)["messages"]["to_other_groups"] == before  # nothing crossed for nobody
    finally:
        publisher.close()
        listener.close()


def _publish_steadily(client, subject, count, every=0.01):
    for i in range(count):
        client.publish(subject, i)
        client.flush()
        time.sleep(every)


def test_a_gateway_killed_with_sigkill_is_replaced_and_nothing_arrives_twice(grouped):
    a1 = grouped("a1", "A", gateway=True)
    a2, a3 = grouped("a2", "A", gateway=True), grouped("a3", "A")
    b1, b2 = grouped("b1", "B", gateway=True), grouped("b2", "B")
    wait_until(lambda: serving(a1, ["B"]) and serving(b1, ["A"]) and linked(a1, a2, a3) and linked(b1, b2),
               what="two groups, a1 the gateway of A")
    assert not gateway_of(a2)["active"]  # one gateway per group: the other candidate waits
    wait_until(lambda: gateway_of(b1)["gateway_links"]["up"] == 2, what="b1 linked to both candidates of A")
    publisher, listener = Client(a3.address), Client(b2.address)
    answerer, asker = Client(b1.address), Client(a3.address)
    try:
        sub = listener.subscribe("tick")
        warm_up(publisher, "tick", [sub])
        _publish_steadily(publisher, "tick", 100)
        before = [m.data for m in collect(sub, 100)]
        assert before == list(range(100))
        a1.kill()
        started = time.monotonic()
        wait_until(lambda: gateway_of(a2)["active"], timeout=15, what="a2 taking over as the gateway of A")
        took_over = time.monotonic() - started
        wait_until(lambda: serving(a2, ["B"]), what="a2 linked to B's gateway")
        warm_up(publisher, "tick", [sub], timeout=15)
        _publish_steadily(publisher, "tick", 100)
        after = [m.data for m in drain(sub) if m.data != "warm-up"]
        assert after == list(range(100)), "lost, reordered or duplicated after the takeover"
        # Request/reply across groups through the new gateway.
        answerer.subscribe("ask.b", lambda message: answerer.respond(message, {"from": "b1"}))
        wait_until(lambda: asker.has_interest("ask.b"), what="the answerer's interest in group A")
        assert asker.request("ask.b", "hi", timeout=5).data == {"from": "b1"}
        print(f"[measure] gateway of A killed with SIGKILL: a2 active after {took_over:.2f} s "
              f"(ZooKeeper session 2 s)")
    finally:
        for client in (publisher, listener, answerer, asker):
            client.close()


def test_a_gateway_stopped_with_sigterm_hands_over_at_once(grouped):
    a1 = grouped("a1", "A", gateway=True, timeout="10")  # a successor that waited out its session: 10 s
    a2, a3 = grouped("a2", "A", gateway=True), grouped("a3", "A")
    b1 = grouped("b1", "B", gateway=True)
    wait_until(lambda: serving(a1, ["B"]) and serving(b1, ["A"]) and linked(a1, a2, a3), what="two groups")
    publisher, listener = Client(a3.address), Client(b1.address)
    try:
        sub = listener.subscribe("handover")
        warm_up(publisher, "handover", [sub])
        started = time.monotonic()
        assert a1.stop() == 0  # it stops forwarding, then leaves the line: a2 is next, with no session to wait out
        wait_until(lambda: gateway_of(a2)["active"], timeout=5, what="a2 taking over before a1's session ends")
        took_over = time.monotonic() - started
        wait_until(lambda: serving(a2, ["B"]), what="a2 linked")
        warm_up(publisher, "handover", [sub])
        _publish_steadily(publisher, "handover", 50)
        assert [m.data for m in drain(sub) if m.data != "warm-up"] == list(range(50))
        print(f"[measure] gateway stopped with SIGTERM: successor active after {took_over:.2f} s (session 10 s)")
    finally:
        publisher.close()
        listener.close()


def test_a_gateway_cut_off_from_zookeeper_steps_down_and_comes_back(zk_server, grouped):
    a1, a2 = grouped("a1", "A", gateway=True), grouped("a2", "A")
    b1 = grouped("b1", "B", gateway=True)
    wait_until(lambda: serving(a1, ["B"]) and serving(b1, ["A"]) and linked(a1, a2), what="two groups")
    publisher, inside, across = Client(a2.address), Client(a1.address), Client(b1.address)
    try:
        sub_inside, sub_across = inside.subscribe("steady"), across.subscribe("steady")
        warm_up(publisher, "steady", [sub_inside, sub_across])
        zk_server.stop()
        wait_until(lambda: not gateway_of(a1)["active"] and not gateway_of(b1)["active"], timeout=10,
                   what="both gateways stepping down without ZooKeeper")
        drain(sub_across, quiet=0.3)
        _publish_steadily(publisher, "steady", 50)
        assert [m.data for m in collect(sub_inside, 50)] == list(range(50))  # the group goes on
        assert_quiet(sub_across, 1.0)  # nothing crosses: no gateway may claim the role unseen
        zk_server.start()
        wait_until(lambda: gateway_of(a1)["active"] and gateway_of(b1)["active"], timeout=20,
                   what="the gateways standing again")
        warm_up(publisher, "steady", [sub_across], timeout=15)
        _publish_steadily(publisher, "steady", 20)
        assert [m.data for m in drain(sub_across) if m.data != "warm-up"] == list(range(20))
    finally:
        for client in (publisher, inside, across):
            client.close()


def test_operators_and_clients_see_the_groups(zk_server, grouped):
    grouped("a1", "A", gateway=True), grouped("b1", "B")
    listed = meshnode("nodes", "--zk", zk_server.hosts, "--mesh", "test")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split()[:2] for line in listed.stdout.splitlines()[1:]]
    assert rows == [["a1", "A"], ["b1", "B"]] and "(gw)" in listed.stdout.splitlines()[1]
    records = [json.loads(line) for line in
               meshnode("nodes", "--zk", zk_server.hosts, "--mesh", "test", "--json").stdout.splitlines()]
    assert [(r["name"], r["group"], "gateway" in r) for r in records] == [("a1", "A", True), ("b1", "B", False)]
    client = Client.from_zookeeper(zk_server.hosts, "test", group="B", zk_timeout=2)
    try:
        assert client.node == "b1"  # only B's nodes are candidates
    finally:
        client.close()
    with pytest.raises(RuntimeError, match="group 'C'"):
        Client.from_zookeeper(zk_server.hosts, "test", group="C", zk_timeout=2)
    twin = meshnode("run", "--name", "a1", "--port", "0", "--zk", zk_server.hosts, "--mesh", "test",
                    "--group", "B", "--zk-timeout", "2")
    assert twin.returncode != 0 and "'a1' is already taken" in twin.stderr and "group 'A'" in twin.stderr


def test_groups_and_gateways_need_zookeeper_and_a_group():
    alone = meshnode("run", "--port", "0", "--group", "A")
    assert alone.returncode != 0 and "--group needs --zk" in alone.stderr
    lonely = meshnode("run", "--port", "0", "--gateway")
    assert lonely.returncode != 0 and "give the node a --group" in lonely.stderr


def test_presence_and_history_are_asked_of_every_group(zk_server, zk_node):
    """Mesh-wide questions walk every group: own group, then a candidate of
    each other group (control ``groups``, then ``peers``; mesh/everynode.py)."""
    from edgehelpers import WS, http_address

    a1 = zk_node("a1", zk_server.hosts, "--group", "A", "--gateway", "--history", "h.>=1000/600s")
    a2 = zk_node("a2", zk_server.hosts, "--group", "A", "--history", "h.>=1000/600s")
    b1 = zk_node("b1", zk_server.hosts, "--group", "B", "--gateway")
    b2 = zk_node("b2", zk_server.hosts, "--group", "B", "--http", "0")
    wait_until(lambda: serving(a1, ["B"]) and serving(b1, ["A"]) and linked(a1, a2) and linked(b1, b2),
               what="two groups")
    watcher = WS(f"ws://{http_address(b2)}/ws")
    try:
        assert watcher.request("sub", subject="room.1")["op"] == "ok"
        with Client(a2.address) as asker:  # a plain member: it asks a1 for the other groups
            here = asker.presence("room.1")
            assert here["count"] == 1 and [c["node"] for c in here["connections"]] == ["b2"]
            assert sorted(here["nodes"]) == ["a1", "a2", "b1", "b2"] and here["unreachable"] == {}
            for i in range(20):
                asker.publish("h.x", i)
            asker.flush()
            wait_until(lambda: a2.stats()["history"]["recorded"] >= 20, what="a2 to record")
        with Client(b2.address) as reader:  # in group B, recovering what group A recorded
            sub = reader.subscribe("h.>", since=Position({}, time.time() - 60))  # everything of the last minute
            assert [m.data for m in collect(sub, 20)] == list(range(20)) and sub.recovery.recovered
        reply = b2.request("groups")
        assert reply["ok"] is False and reply["error"] == "not_a_gateway"
        assert b1.request("groups")["groups"] == {"A": [{"name": "a1", "control": f"tcp://{a1.address}"}]}
    finally:
        watcher.close()


def test_a_gateway_whose_session_expired_goes_to_the_end_of_the_line(zk_server, grouped):
    """The LOST path: a1 frozen past its session; a2 takes over; a1, resumed,
    stands again behind a2 and forwards nothing, so nothing arrives twice."""
    a1 = grouped("a1", "A", gateway=True)
    a2, a3 = grouped("a2", "A", gateway=True), grouped("a3", "A")
    b1 = grouped("b1", "B", gateway=True)
    wait_until(lambda: serving(a1, ["B"]) and serving(b1, ["A"]) and linked(a1, a2, a3), what="two groups")
    os.kill(a1.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: gateway_of(a2)["active"], timeout=15, what="a2 taking over from the frozen a1")
    finally:
        os.kill(a1.pid, signal.SIGCONT)
    zk = KazooClient(hosts=zk_server.hosts)
    zk.start(10)
    try:
        def line():
            children = zk.get_children("/meshnode/test/gateways/A")
            return [json.loads(zk.get(f"/meshnode/test/gateways/A/{c}")[0])["name"]
                    for c in sorted(children, key=lambda c: c.rsplit("-", 1)[1])]
        wait_until(lambda: line() == ["a2", "a1"], timeout=15, what="a1 standing again, behind a2")
    finally:
        zk.stop()
        zk.close()
    assert not gateway_of(a1)["active"] and gateway_of(a2)["active"]
    wait_until(lambda: linked(a1, a2, a3), timeout=15, what="a1 back in its group")
    publisher, listener = Client(a3.address), Client(b1.address)
    try:
        sub = listener.subscribe("after")
        warm_up(publisher, "after", [sub])
        drain(sub, quiet=0.5)
        _publish_steadily(publisher, "after", 50)
        assert [m.data for m in drain(sub)] == list(range(50))
    finally:
        publisher.close()
        listener.close()


def test_a_gateway_killed_and_restarted_at_once_leaves_no_dead_candidacy(zk_server, zk_node, grouped):
    """kill -9 of the gateway and its restart under its name within its 10 s
    session: the restart takes its name over and removes the dead process's
    candidacy with it, so the next candidate leads and the restart queues."""
    port = free_port()
    a1 = zk_node("a1", zk_server.hosts, "--group", "A", "--gateway", "--port", str(port), timeout="10")
    a2 = grouped("a2", "A", gateway=True)
    b1 = grouped("b1", "B", gateway=True)
    wait_until(lambda: serving(a1, ["B"]) and serving(b1, ["A"]) and linked(a1, a2), what="a1 the gateway of A")
    a1.kill()
    a1 = zk_node("a1", zk_server.hosts, "--group", "A", "--gateway", "--port", str(port), timeout="10")
    zk = KazooClient(hosts=zk_server.hosts)
    zk.start(10)
    try:
        children = zk.get_children("/meshnode/test/gateways/A")
        line = [json.loads(zk.get(f"/meshnode/test/gateways/A/{c}")[0])["name"]
                for c in sorted(children, key=lambda c: c.rsplit("-", 1)[1])]
    finally:
        zk.stop()
        zk.close()
    assert line == ["a2", "a1"]
    wait_until(lambda: serving(a2, ["B"]) and not gateway_of(a1)["active"], what="a2 the gateway of A")


def test_junk_in_the_line_does_not_stop_an_election(zk_server, grouped):
    """A znode at the head of a group's line that is not a valid candidate
    (bad JSON, a persistent leftover, a name that is not a candidate's) is
    passed over."""
    zk = KazooClient(hosts=zk_server.hosts)
    zk.start(10)
    try:
        zk.create("/meshnode/test/gateways/A/c-junk-", b"not json", sequence=True, makepath=True)
        zk.create("/meshnode/test/gateways/A/c-wrong-", json.dumps({"name": "x", "group": "B"}).encode(),
                  sequence=True)
        zk.create("/meshnode/test/gateways/A/zzz", b"{}")
        a1, b1 = grouped("a1", "A", gateway=True), grouped("b1", "B", gateway=True)
        wait_until(lambda: serving(a1, ["B"]) and serving(b1, ["A"]), what="a1 elected behind the junk")
        assert b1.request("groups")["groups"] == {"A": [{"name": "a1", "control": f"tcp://{a1.address}"}]}
    finally:
        zk.stop()
        zk.close()
