"""Job replicas (``--job-replicas``, nodes/queues/replicas.py): the holder of
1,000 outstanding jobs is killed with ``kill -9``; its successor among its
replicas takes over the jobs and the workers go on. Real ZooKeeper (whose
session timeout, 2 s here, is how membership notices the death) and real
node and worker processes."""

import json
import os
import subprocess
import time

import pytest
from hookhelpers import LOOPBACK, Receiver, ready
from jobworker import Workers
from test_durable import disk_written

from mesh import Client
from meshtest.nodeproc import free_port, linked, wait_until
from nodes.placement import replicas_of, successor

JOBS = 1000
FAIL_EVERY = 10  # a job whose number is a multiple of it fails its first attempt: it needs its holder again
DEADLINE = 15.0  # longer than the workers take to go through what waits at them after the takeover, with
# room for their acknowledgements to reach the successor (a silent q1 answers nothing for the client timeout, 5 s)


def start_nodes(zk_server, zk_node, replicas, *extra, names=("q1", "q2", "q3")):
    nodes = [zk_node(name, zk_server.hosts, "--job-replicas", str(replicas), *extra) for name in names]
    wait_until(lambda: linked(*nodes), timeout=20, what=f"{', '.join(names)} linked")
    return nodes


def copies_of(node, holder):
    """How many of ``holder``'s jobs ``node`` keeps copies of (every instance of it)."""
    shadows = node.stats().get("job_replicas", {}).get("shadows", {})
    return sum(count for key, count in shadows.items() if key.startswith(f"{holder}/"))


def every_job_done(workers, jobs=JOBS, timeout=120):
    wait_until(lambda: {line["data"] for line in workers.done} == set(range(jobs)), timeout=timeout,
               what="every job done")


def publish_jobs(q1, worker_nodes, workers, seconds):
    """A worker at each of ``worker_nodes`` (``seconds`` a job), JOBS jobs published at q1; returns once 50 are done."""
    for node in worker_nodes:
        workers.start(node.address, seconds, DEADLINE, FAIL_EVERY)
    wait_until(lambda: q1.stats().get("queues", {}).get("reachable") == len(worker_nodes), timeout=15,
               what="the workers reachable")
    with Client(q1.address) as publisher:
        for i in range(JOBS):
            publisher.publish("job.x", i)
        publisher.flush()
    wait_until(lambda: len(workers.done) >= 50, timeout=30, what="50 jobs done")


def jobs_outstanding_then_kill(zk_server, zk_node, replicas, workers):
    """The issue's scenario: 3 workers on q2 and q3, 1,000 jobs published at q1, q1 killed with
    ``kill -9`` once 50 are done. Returns (the nodes, when q1 was killed, its successor, the jobs q1 held)."""
    q1, q2, q3 = start_nodes(zk_server, zk_node, replicas)
    publish_jobs(q1, (q2, q2, q3), workers, 0.01)
    held = q1.stats()["queues"]["jobs"]["held"]
    q1.kill()
    print(f"q1 killed holding {held} jobs, {len(workers.done)} done")
    return (q1, q2, q3), time.monotonic(), successor("q1", {"q2", "q3"}, replicas), held


