"""Faults under steady load, counted by sequence numbers: a node killed with SIGKILL in a
5-node ZooKeeper mesh, and a ZooKeeper ensemble that loses its quorum for 30 s.

Every publisher publishes on its own subject (``load.<node>``) at about 100 msg/s from
its own thread, and every subscriber (pattern ``load.>``) records ``(origin, subject,
seq)`` of everything it gets from its own thread. Loss and duplicates are then counted
per stream: a subscriber must hold, for each publisher, exactly the contiguous run of
sequence numbers that publisher used after the warm-up, in order, each once.
"""

import json
import threading
import time

from kazoo.client import KazooClient

from mesh import Client
from meshhelpers import WARM_UP, warm_up
from meshtest.nodeproc import linked, wait_until

RATE = 100  # messages per second per publisher


class LoadPublisher(threading.Thread):
    """Publishes ``{"i": n}`` on ``load.<name>`` at RATE msg/s; remembers the first and last seq."""

    def __init__(self, client, name):
        super().__init__(name=f"pub-{name}", daemon=True)
        self.client = client
        self.subject = f"load.{name}"
        self.first = None
        self.last = None
        self.count = 0
        self.stopped = threading.Event()
        self.error = None

    def run(self):
        next_at = time.monotonic()
        try:
            while not self.stopped.is_set():
                seq = self.client.publish(self.subject, {"i": self.count})
                if self.first is None:
                    self.first = seq
                self.last = seq
                self.count += 1
                next_at += 1 / RATE
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -1:  # the machine stalled: do not burst to catch up
                    next_at = time.monotonic()
        except Exception as exc:  # reported by the test
            self.error = exc

    def stop(self):
        self.stopped.set()
        self.join(10)
        assert not self.is_alive() and self.error is None, self.error


class Recorder(threading.Thread):
    """Reads a Subscription on its own thread and records (origin, subject, seq) of load messages."""

    def __init__(self, subscription, name):
        super().__init__(name=f"sub-{name}", daemon=True)
        self.subscription = subscription
        self.seen = []
        self.stopped = threading.Event()
        self.error = None

    def run(self):
        try:
            while not self.stopped.is_set():
                try:
                    message = self.subscription.get(timeout=0.2)
                except TimeoutError:
                    continue
                if message.data != WARM_UP:
                    self.seen.append((message.origin, message.subject, message.seq))
        except Exception as exc:  # reported by the test
            self.error = exc

    def last_seq(self, origin, subject):
        for o, s, seq in reversed(self.seen):
            if o == origin and s == subject:
                return seq
        return None

    def stream(self, origin, subject):
        return [seq for o, s, seq in self.seen if o == origin and s == subject]

    def stop(self):
        self.stopped.set()
        self.join(10)
        assert not self.is_alive() and self.error is None, self.error


def missing_and_duplicates(seqs):
    """(numbers missing inside the run, duplicates, out-of-order steps) of one stream."""
    if not seqs:
        return 0, 0, 0
    duplicates = len(seqs) - len(set(seqs))
    disorder = sum(1 for x, y in zip(seqs, seqs[1:]) if y <= x)
    return max(seqs) - min(seqs) + 1 - len(set(seqs)), duplicates, disorder


def assert_complete(recorder, publisher, where):
    """``recorder`` holds exactly publisher.first..publisher.last of the publisher's stream, in order."""
    got = recorder.stream(publisher.client.origin, publisher.subject)
    want = list(range(publisher.first, publisher.last + 1))
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = len(got) - len(set(got))
        raise AssertionError(f"{where}: stream {publisher.subject} has {len(got)} messages for {len(want)} "
                             f"published; {len(missing)} missing (first {missing[:10]}), {extra} duplicates, "
                             f"in order: {got == sorted(got)}")


def wait_delivered(recorders, publishers, timeout=30):
    def done():
        return all(r.last_seq(p.client.origin, p.subject) == p.last for r in recorders for p in publishers)
    wait_until(done, timeout=timeout, interval=0.1, what="every surviving stream to be delivered to the end")


# -- crash under load ----------------------------------------------------------------

