"""Queue groups across real nodes (mesh/queues.py, nodes/queues/dispatcher.py): each
message to one member of the group in the whole mesh, plain subscribers
still get everything, busy members get less, bad announcements are refused."""

import threading
import time

import pytest
from meshhelpers import warm_up
from meshtest.nodeproc import linked, wait_until

from mesh import Client



def queue_stats(node):
    return node.stats().get("queues", {})


def drain(sub, into, stop):
    while not stop.is_set():
        try:
            into.append(sub.get(timeout=0.2))
        except TimeoutError:
            pass


def test_each_message_goes_to_one_member_and_plain_subscribers_get_all(mesh3):
    nodes = mesh3
    clients = [Client(node.address) for node in nodes for _ in range(2)]
    plain_client = Client(nodes[0].address)
    try:
        members = [client.subscribe("jobs.>", queue="workers") for client in clients]
        plain = plain_client.subscribe("jobs.>")
        wait_until(lambda: all(queue_stats(n).get("reachable") == 6 for n in nodes), timeout=15,
                   what="every node to know and reach the 6 members")
        got = [[] for _ in members]
        seen_plain = []
        stop = threading.Event()
        readers = [threading.Thread(target=drain, args=(m, g, stop)) for m, g in zip(members, got)]
        readers.append(threading.Thread(target=drain, args=(plain, seen_plain, stop)))
        for r in readers:
            r.start()
        publishers = [Client(node.address) for node in nodes]
        for p in publishers:
            warm_up(p, "jobs.warm", [plain])
        for i in range(10_000):
            for p in publishers:
                p.publish("jobs.x", i)
        for p in publishers:
            p.flush()
        wait_until(lambda: sum(len(g) for g in got) >= 30_000 and len(seen_plain) >= 30_000, timeout=60,
                   what="every message")
        time.sleep(0.5)
        stop.set()
        for r in readers:
            r.join(5)
        delivered = [(m.origin, m.seq) for g in got for m in g if m.subject == "jobs.x"]
        assert len(delivered) == 30_000 and len(set(delivered)) == 30_000  # exactly once across the group
        assert len([m for m in seen_plain if m.subject == "jobs.x"]) == 30_000
        assert all(len(g) > 0 for g in got), [len(g) for g in got]
        for p in publishers:
            p.close()
    finally:
        for client in clients + [plain_client]:
            client.close()


def test_a_busy_member_gets_fewer(start_node):
    a = start_node("A")
    with Client(a.address) as fast_client, Client(a.address) as slow_client, Client(a.address) as pub:
        counts = {"fast": 0, "slow": 0}

        def slow(message):
            counts["slow"] += 1
            time.sleep(0.005)

        def fast(message):
            counts["fast"] += 1

        fast_client.subscribe("work.>", fast, queue="g", capacity=20)
        slow_sub = slow_client.subscribe("work.>", slow, queue="g", capacity=20)
        wait_until(lambda: queue_stats(a).get("reachable") == 2, what="both members")
        for i in range(3000):  # 1,000 a second for 3 s: more than the slow member's 200 a second
            pub.publish("work.x", i)
            if i % 10 == 0:
                time.sleep(0.01)
        pub.flush()
        backlog = slow_sub.pending  # what waits at the slow member when the publisher is done
        wait_until(lambda: counts["fast"] + counts["slow"] == 3000, timeout=60, what="every message")
    # Picked at random, each would get 1,500 and the slow one would end 3 s of
    # publishing about 900 behind; by room, it gets what it can take.
    assert counts["slow"] < counts["fast"] * 0.75, counts
    assert backlog < 650, backlog  # random picking: about 900


def test_members_that_leave_are_forgotten_and_bad_announcements_refused(start_node):
    a = start_node("A")
    b = start_node("B", peers=[a])
    wait_until(lambda: linked(a, b), what="link")
    with Client(a.address) as pub:
        member_client = Client(b.address)
        member_client.subscribe("gone.>", queue="g")
        wait_until(lambda: queue_stats(a).get("members") == 1, what="A to hear of the member")
        assert pub.wait_for_interest("gone.x")
        member_client.close()  # leaves the group
        wait_until(lambda: queue_stats(a).get("members") == 0 and not pub.has_interest("gone.x"), timeout=10,
                   what="A to forget it, and the publisher to see no interest")
    for fields in ({"group": "g", "pattern": "a..b", "member": "m1", "capacity": 1},
                   {"group": "has.dot", "pattern": "x", "member": "m1", "capacity": 1},
                   {"group": "g", "pattern": "x", "member": "not-alnum!", "capacity": 1},
                   {"group": "g", "pattern": "x", "member": "m1", "capacity": -1},
                   {"group": "g", "pattern": "x", "member": "m1", "capacity": "lots"}):
        reply = a.request("queue_join", **fields)
        assert (reply["ok"], reply["error"]) == (False, "bad_request"), (fields, reply)
    assert a.request("queue_leave", group="g", pattern="x", member="unknown")["ok"] is True
    assert a.request("queue_leave", group="g")["error"] == "bad_request"
    with Client(a.address) as client:
        with pytest.raises(ValueError, match="queue group"):
            client.subscribe("x.>", queue="bad group")
    assert a.alive()


