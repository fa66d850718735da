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


def test_an_ack_to_a_holder_that_is_gone_for_good_ends_with_an_error(mesh3):
    """A holds a job (no replicas, no disk) and is killed: the worker's acknowledgement
    is tried again at every node while the group's deadline (2 s) lasts, then ends with
    the holder's error (unknown_node, or a timeout while membership still lists A):
    it never hangs, and the worker's other work goes on."""
    from mesh import ControlError

    a, b, _ = mesh3
    with Client(b.address) as worker, Client(a.address) as publisher:
        jobs = worker.subscribe("gone.>", queue="w", ack_deadline=2)
        wait_until(lambda: a.stats().get("queues", {}).get("reachable") == 1, timeout=15, what="the member at A")
        publisher.publish("gone.x", "job")
        publisher.flush()
        message = jobs.get(timeout=10)
        a.kill()
        settlement = worker.ack(message)
        try:
            settlement.result(timeout=30)
            raise AssertionError("a job nobody holds was acknowledged")
        except (ControlError, TimeoutError) as exc:
            assert isinstance(exc, TimeoutError) or exc.code == "unknown_node", exc
        assert settlement.done()
        settled = worker.counters()["settled"]
        assert settled["confirmed"] == 0 and settled["retrying"] == 0 and settled["awaited"] == 0
