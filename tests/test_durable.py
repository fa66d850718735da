"""History and held jobs on disk (--data-dir: nodes/disk.py, nodes/history/store.py,
nodes/queues/jobstore.py): a node killed with `kill -9` and started again on the
same directory answers for its history and does the jobs it held."""

import time

from jobworker import Workers
from meshhelpers import drain, warm_up
from meshtest.nodeproc import free_port, linked, wait_until

from mesh import Client, Position


def disk_written(node, part):
    """True once ``part`` ("history", or the queues' "jobs") has nothing waiting for the disk."""
    stats = node.stats()
    section = stats.get("history") if part == "history" else stats.get("queues", {}).get("jobs")
    return bool(section) and section["disk"]["pending"] == 0 and section["disk"]["written"] > 0


def test_history_outlives_a_kill_9_of_the_publishers_node(start_node, tmp_path):
    """3,000 + 1,000 messages kept, 50 of which 40 evicted; A killed and started
    again on the same directory: a recovery at B gets every kept message once,
    in order, and is told the evicted stream is evicted."""
    port, data = free_port(), str(tmp_path / "a")
    rules = ("--history", "d.>=100000/3600s", "--history", "e.>=10/3600s", "--data-dir", data)
    a = start_node("A", "--port", str(port), *rules)
    b = start_node("B", peers=[a])
    wait_until(lambda: linked(a, b), what="A and B linked")
    began = time.time()
    with Client(a.address) as publisher, Client(a.address) as watcher:
        warm_up(publisher, "d.warm", [watcher.subscribe("d.warm")])
        for i in range(3000):
            publisher.publish("d.x", {"i": i})
            if i < 1000:
                publisher.publish("d.y", {"i": i})
            if i < 50:
                publisher.publish("e.x", i)
        publisher.flush()
        origin = publisher.origin
        wait_until(lambda: a.stats()["history"]["recorded"] >= 4050 and disk_written(a, "history"),
                   what="A to write its history")
    a.kill()
    a = start_node("A", "--port", str(port), *rules)
    wait_until(lambda: linked(a, b), timeout=15, what="A back")
    assert a.stats()["history"]["recorded"] >= 4050  # read back from the disk
    with Client(b.address) as reader:
        sub = reader.subscribe("d.>", since=Position({}, began))
        got = drain(sub)  # also the warm-up messages on d.warm
        evicted = reader.subscribe("e.>", since=Position({}, began)).recovery
    by_subject = {subject: [m.data["i"] for m in got if m.subject == subject and m.origin == origin]
                  for subject in ("d.x", "d.y")}
    assert by_subject == {"d.x": list(range(3000)), "d.y": list(range(1000))}  # every one once, in order
    assert sub.recovery.recovered and sub.gaps == 0
    assert evicted.streams == {(origin, "e.x"): "evicted"}  # what it had evicted is still said


def test_held_jobs_outlive_a_kill_9_of_their_holder(start_node, tmp_path):
    """300 jobs held at A, being worked on by 2 workers at B; A killed with
    `kill -9` and started again on the same directory: every job is done at
    least once, the duplicates counted. A holds each restored job for the
    worker that had it until its deadline, and the workers' acknowledgements,
    sent again until A is back (mesh/settle.py), settle them there: few are
    done twice (when A gave every restored job out again at once, nearly all
    were)."""
    port, data = free_port(), str(tmp_path / "a")
    a = start_node("A", "--port", str(port), "--data-dir", data)
    b = start_node("B", peers=[a])
    wait_until(lambda: linked(a, b), what="A and B linked")
    workers = Workers()
    try:
        for _ in range(2):
            workers.start(b.address, 0.05)
        wait_until(lambda: a.stats().get("queues", {}).get("reachable") == 2, timeout=15, what="the workers")
        with Client(a.address) as publisher:
            for i in range(300):
                publisher.publish("job.x", i)
            publisher.flush()
            wait_until(lambda: len(workers.done) >= 20 and disk_written(a, "jobs"), what="work under way")
        a.kill()
        done_before = len(workers.done)
        a = start_node("A", "--port", str(port), "--data-dir", data)
        wait_until(lambda: {line["data"] for line in workers.done} == set(range(300)), timeout=60,
                   what="every job done")
        wait_until(lambda: a.stats()["queues"]["jobs"]["held"] == 0, timeout=30, what="A to hold nothing")
        jobs = a.stats()["queues"]["jobs"]
    finally:
        workers.stop()
    times, duplicates = workers.tally()
    print(f"done before the kill: {done_before}; restored: {jobs['restored']} ({jobs['resumed']} kept for their "
          f"worker); acknowledged at A after its restart: {jobs['acked']}; duplicates: {duplicates}")
    assert 0 < jobs["restored"] <= 300 - 20 + duplicates
    assert set(times) == set(range(300))  # none lost
    assert jobs["resumed"] > 0 and jobs["acked"] > jobs["restored"] / 2  # the workers' acks reached it again
    assert duplicates < jobs["restored"] / 2