def test_a_killed_holders_jobs_are_all_done_by_its_successor(zk_server, zk_node):
    """--job-replicas 2: every one of the 1,000 jobs is done at least once, the
    duplicates counted; the workers go on finishing jobs after the kill, the
    successor's among them (the first-attempt failures need it: only a holder
    gives a job out again). The successor holds each adopted job for the worker
    that was doing it: the workers' acknowledgements, refused by the dead q1,
    reach it (mesh/settle.py), so what they were doing is not given out again."""
    workers = Workers()
    try:
        (_, q2, q3), killed, heir, held = jobs_outstanding_then_kill(zk_server, zk_node, 2, workers)
        heir_node = q2 if heir == "q2" else q3
        every_job_done(workers)
        wait_until(lambda: heir_node.stats()["queues"]["jobs"]["held"] == 0, timeout=30,
                   what="the successor to hold nothing")
        heir_jobs = heir_node.stats()["queues"]["jobs"]
    finally:
        workers.stop()
    adopted = heir_jobs["adopted"]
    times, duplicates = workers.tally()
    after = [line for line in workers.done if line["at"] > killed]
    by_heir = [line for line in after if line["holder"] == heir]
    takeover = min(line["at"] for line in by_heir) - killed
    print(f"{JOBS} jobs, {held} held at q1 when killed: {len(times)} done, {duplicates} duplicates; "
          f"{heir} adopted {adopted} ({heir_jobs['resumed']} kept for their worker), acknowledged "
          f"{heir_jobs['acked']}; done after the kill: {len(after)} ({len(by_heir)} given out by {heir}); "
          f"first job {heir} gave out done {takeover:.2f} s after the kill")
    assert set(times) == set(range(JOBS))  # none lost
    assert 0 < adopted <= JOBS and heir_jobs["resumed"] > 0
    assert heir_jobs["acked"] > len(by_heir)  # acknowledgements of q1's deliveries, settled at the successor
    assert duplicates < held / 2  # each outstanding job given out again: about as many duplicates as held
    assert {i for i in range(0, JOBS, FAIL_EVERY)} <= {line["data"] for line in by_heir}  # retried by the heir
    assert all(line["holder"] in ("q1", heir) for line in workers.done)


def test_a_holder_whose_replica_died_first_copies_its_jobs_to_the_next_and_loses_none_when_it_dies(
        zk_server, zk_node):
    """--job-replicas 2, four nodes: the replica of q1 (the holder of 1,000
    outstanding jobs) is killed with ``kill -9`` first; once membership drops
    it q1 sends a full copy to its next replica; then q1 is killed too. That
    replica takes over: every job is done at least once, none lost."""
    names = ("q1", "q2", "q3", "q4")
    nodes = dict(zip(names, start_nodes(zk_server, zk_node, 2, names=names)))
    first = replicas_of("q1", names, 2)[0]
    rest = set(names) - {"q1", first}
    second = successor("q1", rest, 2)
    q1, next_node = nodes["q1"], nodes[second]
    workers = Workers()
    try:
        publish_jobs(q1, [nodes[name] for name in sorted(rest)], workers, 0.02)
        nodes[first].kill()
        wait_until(lambda: q1.stats()["job_replicas"]["replicas"] == [second], timeout=20,
                   what=f"q1 to copy its jobs to {second} instead of {first}")

        def copied():  # the full copy and every change since have reached it
            return copies_of(next_node, "q1") and q1.stats()["job_replicas"]["unsent"] == 0
        wait_until(copied, timeout=20, what=f"{second} to hold a copy of q1's jobs")
        held = q1.stats()["queues"]["jobs"]["held"]
        q1.kill()
        every_job_done(workers)
        adopted = next_node.stats()["queues"]["jobs"]["adopted"]
    finally:
        workers.stop()
    times, duplicates = workers.tally()
    print(f"{first} killed, then q1 holding {held}: {second} adopted {adopted}; {len(times)} of {JOBS} done, "
          f"{duplicates} duplicates")
    assert set(times) == set(range(JOBS)) and 0 < adopted <= JOBS


