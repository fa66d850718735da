"""Scenario "durable": what history on disk costs (--data-dir, nodes/disk.py).

One node with ``--history``; a publisher at it sends N messages of 100 bytes
as fast as it can. Reported per case (history in memory, on disk with
``--fsync batch``, on disk with ``--fsync never``): the rate at which the
history took them (N over the time from the first publish until the node
has recorded all N and, on disk, has nothing left to write), the ratio to
memory, the data file's bytes per message (the median of 3 runs); and for the disk: the node
killed with ``kill -9``, started again on the same directory, the time until
it is ready and until a reader has all N back from its history.

Two more cases have two linked nodes, the publisher at the first: "plain",
without history, the rate at which a subscriber at the second has all N
(the plain mesh); "replicated", both with ``--history-replicas 2`` and on
disk (``--fsync batch``), the rate at which the node and its replica (the
second) have recorded all N and written them, with its ratio to memory and
to the plain mesh.

Every case also measures one-way latency the way scenario 2 does: two linked
nodes set up as the case says (the replica's options at the second node
only for "replicated"), a publisher at the first paced at ``--rate`` for
``--latency-seconds``, a subscriber at the second; p50, p99 and p99.9.
"""

import os
import tempfile
import time

from .base import Column, Scenario, measure, num, ok_row, target

RUNS = 3
PAYLOAD = "x" * 91  # 100 bytes once msgpack-encoded in a dict {"i": n, "p": ...} with a small n