def test_a_data_dir_that_cannot_be_used_is_a_clear_start_up_error(tmp_path):
    import subprocess
    import sys

    from meshtest.nodeproc import MESHNODE

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = subprocess.run([sys.executable, MESHNODE, "run", "--name", "X", "--port", "0", "--data-dir",
                             str(not_a_dir)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0 and "--data-dir: cannot use" in result.stderr and "Traceback" not in result.stderr


def test_a_full_disk_leaves_the_node_serving_from_memory_and_writing_again_once_space_is_back(start_node, tmp_path):
    """--data-dir on a 1 MB tmpfs: 12,000 messages of 100 B fill it, then a
    file takes what is left, and 100 jobs and 1,000 more messages come. The
    node goes on from memory (a recovery gets all 13,000, the jobs are all
    done); the failures are counted, logged once per file. Space back (the
    file gone, the tmpfs made bigger): 1,000 more messages are written. After
    a `kill -9` and a restart, what the disk serves has no gap up to the last
    message, and the stream is reported `evicted` before it."""
    import os
    import subprocess

    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    port, data = free_port(), str(disk / "node")
    args = ("--port", str(port), "--history", "d.>=100000/3600s", "--data-dir", data)
    a = None
    workers = Workers()

    def publish(publisher, numbers):
        for i in numbers:
            publisher.publish("d.x", {"i": i, "p": "x" * 80})
        publisher.flush()
        wait_until(lambda: a.stats()["history"]["recorded"] >= numbers[-1] + 1
                   and a.stats()["history"]["disk"]["pending"] == 0, what="A to try writing everything")

    try:
        a = start_node("A", *args)
        b = start_node("B", peers=[a])
        wait_until(lambda: linked(a, b), what="A and B linked")
        workers.start(b.address, 0.0)
        wait_until(lambda: a.stats().get("queues", {}).get("reachable") == 1, timeout=15, what="the worker")
        began = time.time()
        with Client(a.address) as publisher:
            publish(publisher, range(12000))
            subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=4k"], capture_output=True,
                           check=False)  # until the disk is full
            for i in range(100):
                publisher.publish("job.x", i)
            publish(publisher, range(12000, 13000))
            wait_until(lambda: {line["data"] for line in workers.done} == set(range(100)), timeout=30,
                       what="every job done")
            stats = a.stats()
            for part in (stats["history"]["disk"], stats["queues"]["jobs"]["disk"]):
                assert part["errors"] >= 1 and part["failed"] > 0 and "full" in part["last_error"], part
            with Client(b.address) as reader:  # still served, from memory
                sub = reader.subscribe("d.>", since=Position({}, began))
                got = drain(sub)
            assert [m.data["i"] for m in got] == list(range(13000)) and sub.recovery.recovered and sub.gaps == 0

            (disk / "filler").unlink()  # space comes back
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
            publish(publisher, range(13000, 14000))
            assert not a.stats()["history"]["disk"]["failing"]
            origin = publisher.origin
        a.kill()
        log = a.stderr_text
        assert log.count("could not write to") == 2, log  # once per file (history, jobs), not per write
        assert log.count("history.sqlite again") == 1, log
        a = start_node("A", *args)
        wait_until(lambda: linked(a, b), timeout=15, what="A back")
        kept, cursor = [], None
        while True:
            page = a.request("history", pattern="d.>", partial=True, cursor=cursor)
            kept += [message[3] for message in page["messages"] if message[1] == origin]
            cursor = page["next"]
            if cursor is None:
                break
        assert kept == list(range(kept[0], 14001)) and 1 < kept[0] <= 13001  # no gap; all since space came back
        with Client(b.address) as reader:
            sub = reader.subscribe("d.>", since=Position({}, began))
        assert sub.recovery.streams[(origin, "d.x")] == "evicted"  # what the disk lacks is said
    finally:
        workers.stop()
        if a is not None:
            a.kill()
        subprocess.run(["umount", str(disk)], check=True)


def test_a_jobs_file_without_member_and_deadline_is_read_and_its_jobs_go_out_at_once(tmp_path):
    """A jobs.sqlite written before the store kept each job's member and deadline: it
    gains the two columns, empty, and its jobs come back with no member (given out at once)."""
    import sqlite3

    import msgpack

    from nodes.queues.jobs import Job
    from nodes.queues.jobstore import JobStore

    old = sqlite3.connect(str(tmp_path / "jobs.sqlite"))
    old.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, grp TEXT NOT NULL, pattern TEXT NOT NULL, "
                "settings BLOB NOT NULL, subject TEXT NOT NULL, data BLOB NOT NULL, origin TEXT NOT NULL, "
                "epoch INTEGER NOT NULL, seq INTEGER NOT NULL, carried BLOB NOT NULL, attempt INTEGER NOT NULL)")
    old.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ("w:o/1/5", "w", "job.>", msgpack.packb({"deadline": 5.0, "attempts": 3}), "job.x",
                 msgpack.packb({7: "a map with an int key"}), "o", 1, 5, msgpack.packb({}), 1))
    old.commit()
    old.close()
    [record] = JobStore(str(tmp_path)).jobs()
    assert record["member"] is None and record["deadline"] is None and record["attempt"] == 1
    assert record["data"] == {7: "a map with an int key"}  # any data msgpack carries is read back
    job = Job.from_record(record, time.monotonic())
    assert job.id == "w:o/1/5" and job.member is None  # the book gives it to a member at its next tick