def test_a_request_to_a_queue_group_reaches_one_responder(mesh3):
    a, b, c = mesh3
    answered = []
    responders = [Client(node.address) for node in (a, b, c)]
    try:
        for i, client in enumerate(responders):
            client.serve("svc.add", lambda message, i=i: answered.append(i) or message.data + 1, queue="adders")
        wait_until(lambda: queue_stats(a).get("reachable") == 3, timeout=15, what="A to reach the 3 members")
        with Client(a.address) as asker:
            results = [asker.request("svc.add", n, timeout=5).data for n in range(60)]
        assert results == [n + 1 for n in range(60)]
        time.sleep(0.3)
        assert len(answered) == 60  # one responder per request, not three
        assert len(set(answered)) > 1  # spread over the group
    finally:
        for client in responders:
            client.close()


def test_jobs_of_a_killed_worker_are_done_elsewhere_and_a_poison_job_is_dead_lettered(mesh3, tmp_path):
    """Workers in processes of their own: one is killed (kill -9) holding jobs;
    they come again to the other, attempt 2, and every job is acknowledged."""
    import json
    import os
    import signal
    import subprocess
    import sys

    a, b, c = mesh3
    worker_code = """
import json, sys, time
sys.path.insert(0, sys.argv[3])
from mesh import Client
client = Client(sys.argv[1])
def work(message):
    if message.data == "poison":
        return  # never acknowledged
    print(json.dumps({"job": message.job, "attempt": message.attempt, "data": message.data}), flush=True)
    time.sleep(float(sys.argv[2]))
    client.ack(message)
client.subscribe("job.>", work, queue="w", capacity=5, ack_deadline=1.0, max_attempts=3)
print("ready", flush=True)
time.sleep(600)
"""
    script = tmp_path / "worker.py"
    script.write_text(worker_code)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    doomed = subprocess.Popen([sys.executable, str(script), b.address, "10", root], stdout=subprocess.PIPE, text=True)
    steady = subprocess.Popen([sys.executable, str(script), c.address, "0", root], stdout=subprocess.PIPE, text=True)
    steady_lines = []
    try:
        for worker in (doomed, steady):
            assert worker.stdout.readline().strip() == "ready"
        threading.Thread(target=lambda: [steady_lines.append(json.loads(line)) for line in steady.stdout],
                         daemon=True).start()
        wait_until(lambda: queue_stats(a).get("reachable") == 2, timeout=15, what="A to reach both workers")
        with Client(a.address) as publisher, Client(a.address) as watcher:
            dead = watcher.subscribe("$dead.w.>")
            assert publisher.wait_for_interest("$dead.w.x")
            for i in range(20):
                publisher.publish("job.x", i)
            publisher.publish("job.x", "poison")
            publisher.flush()
            first = json.loads(doomed.stdout.readline())  # the doomed worker holds at least one job
            os.kill(doomed.pid, signal.SIGKILL)
            letter = dead.get(timeout=30)
            assert letter.data == "poison" and letter.headers["reason"] == "attempts" and letter.headers["a"] == 3
            wait_until(lambda: queue_stats(a)["jobs"]["acked"] == 20, timeout=30, what="all 20 jobs acknowledged")
        stats = queue_stats(a)["jobs"]
        assert stats["held"] == 0 and stats["redelivered"] >= 1 and stats["dead"] == 1
        assert first["attempt"] == 1
        again = [line for line in steady_lines if line["job"] == first["job"]]
        assert again and again[0]["attempt"] == 2 and again[0]["data"] == first["data"]  # same id, next attempt
        # The killed worker acknowledged nothing (it sleeps 10 s per job): the other did all 20.
        assert {line["data"] for line in steady_lines} == set(range(20))
    finally:
        for worker in (doomed, steady):
            if worker.poll() is None:
                worker.kill()
            worker.wait()


def test_acknowledging_twice_or_a_job_that_is_not_held_is_refused_and_counted(start_node):
    from mesh import ControlError, Message

    a = start_node("A")
    with Client(a.address) as worker, Client(a.address) as publisher:
        jobs = worker.subscribe("once.>", queue="w", ack_deadline=30)
        wait_until(lambda: queue_stats(a).get("reachable") == 1, what="the member")
        publisher.publish("once.x", "job")
        message = jobs.get(timeout=10)
        assert message.job and message.attempt == 1
        worker.ack(message).result(timeout=5)  # confirmed: no error
        with pytest.raises(ControlError, match="unknown_job"):
            worker.ack(message).result(timeout=5)  # twice
        assert worker.counters()["settled"]["refused"] == 1
        with pytest.raises(ValueError, match="not a job"):
            worker.ack(Message("x", 1, "o", 1, 0.0))  # a plain message
    assert a.request("job_ack", job="nobody/0/1", member="m1")["error"] == "unknown_job"
    assert a.request("job_ack", job=7, member="m1")["error"] == "bad_request"
    assert a.request("job_extend", job="nobody/0/1", member="m1", seconds=-1)["error"] == "bad_request"
    stats = queue_stats(a)["jobs"]
    assert stats["acked"] == 1 and stats["refused_acks"] == 2 and stats["held"] == 0
