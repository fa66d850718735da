"""History replicas (--history-replicas, nodes/placement.py): a node's history is
also kept by the members placement names, so a `kill -9` of the node it was
published at loses nothing that reached a replica, and a recovery merges the
copies by (origin, epoch, seq) once that node is back."""

import time
from types import SimpleNamespace

from meshhelpers import drain, warm_up
from meshtest.nodeproc import free_port, wait_until
from test_durable import disk_written

from mesh import Client, Position
from nodes.placement import replicas_of

RULES = ("--history", "d.>=100000/3600s", "--history", "w.>=10/3600s")
NAMES = ("A", "B", "C")
SENT = 2000
READ_LIVE = 100  # the reader's position: after the first READ_LIVE messages


def recorded(node):
    return node.stats()["history"]["recorded"]


def recover(node, since):
    """Every message of d.x a subscription at ``node`` with ``since`` gets, and its Recovery."""
    with Client(node.address) as reader:
        sub = reader.subscribe("d.>", since=since)
        got = drain(sub)
    return [m.data for m in got if m.subject == "d.x"], sub.recovery


def publish_until(publisher, subject, done, what):
    def attempt():
        publisher.publish(subject, 0)
        publisher.flush()
        return done()
    wait_until(attempt, what=what)


def kill_the_holder_and_recover(zk_server, zk_node, tmp_path, replicas, restart_the_replica=False,
                                names=NAMES):
    """Nodes ``names`` recording d.> with ``replicas``; SENT messages published at
    the holder h, a reader at s (neither h nor h's replica r) having read the
    first READ_LIVE; (``restart_the_replica``: r killed with `kill -9` and
    started again on its directory; with a fourth name, r killed for good and
    the next replica in placement's order catching up, r then;) h killed with
    `kill -9`. Returns what a recovery at s
    gets with the reader's position (``after``, ``by_position``) and with a
    time (``since``, ``by_time``), the node processes, their names and a
    function that starts one again on its port and directory."""
    holder = names[0]
    replica, *later = replicas_of(holder, names, len(names))  # R=2 places h's copy on the first
    reader_node = next(name for name in names if name not in (holder, replica, *later[:len(names) - 3]))
    ports = {name: free_port() for name in names}

    def start(name):
        return zk_node(name, zk_server.hosts, "--port", str(ports[name]), *RULES,
                       "--history-replicas", str(replicas), "--data-dir", str(tmp_path / name))

    nodes = {name: start(name) for name in names}
    h, r, s = nodes[holder], nodes[replica], nodes[reader_node]
    wait_until(lambda: all(len(node.peer_names()) == len(names) - 1 for node in nodes.values()), timeout=15,
               what="the mesh")
    if replicas > 1:
        assert r.stats()["history"]["following"] == [holder]
        assert h.stats()["history"]["following"] != [holder]
    with Client(h.address) as publisher, Client(s.address) as reader:
        live = reader.subscribe("d.>")
        if replicas > 1:  # the replica's recorder subscriptions have reached h's publishers
            publish_until(publisher, "w.x", lambda: recorded(r) > 0, "r to record what is published at h")
        warm_up(publisher, "d.warm", [live])
        began = time.time() - 60  # the time recovery: everything
        for i in range(READ_LIVE):
            publisher.publish("d.x", i)
        publisher.flush()
        got = [m for m in drain(live, 1.0) if m.subject == "d.x"]
        assert [m.data for m in got] == list(range(READ_LIVE))
        position = live.position
        live.unsubscribe()
        for i in range(READ_LIVE, SENT):
            publisher.publish("d.x", i)
        publisher.flush()
        origin = publisher.origin
    keeper = r if replicas > 1 else h
    wait_until(lambda: recorded(h) >= SENT and disk_written(h, "history") and recorded(keeper) >= SENT
               and (not restart_the_replica or disk_written(r, "history")),
               timeout=20, what="the history kept")
    if restart_the_replica:
        r.kill()
        r = nodes[replica] = start(replica)
        assert recorded(r) >= SENT  # read back from its own disk, before it follows h again
        wait_until(lambda: all(len(node.peer_names()) == len(names) - 1 for node in nodes.values()), timeout=20,
                   what="r back in the mesh")
    if len(names) > 3:
        r.kill()
        replica, r = later[0], nodes[later[0]]
        wait_until(lambda: r.stats()["history"]["following"] == [holder]
                   and r.stats()["history"]["caught_up"]["done"] >= 1, timeout=20,
                   what=f"{replica}, h's replica now, to catch up on what h kept")
    h.kill()
    wait_until(lambda: holder not in s.peer_names() and holder not in r.peer_names(), timeout=20,
               what="membership to drop h")
    (after, by_position), (since, by_time) = recover(s, position), recover(s, Position({}, began))
    return SimpleNamespace(after=after, by_position=by_position, since=since, by_time=by_time, origin=origin,
                           position=position, began=began, nodes=nodes, holder=holder, replica=replica, reader=reader_node,
                           start=start)