def test_the_successor_copies_what_it_adopted_on_and_its_own_successor_takes_over_when_it_dies_too(
        zk_server, zk_node):
    """--job-replicas 2: q1 is killed with ``kill -9`` holding 1,000
    outstanding jobs; its successor adopts them and copies them to its own
    replica, the third node; then the successor is killed too. The third
    node takes over: every job is done at least once, none lost."""
    nodes = dict(zip(("q1", "q2", "q3"), start_nodes(zk_server, zk_node, 2)))
    heir = successor("q1", {"q2", "q3"}, 2)
    last = ({"q2", "q3"} - {heir}).pop()
    workers = Workers()
    try:
        publish_jobs(nodes["q1"], (nodes[last], nodes[last]), workers, 0.02)
        nodes["q1"].kill()
        wait_until(lambda: nodes[heir].stats()["queues"]["jobs"]["adopted"], timeout=30, what=f"{heir} to adopt")

        def copied_on():  # every copy the heir sent so far has reached the last node (none in its last batch)
            return copies_of(nodes[last], heir) and nodes[heir].stats()["job_replicas"]["unsent"] == 0
        wait_until(copied_on, timeout=20, what=f"{heir} to copy what it adopted to {last}")
        nodes[heir].kill()
        every_job_done(workers)
        adopted = nodes[last].stats()["queues"]["jobs"]["adopted"]
    finally:
        workers.stop()
    times, duplicates = workers.tally()
    print(f"q1 killed, then {heir}: {last} adopted {adopted}; {len(times)} of {JOBS} done, "
          f"{duplicates} duplicates")
    assert set(times) == set(range(JOBS)) and adopted > 0


def test_a_holder_killed_and_restarted_at_once_on_its_disk_keeps_its_jobs_and_its_successor_adopts_none(
        zk_server, zk_node, tmp_path):
    """--job-replicas 2 and --data-dir: q1, holding 1,000 outstanding jobs,
    is killed with ``kill -9`` and started again at once on its directory.
    Its member record ``resumes`` the killed instance, so its replicas drop
    their copies instead of the successor adopting them: every job is done
    at least once, and not nearly all of them twice (both q1 and its
    successor gave them out when the successor adopted)."""
    ports = {name: free_port() for name in ("q1", "q2", "q3")}

    def start(name):
        return zk_node(name, zk_server.hosts, "--port", str(ports[name]), "--job-replicas", "2",
                       "--data-dir", str(tmp_path / name))
    nodes = {name: start(name) for name in ports}
    wait_until(lambda: linked(*nodes.values()), timeout=20, what="q1, q2 and q3 linked")
    heir = successor("q1", {"q2", "q3"}, 2)
    workers = Workers()
    try:
        publish_jobs(nodes["q1"], (nodes["q2"], nodes["q2"], nodes["q3"]), workers, 0.01)
        held = nodes["q1"].stats()["queues"]["jobs"]["held"]
        nodes["q1"].kill()
        nodes["q1"] = start("q1")
        every_job_done(workers)
        wait_until(lambda: nodes["q1"].stats()["queues"]["jobs"]["held"] == 0, timeout=30, what="q1 to hold nothing")
        restored = nodes["q1"].stats()["queues"]["jobs"]["restored"]
        heir_stats = nodes[heir].stats()
    finally:
        workers.stop()
    times, duplicates = workers.tally()
    print(f"q1 killed holding {held}, restarted at once: restored {restored}; {heir} adopted "
          f"{heir_stats['queues'].get('jobs', {}).get('adopted', 0)}; {duplicates} duplicates")
    assert set(times) == set(range(JOBS)) and restored > 0
    assert heir_stats["job_replicas"]["left_to_holder"] == 1 and heir_stats["job_replicas"]["adopted"] == 0
    assert duplicates < held / 2


