"""Jobs when the node holding some of them dies (mesh/settle.py, nodes/jobs.py):
acknowledgements go out without waiting, so a dead holder never slows the
work held by the nodes that live."""

import time

from jobworker import Workers
from meshtest.nodeproc import wait_until

from mesh import Client


def job_stats(node):
    return node.stats().get("queues", {}).get("jobs", {})


def test_a_dead_holder_does_not_stall_the_workers(mesh3):
    """3 workers on 2 nodes (B, C); jobs published at A (q1) and at B (q2);
    A is killed with `kill -9` while the workers hold many of its jobs. Every
    job published at B is done, each once: no worker waited on A, so none of
    B's jobs missed its deadline."""
    a, b, c = mesh3
    workers = Workers()
    try:
        for node in (b, b, c):
            workers.start(node.address, 0.1)
        for node in (a, b):
            wait_until(lambda node=node: node.stats()["queues"].get("reachable") == 3, timeout=15,
                       what="3 workers reachable")
        with Client(a.address) as publisher:
            for i in range(90):
                publisher.publish("job.a", i)
            publisher.flush()
            wait_until(lambda: any(line["holder"] == "A" for line in workers.done), what="a first job of A done")
        a.kill()
        killed = time.monotonic()
        with Client(b.address) as publisher:
            for i in range(60):
                publisher.publish("job.b", i)
            publisher.flush()
            wait_until(lambda: {line["data"] for line in workers.done if line["holder"] == "B"} == set(range(60)),
                       timeout=60, what="every job published at B done")
        print(f"B's 60 jobs done {time.monotonic() - killed:.2f} s after A's kill; "
              f"{sum(line['holder'] == 'A' for line in workers.done)} of A's 90 done")
        done_b = [line for line in workers.done if line["holder"] == "B"]
        duplicates = len(done_b) - 60
        stats = job_stats(b)
        assert duplicates == 0 and stats["redelivered"] == 0, (duplicates, stats)
        wait_until(lambda: job_stats(b)["acked"] == 60 and job_stats(b)["held"] == 0, what="B's jobs acknowledged")
    finally:
        workers.stop()