def test_kill_9_under_load_loses_nothing_between_survivors_and_a_failover_client_counts_its_gap(
        zk_server, zk_node):
    names = ["N1", "N2", "N3", "N4", "N5"]
    nodes = {name: zk_node(name, zk_server.hosts, timeout="2") for name in names}
    wait_until(lambda: linked(*nodes.values()), timeout=30, what="a full 5-node mesh")
    moves = []
    roamer = Client.from_zookeeper(zk_server.hosts, mesh="test", zk_timeout=2,
                                   on_failover=lambda old, new: moves.append((old, new)))
    doomed = nodes[roamer.node]  # the node the ZooKeeper client landed on is the one to die
    survivors = [n for n in names if n != doomed.name]
    publishers, subscribers, clients = {}, {}, []
    try:
        for name in names:
            pub_client, sub_client = Client(nodes[name].address), Client(nodes[name].address)
            clients += [pub_client, sub_client]
            publishers[name] = LoadPublisher(pub_client, name)
            subscribers[name] = sub_client.subscribe("load.>")
        roaming = roamer.subscribe("load.>")
        everyone = list(subscribers.values()) + [roaming]
        for name in names:
            warm_up(publishers[name].client, f"load.{name}", everyone, timeout=20)
        recorders = {name: Recorder(subscribers[name], name) for name in names}
        roaming_recorder = Recorder(roaming, "roamer")
        for thread in [*recorders.values(), roaming_recorder, *publishers.values()]:
            thread.start()
        time.sleep(4)
        doomed.kill()  # SIGKILL
        killed_at = time.monotonic()
        publishers[doomed.name].stop()
        wait_until(lambda: moves, timeout=20, what="the ZooKeeper client to move off the killed node")
        moved_after = time.monotonic() - killed_at
        wait_until(lambda: linked(*[nodes[n] for n in survivors]), timeout=20, what="survivors to drop the dead node")
        time.sleep(4)
        for name in survivors:
            publishers[name].stop()
        alive_recorders = [recorders[n] for n in survivors] + [roaming_recorder]
        wait_delivered(alive_recorders, [publishers[n] for n in survivors])
        time.sleep(0.5)  # anything late (a duplicate) would arrive now
        for recorder in [*recorders.values(), roaming_recorder]:
            recorder.stop()

        # Between survivors: every stream complete, in order, no duplicates; no gaps anywhere.
        published = {n: publishers[n].last - publishers[n].first + 1 for n in names}
        for sub_name in survivors:
            for pub_name in survivors:
                assert_complete(recorders[sub_name], publishers[pub_name], f"subscriber at {sub_name}")
            # The dead node's publisher: what arrived is a contiguous run from its first message, once each.
            dead = recorders[sub_name].stream(publishers[doomed.name].client.origin, f"load.{doomed.name}")
            assert dead == list(range(publishers[doomed.name].first, publishers[doomed.name].first + len(dead)))
            assert len(dead) > RATE  # it published for 4 s before the kill
            assert subscribers[sub_name].gaps == 0 and subscribers[sub_name].malformed == 0
        delivered = sum(len(recorders[s].stream(publishers[p].client.origin, publishers[p].subject))
                        for s in survivors for p in survivors)

        # The client that was on the dead node moved once, and its gaps are exactly what it missed.
        assert roamer.failovers == 1
        assert moves == [(doomed.name, roamer.node)] and roamer.node in survivors
        missing = duplicates = disorder = 0
        for name in names:
            m, d, o = missing_and_duplicates(roaming_recorder.stream(publishers[name].client.origin,
                                                                     publishers[name].subject))
            missing, duplicates, disorder = missing + m, duplicates + d, disorder + o
        assert duplicates == 0 and disorder == 0
        assert missing > 0 and roaming.gaps == missing
        for name in survivors:  # after the move it caught up with every surviving stream
            assert roaming_recorder.last_seq(publishers[name].client.origin, publishers[name].subject) == \
                publishers[name].last
        print(f"[measure] kill -9 of {doomed.name} under load: published {published} "
              f"({sum(published.values())} messages); {delivered} deliveries between the 4 survivors, "
              f"0 lost, 0 duplicated, 0 gaps; the ZooKeeper client moved to {roamer.node} after "
              f"{moved_after:.2f} s and missed {missing} messages, reported as gaps={roaming.gaps}")
    finally:
        for publisher in publishers.values():
            publisher.stopped.set()
        for client in clients + [roamer]:
            client.close()


# -- ZooKeeper loses its quorum for 30 s ------------------------------------------------

def registered(hosts, mesh="test", timeout=10):
    """Names registered in ZooKeeper, or None if ZooKeeper does not serve."""
    zk = KazooClient(hosts=hosts, timeout=4)
    try:
        zk.start(timeout)
        path = f"/meshnode/{mesh}/nodes"
        return sorted(json.loads(zk.get(f"{path}/{child}")[0])["name"] for child in zk.get_children(path))
    except Exception:
        return None
    finally:
        zk.stop()
        zk.close()


