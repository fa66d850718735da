"""Self-organizing membership through a real ZooKeeper server (Debian's zookeeper)."""

import itertools
import json
import os
import signal
import threading
import time

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from mesh import Client
from meshhelpers import collect, warm_up
from meshtest.nodeproc import meshnode, free_port, linked, wait_until



def test_three_nodes_find_each_other_and_every_pair_delivers(zk_server, zk_node):
    nodes = [zk_node(name, zk_server.hosts) for name in ("A", "B", "C")]
    wait_until(lambda: linked(*nodes), what="full mesh via ZooKeeper")
    clients = {n.name: Client(n.address) for n in nodes}
    try:
        subs = {name: c.subscribe(f"to.{name}") for name, c in clients.items()}
        for src, dst in itertools.permutations(clients, 2):
            warm_up(clients[src], f"to.{dst}", [subs[dst]])
            clients[src].publish(f"to.{dst}", f"{src}->{dst}")
            assert collect(subs[dst], 1)[0].data == f"{src}->{dst}"
    finally:
        for c in clients.values():
            c.close()


def test_member_znodes_are_json_readable_by_any_zookeeper_client(zk_server, zk_node):
    a = zk_node("A", zk_server.hosts, mesh="orders")
    zk = KazooClient(hosts=zk_server.hosts)
    zk.start(10)
    try:
        assert zk.get_children("/meshnode/orders/nodes") == ["A"]
        data, stat = zk.get("/meshnode/orders/nodes/A")
        record = json.loads(data)
        assert record["control"] == f"tcp://{a.address}" and record["name"] == "A"
        assert stat.ephemeralOwner != 0
    finally:
        zk.stop()
        zk.close()


def test_late_node_is_wired_in_and_its_subscriptions_reach_the_others(zk_server, zk_node, capsys):
    a = zk_node("A", zk_server.hosts)
    b = zk_node("B", zk_server.hosts)
    wait_until(lambda: linked(a, b), what="A-B link")
    with Client(a.address) as pa:
        started = time.monotonic()
        d = zk_node("D", zk_server.hosts)
        with Client(d.address) as cd:
            sub = cd.subscribe("late.>")
            deadline = time.monotonic() + 15
            while True:  # publish at A until D delivers: join-to-first-delivery
                pa.publish("late.x", "hello")
                try:
                    sub.get(timeout=0.005)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, "D never received"
            joined = time.monotonic() - started
            with capsys.disabled():
                print(f"\n[measure] join-to-first-delivery (process start to first message): {joined:.3f} s")
            with Client(b.address) as cb:
                at_b = cb.subscribe("from.d")
                warm_up(cd, "from.d", [at_b])
    assert linked(a, b, d)


def test_graceful_stop_drops_at_once_and_kill_drops_within_the_session_timeout(zk_server, zk_node):
    a = zk_node("A", zk_server.hosts)
    b = zk_node("B", zk_server.hosts)
    c = zk_node("C", zk_server.hosts)
    wait_until(lambda: linked(a, b, c), what="mesh")
    started = time.monotonic()
    assert c.stop() == 0
    wait_until(lambda: a.peer_names() == ["B"], timeout=2, interval=0.02, what="graceful drop")
    graceful = time.monotonic() - started
    started = time.monotonic()
    b.kill()
    wait_until(lambda: a.peer_names() == [], timeout=2 + 3, interval=0.05, what="drop after kill -9")
    killed = time.monotonic() - started
    print(f"[measure] graceful drop {graceful:.3f} s, kill -9 drop {killed:.3f} s (session 2 s)")
    assert graceful < 1.0


def test_duplicate_name_is_refused(zk_server, zk_node):
    a = zk_node("A", zk_server.hosts)
    result = meshnode("run", "--name", "A", "--port", "0", "--zk", zk_server.hosts, "--mesh", "test")
    assert result.returncode == 1
    assert "node name 'A' is already taken in mesh 'test'" in result.stderr and "it is alive" in result.stderr
    assert "meshnode ready" not in result.stdout
    os.kill(a.pid, signal.SIGSTOP)  # frozen: it may come back, so its name is not taken from it
    try:
        result = meshnode("run", "--name", "A", "--port", "0", "--zk", zk_server.hosts, "--mesh", "test")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert result.returncode == 1 and "it did not answer" in result.stderr