def test_a_replica_answers_for_a_holder_killed_with_kill_9_and_the_copies_merge_when_it_is_back(
        zk_server, zk_node, tmp_path):
    """--history-replicas 2: after `kill -9` of the node SENT messages were
    published at, a recovery at a third node gets every message after the
    reader's position (and every one since a time) once, in order, from the
    replica; h started again on its directory: both copies answer, and the
    recovery still gets every message once, in order."""
    run = kill_the_holder_and_recover(zk_server, zk_node, tmp_path, 2)
    assert run.after == list(range(READ_LIVE, SENT))
    assert run.by_position.recovered and run.by_position.streams[(run.origin, "d.x")] == "complete"
    assert run.since == list(range(SENT))
    assert run.by_time.recovered, run.by_time
    r, s = run.nodes[run.replica], run.nodes[run.reader]
    assert recorded(r) >= SENT + 1  # d.x and w.x published at h
    assert recorded(s) == 0  # nothing here: the replica's copy is what answered

    h = run.start(run.holder)
    wait_until(lambda: run.holder in s.peer_names() and run.holder in r.peer_names(), timeout=20, what="h back")
    assert recorded(h) >= SENT  # its own copy, read back from its disk
    wait_until(lambda: r.stats()["history"]["following"] == [run.holder], what="r to follow h again")
    for since, first in ((run.position, READ_LIVE), (Position({}, run.began), 0)):
        got, recovery = recover(s, since)
        assert got == list(range(first, SENT)), recovery  # each once, in order: the copies merged
        assert recovery.recovered, recovery


def test_a_replica_restarted_from_its_disk_still_answers_for_a_holder_killed_after(zk_server, zk_node, tmp_path):
    """--history-replicas 2 and --data-dir: the replica is killed with `kill
    -9` and started again on its directory, then the holder is killed: the
    copy the replica read back from its disk answers, every message once, in
    order."""
    run = kill_the_holder_and_recover(zk_server, zk_node, tmp_path, 2, restart_the_replica=True)
    assert run.after == list(range(READ_LIVE, SENT))
    assert run.by_position.recovered, run.by_position
    assert run.since == list(range(SENT)) and run.by_time.recovered, run.by_time
    assert recorded(run.nodes[run.reader]) == 0


def test_a_replica_that_takes_over_from_a_dead_one_catches_up_and_answers_for_the_holder(zk_server, zk_node,
                                                                                         tmp_path):
    """--history-replicas 2, four nodes: h's replica is killed with `kill -9`;
    the next node in placement's order becomes h's replica and copies what h
    already kept; then h is killed too: the recovery gets every message once,
    in order, from the new replica."""
    run = kill_the_holder_and_recover(zk_server, zk_node, tmp_path, 2, names=("A", "B", "C", "D"))
    assert run.after == list(range(READ_LIVE, SENT))
    assert run.by_position.recovered and run.by_position.streams[(run.origin, "d.x")] == "complete"
    assert run.since == list(range(SENT)) and run.by_time.recovered, run.by_time
    caught_up = run.nodes[run.replica].stats()["history"]["caught_up"]
    assert caught_up["messages"] >= SENT, caught_up
    assert recorded(run.nodes[run.reader]) == 0


def test_without_replicas_a_holder_killed_with_kill_9_takes_its_history_along(zk_server, zk_node, tmp_path):
    """--history-replicas 1 (the default): the same `kill -9` leaves the
    stream unknown, and a recovery by time replays none of it."""
    run = kill_the_holder_and_recover(zk_server, zk_node, tmp_path, 1)
    assert run.after == [] and run.since == []
    assert run.by_position.streams[(run.origin, "d.x")] == "unknown" and not run.by_position.recovered


def test_a_replica_count_that_cannot_be_used_is_a_clear_start_up_error():
    import subprocess
    import sys

    from meshtest.nodeproc import MESHNODE

    for extra, said in ((["--history", "d.>=10/60s", "--history-replicas", "0"], "not a positive integer"),
                        (["--history-replicas", "2"], "--history-replicas needs --history rules")):
        result = subprocess.run([sys.executable, MESHNODE, "run", "--name", "X", "--port", "0", *extra],
                                capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode != 0 and said in result.stderr and "Traceback" not in result.stderr, result.stderr