def test_losing_the_zookeeper_quorum_for_30_s_loses_no_message_and_membership_recovers(zk_ensemble, zk_node):
    hosts = zk_ensemble.hosts
    names = ["A", "B", "C"]
    nodes = {name: zk_node(name, hosts, timeout="4") for name in names}
    wait_until(lambda: linked(*nodes.values()), timeout=30, what="a 3-node mesh")
    assert registered(hosts) == names
    publishers, subscribers, clients = {}, {}, []
    try:
        for name in names:
            pub_client, sub_client = Client(nodes[name].address), Client(nodes[name].address)
            clients += [pub_client, sub_client]
            publishers[name] = LoadPublisher(pub_client, name)
            subscribers[name] = sub_client.subscribe("load.>")
        for name in names:
            warm_up(publishers[name].client, f"load.{name}", list(subscribers.values()), timeout=20)
        recorders = {name: Recorder(subscribers[name], name) for name in names}
        for thread in [*recorders.values(), *publishers.values()]:
            thread.start()
        time.sleep(2)

        # Lose the quorum: stop the leader and one follower; the last server cannot serve alone.
        leader = zk_ensemble.leader()
        stopped = [leader, zk_ensemble.followers()[0]]
        for server in stopped:
            server.stop()
        lonely = [m for m in zk_ensemble if m not in stopped][0]
        wait_until(lambda: lonely.mode() is None, timeout=10, what="the last server to stop serving")
        outage_started = time.monotonic()
        counts_at_start = {n: len(recorders[n].seen) for n in names}
        time.sleep(15)
        mid = {n: len(recorders[n].seen) - counts_at_start[n] for n in names}
        assert linked(*nodes.values()), "membership changed without ZooKeeper"
        assert all(count > 15 * RATE for count in mid.values()), f"delivery slowed during the outage: {mid}"
        assert registered(lonely.hosts, timeout=5) is None, "ZooKeeper served without a quorum"
        time.sleep(max(0.0, 30 - (time.monotonic() - outage_started)))
        outage = time.monotonic() - outage_started
        during = {n: len(recorders[n].seen) - counts_at_start[n] for n in names}
        assert linked(*nodes.values())

        # Quorum back: the members restart on their ports and data dirs.
        for server in stopped:
            server.start(timeout=30, wait_serving=False)
        zk_ensemble.wait_for_quorum(timeout=30)
        recovered_at = time.monotonic()
        wait_until(lambda: registered(hosts) == names, timeout=30, interval=0.5,
                   what="A, B and C registered again")
        registered_after = time.monotonic() - recovered_at
        wait_until(lambda: linked(*nodes.values()), timeout=20, what="the mesh after the outage")

        # A new node joins the mesh and is wired in both ways.
        d = zk_node("D", hosts, timeout="4")
        wait_until(lambda: linked(*nodes.values(), d), timeout=30, what="D to join after the outage")
        with Client(d.address) as cd, Client(nodes["A"].address) as ca:
            at_a = ca.subscribe("join.d")
            warm_up(cd, "join.d", [at_a], timeout=20)
            at_d = cd.subscribe("load.>")
            deadline = time.monotonic() + 20
            origins = set()
            while origins != {publishers[n].client.origin for n in names}:
                assert time.monotonic() < deadline, f"D got load from {origins} only"
                try:
                    origins.add(at_d.get(timeout=1).origin)
                except TimeoutError:
                    pass
        time.sleep(2)
        for publisher in publishers.values():
            publisher.stop()
        wait_delivered(list(recorders.values()), list(publishers.values()))
        time.sleep(0.5)
        for recorder in recorders.values():
            recorder.stop()
        for sub_name in names:
            for pub_name in names:
                assert_complete(recorders[sub_name], publishers[pub_name], f"subscriber at {sub_name}")
            assert subscribers[sub_name].gaps == 0 and subscribers[sub_name].malformed == 0
        published = {n: publishers[n].last - publishers[n].first + 1 for n in names}
        print(f"[measure] ZooKeeper quorum lost for {outage:.1f} s under load: {sum(during.values())} deliveries "
              f"during the outage, {sum(published.values())} messages published in all ({published}), "
              f"{sum(len(r.seen) for r in recorders.values())} deliveries, 0 lost, 0 duplicated, 0 gaps; "
              f"registered again {registered_after:.1f} s after the quorum returned; D joined")
    finally:
        for publisher in publishers.values():
            publisher.stopped.set()
        for client in clients:
            client.close()