@pytest.mark.parametrize("same_port", [True, False], ids=["same-port", "new-port"])
def test_a_node_killed_and_restarted_at_once_takes_its_name_back(zk_server, zk_node, same_port):
    """kill -9 and a restart under the same name well within the ZooKeeper
    session (10 s): the new process takes over the dead one's znodes at once,
    whether it listens on the same control port or on another one, and a
    publisher at its peer reaches it."""
    port = free_port()
    b = zk_node("B", zk_server.hosts)
    a = zk_node("A", zk_server.hosts, "--port", str(port), timeout="10")
    wait_until(lambda: linked(a, b), what="A and B")
    a.kill()
    started = time.monotonic()
    a = zk_node("A", zk_server.hosts, "--port", str(port if same_port else 0), timeout="10")
    new = a.request("hello")["member"]["instance"]
    wait_until(lambda: linked(a, b) and b.request("peers")["peers"][0]["instance"] == new, timeout=5,
               what="B linked to the new A")
    print(f"[measure] restarted A ({'same' if same_port else 'new'} port) linked by B "
          f"{time.monotonic() - started:.2f} s after its start (session 10 s)")
    with Client(b.address) as pb, Client(a.address) as ca:
        sub = ca.subscribe("back")
        warm_up(pb, "back", [sub])
        pb.publish("back", 1)
        assert collect(sub, 1)[0].data == 1


def test_the_same_name_in_another_mesh_is_fine(zk_server, zk_node):
    zk_node("A", zk_server.hosts, mesh="one")
    zk_node("A", zk_server.hosts, mesh="two")
    result = meshnode("nodes", "--zk", zk_server.hosts, "--mesh", "two", "--json")
    assert [json.loads(line)["name"] for line in result.stdout.splitlines()] == ["A"]


def test_unreachable_zookeeper_at_start_is_a_clear_error(zk_server):
    port = zk_server.port
    zk_server.stop()
    started = time.monotonic()
    result = meshnode("run", "--port", "0", "--zk", f"127.0.0.1:{port}", "--zk-timeout", "2")
    assert result.returncode == 1
    assert f"cannot reach ZooKeeper at 127.0.0.1:{port} within 2 s" in result.stderr
    assert time.monotonic() - started < 15


def test_nodes_command_lists_members(zk_server, zk_node):
    a = zk_node("A", zk_server.hosts)
    b = zk_node("B", zk_server.hosts)
    result = meshnode("nodes", "--zk", zk_server.hosts, "--mesh", "test")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "GROUP", "CONTROL", "UPTIME"]
    assert [line.split()[0] for line in lines[1:]] == ["A", "B"]
    assert a.address in lines[1] and b.address in lines[2]
    records = [json.loads(line) for line in
               meshnode("nodes", "--zk", zk_server.hosts, "--mesh", "test", "--json").stdout.splitlines()]
    assert [r["name"] for r in records] == ["A", "B"]
    assert all(r["uptime"] >= 0 and r["out"].startswith("tcp://") for r in records)
    empty = meshnode("nodes", "--zk", zk_server.hosts, "--mesh", "nobody")
    assert empty.returncode == 0 and len(empty.stdout.splitlines()) == 1


def _steady_publisher(client, subject, stop, rate=500):
    sent = [0]

    def run():
        while not stop.is_set():
            client.publish(subject, sent[0])
            sent[0] += 1
            time.sleep(1 / rate)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, sent


