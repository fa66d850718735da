"""Scenario "jobs": what job replicas cost the holder (--job-replicas, nodes/queues/replicas.py).

Two nodes A and B, both with ``--job-replicas R``. A job group is announced
at A by a member whose inbox never reaches A (a raw ``queue_join``), so
every job published at A stays held there, given to nobody. A publisher at A
sends N jobs of 100 bytes as fast as it can. Reported per R: the rate at
which A held them (N over the time from the first publish until A holds all
N and, with R = 2, B keeps a copy of all N), the ratio to R = 1 (the median
of 3 runs).
"""

import threading
import time

from .base import Column, Scenario, measure, num

RUNS = 3
COUNT = 10_000  # the most jobs one node holds per group (nodes/queues/jobs.py MAX_JOBS)
PAYLOAD = "x" * 91  # 100 bytes once msgpack-encoded in a dict {"i": n, "p": ...} with a small n
GROUP = {"group": "bench", "pattern": "jobs.>", "member": "nobody", "capacity": 0,
         "jobs": {"deadline": 3600, "attempts": 1}}


def jobs(bench, rows):
    base = {}
    for copies in (1, 2):
        label = f"{COUNT:,} jobs of 100 B held at A, --job-replicas {copies}"
        bench.say(f"[19 jobs] {label}")
        measure(bench, rows, f"jobs-r{copies}", label, lambda copies=copies: _median(bench, copies, base),
                lambda r: f"{r['rate']:,.0f} jobs/s held" + (f", {r['of_one']:.2f} x R=1" if "of_one" in r else ""))
    return rows


def _median(bench, copies, base):
    runs = sorted((_measure(bench, copies) for _ in range(RUNS)), key=lambda fields: fields["rate"])
    fields = runs[len(runs) // 2]
    if copies == 1:
        base["rate"] = fields["rate"]
    elif base.get("rate"):
        fields["of_one"] = fields["rate"] / base["rate"]
    return fields


def _done(a, b, copies):
    if a.request("stats").get("queues", {}).get("jobs", {}).get("held") != COUNT:
        return False
    return copies == 1 or list(b.request("stats").get("job_replicas", {}).get("shadows", {}).values()) == [COUNT]


def _announce(node, stop):
    """The member's heartbeat (mesh/queues.py): the group lives while the jobs come."""
    while not stop.wait(0.5):
        node.request("queue_join", **GROUP)


def _measure(bench, copies):
    from mesh import Client

    a = bench.procs.node("jobs-a", "--job-replicas", str(copies))
    b = bench.procs.node("jobs-b", "--job-replicas", str(copies), "--peer", a.address)
    try:
        deadline = time.monotonic() + 20
        while b.peer_names() != ["jobs-a"] or a.request("queue_join", **GROUP).get("ok") is not True:
            if time.monotonic() > deadline:
                raise RuntimeError("A and B did not link, or A did not take the job group")
            time.sleep(0.1)
        if copies > 1:
            while a.request("stats").get("job_replicas", {}).get("replicas") != ["jobs-b"]:
                time.sleep(0.05)
        stop = threading.Event()
        threading.Thread(target=_announce, args=(a, stop), daemon=True).start()
        with Client(a.address) as publisher:
            started = time.monotonic()
            for i in range(COUNT):
                publisher.publish("jobs.x", {"i": i, "p": PAYLOAD})
            publisher.flush()
            while not _done(a, b, copies):
                time.sleep(0.01)
            seconds = time.monotonic() - started
        stop.set()
        return {"jobs": COUNT, "seconds": seconds, "rate": COUNT / seconds}
    finally:
        bench.procs.stop_node(b)
        bench.procs.stop_node(a)


SCENARIOS = [Scenario("jobs", "19", "Jobs held at a node with and without a replica (--job-replicas)", jobs,
                      [Column("jobs/s", lambda r: num(r["rate"])), Column("x R=1", lambda r: num(r.get("of_one"), 2))])]