def durable(bench, rows):
    count = max(10_000, min(100_000, bench.args.messages // 2))
    memory = {}
    labels = {"plain": "from a node to a subscriber at another, no history (the plain mesh)",
              "memory": "into history in memory", "batch": "into history on disk, --fsync batch",
              "never": "into history on disk, --fsync never",
              "replicated": "into history on disk (--fsync batch) at their node and its replica, "
                            "--history-replicas 2"}
    for mode, what in labels.items():
        label = f"{count:,} messages of 100 B {what}"
        bench.say(f"[18 durable] {label}")
        measure(bench, rows, "plain" if mode == "plain" else f"history-{mode}", label, lambda: _median(bench, count, mode, memory),
                lambda r: ", ".join(f"{k} {v:,.2f}" if isinstance(v, float) else f"{k} {v:,}"
                                    for k, v in r.items() if k not in ("key", "label", "status")))
    return rows


def _median(bench, count, mode, memory):
    """The median of RUNS runs and a latency run; on disk also its rate as a share of memory's."""
    runs = sorted((_measure(bench, count, mode) for _ in range(RUNS)), key=lambda fields: fields["rate"])
    fields = {**runs[len(runs) // 2], **_latency(bench, count, mode)}
    if mode in ("plain", "memory"):
        memory[mode] = fields["rate"]
    elif memory.get("memory"):
        fields["of_memory"] = fields["rate"] / memory["memory"]
    if mode == "replicated" and memory.get("plain"):
        fields["of_plain"] = fields["rate"] / memory["plain"]
    return fields


def _latency(bench, count, mode):
    """p50, p99 and p99.9 one-way latency (ms) from a paced publisher at the first of two linked nodes,
    set up as ``mode`` says, to a subscriber at the second."""
    rate, seconds = bench.args.rate, bench.args.latency_seconds
    sent = max(1, int(rate * seconds))
    with tempfile.TemporaryDirectory(prefix="bench-durable-") as directory:
        a, b = _linked_pair(bench, mode, count, directory)
        try:
            pub, (sub,) = bench.run_case(
                {"system": "mesh", "endpoint": a.address, "subject": "dur.lat", "count": sent, "rate": rate},
                [{"system": "mesh", "endpoint": b.address, "subject": "dur.lat", "count": sent, "mode": "latency"}],
                timeout=120 + seconds * 2)
        finally:
            bench.procs.stop_node(a)
            bench.procs.stop_node(b)
    latency = sub["latency_ms"]
    return {"latency_delivered": sub["delivered"], "latency_sent": pub["sent"],
            **{key: latency[key] for key in ("p50", "p99", "p99_9")}}


def _mode_args(mode, count, directory, name):
    """A node's options in ``mode``, its data in ``directory``/``name``."""
    if mode == "plain":
        return []
    if mode == "memory":
        return _history_args(count)
    fsync = "batch" if mode == "replicated" else mode
    return [*_history_args(count), "--data-dir", os.path.join(directory, name), "--fsync", fsync,
            *(["--history-replicas", "2"] if mode == "replicated" else [])]


def _linked_pair(bench, mode, count, directory):
    """Nodes dur-a (options of ``mode``) and dur-b (the same when replicated) linked, and dur-b following
    dur-a when replicated."""
    a = bench.procs.node("dur-a", *_mode_args(mode, count, directory, "a"))
    b = bench.procs.node("dur-b", *(_mode_args(mode, count, directory, "b") if mode == "replicated" else []),
                         "--peer", a.address)
    deadline = time.monotonic() + 30
    try:
        while a.linked_names() != ["dur-b"] or b.linked_names() != ["dur-a"] or (
                mode == "replicated" and b.request("stats")["history"].get("following") != ["dur-a"]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"dur-a and dur-b ({mode}) did not link within 30 s")
            time.sleep(0.05)
    except BaseException:
        bench.procs.stop_node(a)
        bench.procs.stop_node(b)
        raise
    return a, b


def _recorded(node, count, disk):
    history = node.request("stats")["history"]
    return history["recorded"] >= count and (not disk or history["disk"]["pending"] == 0)


def _history_args(count):
    return ["--history", f"dur.>={count * 2}/3600s", "--history-bytes", str(512 * 1024 * 1024)]


def _publish(publisher, count):
    for i in range(count):
        publisher.publish("dur.x", {"i": i, "p": PAYLOAD})
    publisher.flush()


def _measure(bench, count, mode):
    from mesh import Client, Position

    if mode in ("plain", "replicated"):
        return _across(bench, count, mode == "replicated")
    disk = mode != "memory"
    with tempfile.TemporaryDirectory(prefix="bench-durable-") as directory:
        args = [*_history_args(count), *(["--data-dir", directory, "--fsync", mode] if disk else [])]
        node = bench.procs.node("dur-a", *args)
        try:
            began = time.time()
            with Client(node.address) as publisher:
                publisher.wait_for_interest("dur.x", history=True)
                started = time.monotonic()
                _publish(publisher, count)
                while not _recorded(node, count, disk):
                    time.sleep(0.01)
                seconds = time.monotonic() - started
            fields = {"messages": count, "seconds": seconds, "rate": count / seconds}
            if not disk:
                return fields
            fields["disk_bytes_per_message"] = node.request("stats")["history"]["disk"]["file_bytes"] / count
            node.kill()
            restarted = time.monotonic()
            node = bench.procs.node("dur-a", *args)
            fields["restart_seconds"] = time.monotonic() - restarted
            with Client(node.address) as reader:
                sub = reader.subscribe("dur.>", since=Position({}, began), max_replay=count * 2)
                got = sum(1 for _ in range(count) if sub.get(timeout=30) is not None)
            fields["recovered"] = got
            fields["recovered_seconds"] = time.monotonic() - restarted
            return fields
        finally:
            bench.procs.stop_node(node)


def _across(bench, count, replicated):
    """Two linked nodes, the publisher at the first: the rate until a subscriber at the second
    has all ``count`` (plain), or until both nodes have recorded and written them (replicated)."""
    from mesh import Client

    with tempfile.TemporaryDirectory(prefix="bench-durable-") as directory:
        a, b = _linked_pair(bench, "replicated" if replicated else "plain", count, directory)
        try:
            with Client(a.address) as publisher, Client(b.address) as reader:
                sub = None if replicated else reader.subscribe("dur.>")
                while not _arrived(b, sub):  # the replica's, or the reader's, subscription reached the publisher
                    publisher.publish("dur.warm", 0)
                    publisher.flush()
                before = {node: node.request("stats")["history"]["recorded"] for node in (a, b)} if replicated else {}
                started = time.monotonic()
                _publish(publisher, count)
                if replicated:
                    while not all(_recorded(node, before[node] + count, True) for node in (a, b)):
                        time.sleep(0.01)
                else:
                    got = 0
                    while got < count:
                        got += sub.get(timeout=30).subject == "dur.x"
                seconds = time.monotonic() - started
            fields = {"messages": count, "seconds": seconds, "rate": count / seconds}
            if replicated:
                fields["disk_bytes_per_message"] = a.request("stats")["history"]["disk"]["file_bytes"] / count
            return fields
        finally:
            bench.procs.stop_node(a)
            bench.procs.stop_node(b)


def _arrived(replica, sub):
    """True once the replica (``sub`` None) has recorded something, or ``sub`` has received something."""
    if sub is None:
        time.sleep(0.05)
        return _recorded(replica, 1, True)
    try:
        return sub.get(timeout=0.05) is not None
    except TimeoutError:
        return False


def targets(rows):
    disk = ok_row(rows, "history-batch")
    if disk is None or disk.get("of_memory") is None:
        return [target("history on disk (--fsync batch) vs in memory, 100 B", ">= 0.5x")]
    ratio = disk["of_memory"]
    return [target("history on disk (--fsync batch) vs in memory, 100 B", ">= 0.5x", f"{ratio:.2f}x", ratio,
                   ratio >= 0.5)]


SCENARIOS = [Scenario("durable", "18", "History in memory and on disk (--data-dir): rate, bytes per message, "
                      "recovery after kill -9", durable,
                      [Column("msg/s", lambda r: num(r["rate"])), Column("x memory", lambda r: num(r.get("of_memory"), 2)),
                       Column("x plain", lambda r: num(r.get("of_plain"), 2)),
                       Column("p50 ms", lambda r: num(r.get("p50"), 3)),
                       Column("p99 ms", lambda r: num(r.get("p99"), 3)),
                       Column("p99.9 ms", lambda r: num(r.get("p99_9"), 3)),
                       Column("disk B/msg", lambda r: num(r.get("disk_bytes_per_message"))),
                       Column("restart s", lambda r: num(r.get("restart_seconds"), 2)),
                       Column("recovered", lambda r: num(r.get("recovered"))),
                       Column("ready to all read s", lambda r: num(r.get("recovered_seconds"), 2))],
                      targets=targets)]