def test_zookeeper_outage_loses_nothing_and_recovery_lets_a_node_join(zk_server, zk_node):
    a = zk_node("A", zk_server.hosts, timeout="4")
    b = zk_node("B", zk_server.hosts, timeout="4")
    wait_until(lambda: linked(a, b), what="mesh")
    with Client(a.address) as pa, Client(b.address) as cb:
        sub = cb.subscribe("steady")
        warm_up(pa, "steady", [sub])
        stop = threading.Event()
        thread, sent = _steady_publisher(pa, "steady", stop)
        got = []
        zk_server.stop()
        outage_end = time.monotonic() + 6
        while time.monotonic() < outage_end:
            got.append(sub.get(timeout=2))
        assert a.peer_names() == ["B"] and b.peer_names() == ["A"]  # kept the last membership
        zk_server.start()
        time.sleep(1)
        stop.set()
        thread.join()
        total = sent[0]
        got += collect(sub, total - len([m for m in got if m.data != "warm-up"]), timeout=10)
        data = [m.data for m in got if m.data != "warm-up"]
        assert data == list(range(total)), "messages lost or reordered during the ZooKeeper outage"
        assert sub.gaps == 0
        print(f"[measure] {total} messages during a 6 s ZooKeeper outage, 0 lost")
    def registered():
        listed = meshnode("nodes", "--zk", zk_server.hosts, "--mesh", "test", "--json").stdout
        return sorted(json.loads(line)["name"] for line in listed.splitlines())
    wait_until(lambda: registered() == ["A", "B"], timeout=15, what="A and B registered again")
    c = zk_node("C", zk_server.hosts, timeout="4")
    wait_until(lambda: linked(a, b, c), timeout=15, what="a new node to join after the outage")


def test_forced_session_expiry_re_registers(zk_server, zk_node):
    a = zk_node("A", zk_server.hosts)
    b = zk_node("B", zk_server.hosts)
    wait_until(lambda: linked(a, b), what="mesh")
    zk = KazooClient(hosts=zk_server.hosts)
    zk.start(10)
    try:
        first_owner = zk.exists("/meshnode/test/nodes/B").ephemeralOwner
        os.kill(b.pid, signal.SIGSTOP)  # B's ZooKeeper link goes silent; its session expires (2 s)
        wait_until(lambda: zk.exists("/meshnode/test/nodes/B") is None, timeout=10, what="B's session to expire")
        wait_until(lambda: a.peer_names() == [], timeout=5, what="A to drop B")
        os.kill(b.pid, signal.SIGCONT)
        wait_until(lambda: zk.exists("/meshnode/test/nodes/B") is not None, timeout=15, what="B to re-register")
        assert zk.exists("/meshnode/test/nodes/B").ephemeralOwner != first_owner
        wait_until(lambda: linked(a, b), timeout=10, what="A and B relinked")
    finally:
        zk.stop()
        zk.close()
    with Client(a.address) as pa, Client(b.address) as cb:
        sub = cb.subscribe("after.expiry")
        warm_up(pa, "after.expiry", [sub])


def test_ensemble_losing_one_server_causes_no_disruption(zk_ensemble, zk_node):
    hosts = zk_ensemble.hosts
    a = zk_node("A", hosts, timeout="4")
    b = zk_node("B", hosts, timeout="4")
    wait_until(lambda: linked(a, b), what="mesh")
    with Client(a.address) as pa, Client(b.address) as cb:
        sub = cb.subscribe("ens")
        warm_up(pa, "ens", [sub])
        stop = threading.Event()
        thread, sent = _steady_publisher(pa, "ens", stop)
        time.sleep(0.5)
        zk_ensemble.leader().kill()
        time.sleep(3)
        stop.set()
        thread.join()
        data = [m.data for m in collect(sub, sent[0], timeout=10)]
        assert data == list(range(sent[0]))
        assert sub.gaps == 0
    c = zk_node("C", hosts, timeout="4")
    wait_until(lambda: linked(a, b, c), timeout=15, what="a node to join with 2 of 3 servers")