def test_a_holder_restarted_on_a_disk_that_was_full_takes_back_what_its_disk_lacks_from_its_successor(
        zk_server, zk_node, tmp_path):
    """--job-replicas 2; q1 runs with --data-dir on a 1 MB tmpfs. 50 jobs
    are written to its disk; the disk is filled; 50 more are held in q1's
    memory and copied to its successor only. q1 is killed with ``kill -9``
    and started again at once on its directory (space back): it restores
    the first 50, and its successor, which leaves the jobs to it
    (``resumes``), sends them back (``job_return``): q1 takes the 50 its
    disk lacked. Every job is done: none lost."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    ports = {name: free_port() for name in ("q1", "q2", "q3")}

    def start(name):
        return zk_node(name, zk_server.hosts, "--port", str(ports[name]), "--job-replicas", "2",
                       *(("--data-dir", str(disk / "q1")) if name == "q1" else ()))
    nodes = {name: start(name) for name in ports}
    heir = nodes[successor("q1", {"q2", "q3"}, 2)]
    workers = Workers()
    try:
        wait_until(lambda: linked(*nodes.values()), timeout=20, what="q1, q2 and q3 linked")
        workers.start(nodes["q2"].address, 60.0, 3.0)  # takes a few and holds them: the rest wait at q1
        wait_until(lambda: nodes["q1"].stats().get("queues", {}).get("reachable") == 1, timeout=15,
                   what="the worker")

        def copied(count):
            return copies_of(heir, "q1") == count
        with Client(nodes["q1"].address) as publisher:
            for i in range(50):
                publisher.publish("job.x", i)
            publisher.flush()
            wait_until(lambda: disk_written(nodes["q1"], "jobs") and copied(50), what="50 jobs on q1's disk")
            subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=4k"], capture_output=True,
                           check=False)  # until the disk is full
            for i in range(50, 100):
                publisher.publish("job.x", i)
            publisher.flush()
            wait_until(lambda: nodes["q1"].stats()["queues"]["jobs"]["disk"]["errors"] >= 1 and copied(100),
                       timeout=20, what="50 more jobs copied to the successor and not written")
        nodes["q1"].kill()
        (disk / "filler").unlink()
        nodes["q1"] = start("q1")
        wait_until(lambda: heir.stats()["job_replicas"]["left_to_holder"] == 1, timeout=20,
                   what="the successor to give q1 its jobs back")
        for _ in range(2):
            workers.start(nodes["q3"].address, 0.0, 3.0)
        every_job_done(workers, 100, timeout=60)
        q1_jobs, q1_replicas = nodes["q1"].stats()["queues"]["jobs"], nodes["q1"].stats()["job_replicas"]
        heir_replicas = heir.stats()["job_replicas"]
    finally:
        workers.stop()
        nodes["q1"].kill()
        subprocess.run(["umount", str(disk)], check=True)
    times, duplicates = workers.tally()
    print(f"q1 restored {q1_jobs['restored']} from its disk and took back {q1_replicas['taken_back']} from "
          f"its successor ({heir_replicas['given_back']} given back); {len(times)} of 100 done, "
          f"{duplicates} duplicates")
    assert set(times) == set(range(100))
    assert q1_jobs["restored"] < 100 and q1_replicas["taken_back"] == heir_replicas["given_back"] > 0
    assert q1_jobs["restored"] + q1_replicas["taken_back"] == 100 and heir_replicas["adopted"] == 0


def test_without_replicas_a_killed_holders_jobs_are_lost(zk_server, zk_node):
    """--job-replicas 1, the same scenario: the jobs that needed their holder
    again (a failed first attempt) are never done, and no node takes any over."""
    workers = Workers()
    try:
        (_, q2, q3), _, heir, _ = jobs_outstanding_then_kill(zk_server, zk_node, 1, workers)
        assert heir is None
        wanted = {i for i in range(JOBS) if i % FAIL_EVERY}
        wait_until(lambda: {line["data"] for line in workers.done} >= wanted, timeout=60,
                   what="every job that did not fail done")
        time.sleep(DEADLINE + 5)  # past when the failed ones would have come again
        done = {line["data"] for line in workers.done}
        adopted = [node.stats()["queues"]["jobs"]["adopted"] for node in (q2, q3)]
    finally:
        workers.stop()
    print(f"without replicas: {len(done)} of {JOBS} done, {JOBS - len(done)} lost")
    assert adopted == [0, 0]
    assert len(done) < JOBS and done == wanted


def test_webhook_deliveries_outlive_their_holder(zk_server, zk_node):
    """Messages published at q1 while the receiver fails are held at q1 as delivery
    jobs, spread over the three nodes' deliverers (q1's own among them); q1 is
    killed with ``kill -9``; once the receiver answers again every message has
    been delivered, each under one webhook-id."""
    nodes = start_nodes(zk_server, zk_node, 2, *LOOPBACK)
    q1 = nodes[0]
    state, succeeded = {"failing": True}, set()  # numbers (from 1) of the requests answered 200

    def answer(n):
        if state["failing"]:
            return 503
        succeeded.add(n)
        return 200

    receiver = Receiver(answer)
    try:
        with Client(q1.address) as client:
            client.register_hook("kr", receiver.url, max_age=300)
            wait_until(lambda: ready(nodes, 1), timeout=20, what="every node to deliver")
            for i in range(30):
                client.publish("hooks.kr.x", i)
            client.flush()
            wait_until(lambda: all(h["retried"] for n in nodes for h in n.stats().get("hooks", [])),
                       timeout=15, what="every node's deliverer to retry")
        heir = successor("q1", {"q2", "q3"}, 2)
        heir_node = nodes[1] if heir == "q2" else nodes[2]
        q1.kill()
        wait_until(lambda: heir_node.stats()["queues"]["jobs"]["adopted"], timeout=30, what="the takeover")
        state["failing"] = False
        delivered = {}

        def all_delivered():
            delivered.clear()
            for n in sorted(succeeded):
                headers, body = receiver.requests[n - 1]
                delivered.setdefault(json.loads(body)["data"], set()).add(headers["webhook-id"])
            return set(delivered) == set(range(30))

        wait_until(all_delivered, timeout=90, what="every message delivered")
        adopted = heir_node.stats()["queues"]["jobs"]["adopted"]
    finally:
        receiver.close()
    delivered_twice = sum(1 for n in succeeded) - len(delivered)
    print(f"webhooks: {heir} adopted {adopted}; {len(receiver.requests)} POSTs, {len(succeeded)} delivered "
          f"for 30 messages ({delivered_twice} duplicates)")
    assert sorted(delivered) == list(range(30))  # none lost
    assert all(len(ids) == 1 for ids in delivered.values())  # the same webhook-id after the takeover


def test_bad_copies_are_clear_errors_and_a_change_before_a_full_copy_asks_for_one(start_node):
    node = start_node("A")
    good = {"id": "w:o/1/1", "group": "w", "pattern": "job.>", "settings": {"deadline": 5.0, "attempts": 3},
            "subject": "job.x", "data": 1, "origin": "o", "epoch": 1, "seq": 1, "carried": {}, "attempt": 1}
    fields = {"holder": "B", "instance": "i1", "copies": 2}
    for bad in ({**fields, "holder": ""}, {**fields, "copies": 1}, {**fields, "held": [{**good, "seq": -1}]},
                {**fields, "held": [{**good, "settings": {}}]}, {**fields, "released": [3]},
                {**fields, "reset": "yes"}, {**fields, "held": [{**good, "member": 5}]},
                {**fields, "held": [{**good, "deadline": "soon"}]}):
        reply = node.request("job_copies", **bad)
        assert reply["ok"] is False and reply["error"] == "bad_request", (bad, reply)
    reply = node.request("job_copies", **fields, held=[good])  # no full copy of B's jobs came first
    assert reply["error"] == "need_snapshot"
    assert node.request("job_copies", **fields, reset=True, held=[good])["ok"] is True
    assert node.request("job_copies", **fields, held=[{**good, "member": "m1", "deadline": 1.8e9}])["ok"] is True
    assert node.request("job_copies", **fields, released=[good["id"]])["ok"] is True
    assert node.stats()["job_replicas"]["shadows"] == {"B/i1": 0}
    for bad in ({"instance": "i0", "held": []}, {"held": [good]}):  # A resumes no instance: it restarted on no disk
        reply = node.request("job_return", **bad)
        assert reply["ok"] is False and reply["error"] == "bad_request", (bad, reply)


def test_job_replicas_below_one_is_a_clear_start_up_error():
    import subprocess
    import sys

    from meshtest.nodeproc import MESHNODE

    result = subprocess.run([sys.executable, MESHNODE, "run", "--name", "X", "--port", "0", "--job-replicas", "0"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0 and "--job-replicas" in result.stderr and "Traceback" not in result.stderr