def test_digest_auth_keeps_other_users_out(zk_server, zk_node):
    zk_node("A", zk_server.hosts, "--zk-auth", "mesh:secret", mesh="guarded")
    stranger = KazooClient(hosts=zk_server.hosts)
    stranger.start(10)
    try:
        assert json.loads(stranger.get("/meshnode/guarded/nodes/A")[0])["name"] == "A"  # world-readable
        with pytest.raises(NoAuthError):
            stranger.set("/meshnode/guarded/nodes/A", b"{}")
        with pytest.raises(NoAuthError):
            stranger.delete("/meshnode/guarded/nodes/A")
        with pytest.raises(NoAuthError):
            stranger.create("/meshnode/guarded/nodes/fake", b"{}")
    finally:
        stranger.stop()
        stranger.close()
    listed = meshnode("nodes", "--zk", zk_server.hosts, "--mesh", "guarded", "--zk-auth", "mesh:secret", "--json")
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["A"]


def test_from_zookeeper_client_moves_when_its_node_dies_and_reports_the_gap(zk_server, zk_node):
    b = zk_node("B", zk_server.hosts)
    c = zk_node("C", zk_server.hosts)
    wait_until(lambda: linked(b, c), what="B-C link")
    moves = []
    sub_client = Client.from_zookeeper(zk_server.hosts, mesh="test", zk_timeout=2,
                                       on_failover=lambda old, new: moves.append((old, new)))
    a = zk_node("A", zk_server.hosts)
    wait_until(lambda: linked(a, b, c), what="mesh")
    doomed = {"B": b, "C": c}[sub_client.node]
    with Client(a.address) as pub:
        sub = sub_client.subscribe("fo.x")
        warm_up(pub, "fo.x", [sub])
        stop = threading.Event()
        thread, sent = _steady_publisher(pub, "fo.x", stop, rate=200)
        before = collect(sub, 50)
        doomed.kill()
        wait_until(lambda: moves, timeout=10, what="the client to move")
        after = collect(sub, 50, timeout=15)
        stop.set()
        thread.join()
    sub_client.close()
    assert moves == [(doomed.name, sub_client.node)] and sub_client.node not in (doomed.name,)
    assert sub_client.failovers == 1
    seqs = [m.seq for m in before + after]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "duplicates or reordering"
    missed = seqs[-1] - seqs[0] + 1 - len(seqs)
    assert missed > 0 and sub.gaps == missed
    print(f"[measure] failover after kill -9 with a 2 s session: {missed} messages missed, reported as gaps")


def test_from_zookeeper_publisher_moves_and_keeps_its_sequence(zk_server, zk_node):
    a = zk_node("A", zk_server.hosts)
    b = zk_node("B", zk_server.hosts)
    wait_until(lambda: linked(a, b), what="mesh")
    pub = Client.from_zookeeper(zk_server.hosts, mesh="test", zk_timeout=2)
    survivor = a if pub.node == "B" else b
    doomed = b if survivor is a else a
    with Client(survivor.address) as sc:
        sub = sc.subscribe("pubmove")
        warm_up(pub, "pubmove", [sub])
        first = pub.publish("pubmove", "before")
        assert collect(sub, 1)[0].seq == first
        assert doomed.stop() == 0  # clean stop: the znode goes at once
        wait_until(lambda: pub.node == survivor.name, timeout=10, what="the publisher to move")
        assert pub.wait_for_interest("pubmove")
        seq = pub.publish("pubmove", "after")
        got = collect(sub, 1)[0]
        assert (got.data, got.seq, got.origin) == ("after", seq, pub.origin)
        assert seq > first
    pub.close()


def test_from_zookeeper_with_no_nodes_is_a_clear_error(zk_server):
    with pytest.raises(RuntimeError, match="no node of mesh 'empty' registered"):
        Client.from_zookeeper(zk_server.hosts, mesh="empty")


def test_from_zookeeper_failover_with_history_recovers_every_message(zk_server, zk_node):
    """The same move, with --history at the publisher's node and recover=True:
    what was published while the client moved is replayed, and no gap remains."""
    rule = ("--history", "fo.>=100000/300s")
    b = zk_node("B", zk_server.hosts, *rule)
    c = zk_node("C", zk_server.hosts, *rule)
    wait_until(lambda: linked(b, c), what="B-C link")
    moves = []
    sub_client = Client.from_zookeeper(zk_server.hosts, mesh="test", zk_timeout=2,
                                       on_failover=lambda old, new: moves.append((old, new)))
    a = zk_node("A", zk_server.hosts, *rule)
    wait_until(lambda: linked(a, b, c), what="mesh")
    doomed = {"B": b, "C": c}[sub_client.node]
    with Client(a.address) as pub:
        sub = sub_client.subscribe("fo.x", recover=True)
        warm_up(pub, "fo.x", [sub])
        stop = threading.Event()
        thread, sent = _steady_publisher(pub, "fo.x", stop, rate=200)
        before = collect(sub, 50)
        doomed.kill()
        wait_until(lambda: moves, timeout=10, what="the client to move")
        wait_until(lambda: sub.recovery is not None, timeout=10, what="the recovery")
        after = collect(sub, 300, timeout=15)
        stop.set()
        thread.join()
    sub_client.close()
    seqs = [m.seq for m in before + after]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap, a duplicate or reordering"
    assert sub.recovery.recovered, sub.recovery
    assert sub.gaps == 0 and any(m.replayed for m in after)


def test_member_cache_reads_only_new_members_and_notices_a_replaced_one(zk_server):
    from discovery.zookeeper import MemberCache
    from mesh.zkmembers import members_path
    from mesh.envelope import PROTOCOL_VERSION

    def record(name, instance):
        return json.dumps({"name": name, "control": "tcp://127.0.0.1:1", "ingress": "tcp://127.0.0.1:2",
                           "out": "tcp://127.0.0.1:3", "remote": "tcp://127.0.0.1:4", "instance": instance,
                           "started": 1.0, "protocol": PROTOCOL_VERSION, "max_payload": 1024}).encode()

    zk = KazooClient(hosts=zk_server.hosts)
    zk.start()
    reads = []
    real_get = zk.get
    zk.get = lambda path, *a, **k: (reads.append(path), real_get(path, *a, **k))[1]
    try:
        path = members_path("cache")
        for name in ("a", "b", "c"):
            zk.create(f"{path}/{name}", record(name, "1"), makepath=True)
        cache = MemberCache("cache")
        assert sorted(cache.refresh(zk)) == ["a", "b", "c"] and len(reads) == 3
        zk.create(f"{path}/d", record("d", "1"))
        zk.delete(f"{path}/a")
        assert sorted(cache.refresh(zk)) == ["b", "c", "d"] and len(reads) == 4  # only d was read
        zk.delete(f"{path}/b")  # b restarts under its name between two looks
        zk.create(f"{path}/b", record("b", "2"))
        members = cache.refresh(zk)
        assert members["b"]["instance"] == "2"  # noticed from the parent's cversion: all read again
        assert cache.refresh(zk) == members and len(reads) == 7  # nothing changed: nothing read
    finally:
        zk.stop()
        zk.close()


def test_a_burst_of_joins_loses_nothing_on_the_links_already_up(zk_server, zk_node):
    """Joins restart each node's mesh proxy (coalesced, nodes/dataplane.py);
    messages on links that did not change wait in the queues meanwhile."""
    a = zk_node("A", zk_server.hosts)
    b = zk_node("B", zk_server.hosts)
    wait_until(lambda: linked(a, b), what="A and B")
    with Client(a.address) as pa, Client(b.address) as cb:
        sub = cb.subscribe("steady", pending_limit=100_000)
        warm_up(pa, "steady", [sub])
        stop = threading.Event()
        thread, sent = _steady_publisher(pa, "steady", stop, rate=1000)
        try:
            time.sleep(0.2)
            restarts = b.stats()["links"]["proxy_restarts"]
            joined = [zk_node(f"J{i}", zk_server.hosts) for i in range(4)]
            wait_until(lambda: linked(a, b, *joined), timeout=30, what="four joins linked")
            time.sleep(0.2)
        finally:
            stop.set()
            thread.join()
        assert b.stats()["links"]["proxy_restarts"] > restarts  # the joins did restart B's mesh proxy
        data = [m.data for m in collect(sub, sent[0], timeout=10)]
        assert data == list(range(sent[0])) and sub.gaps == 0, "lost or reordered while peers joined"
        print(f"[measure] {sent[0]} messages while 4 nodes joined, 0 lost")
