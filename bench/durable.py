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
"""

import os
import tempfile
import time

from .base import Column, Scenario, measure, num

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
    """The median of RUNS runs; on disk also its rate as a share of memory's."""
    runs = sorted((_measure(bench, count, mode) for _ in range(RUNS)), key=lambda fields: fields["rate"])
    fields = runs[len(runs) // 2]
    if mode in ("plain", "memory"):
        memory[mode] = fields["rate"]
    elif memory.get("memory"):
        fields["of_memory"] = fields["rate"] / memory["memory"]
    if mode == "replicated" and memory.get("plain"):
        fields["of_plain"] = fields["rate"] / memory["plain"]
    return fields


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
        def args(name):
            return [*_history_args(count), "--history-replicas", "2", "--data-dir", os.path.join(directory, name),
                    "--fsync", "batch"] if replicated else []

        a = bench.procs.node("dur-a", *args("a"))
        b = bench.procs.node("dur-b", *args("b"), "--peer", a.address)
        try:
            while a.linked_names() != ["dur-b"] or b.linked_names() != ["dur-a"] or (
                    replicated and b.request("stats")["history"].get("following") != ["dur-a"]):
                time.sleep(0.05)
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


SCENARIOS = [Scenario("durable", "18", "History in memory and on disk (--data-dir): rate, bytes per message, "
                      "recovery after kill -9", durable,
                      [Column("msg/s", lambda r: num(r["rate"])), Column("x memory", lambda r: num(r.get("of_memory"), 2)),
                       Column("x plain", lambda r: num(r.get("of_plain"), 2)),
                       Column("disk B/msg", lambda r: num(r.get("disk_bytes_per_message"))),
                       Column("restart s", lambda r: num(r.get("restart_seconds"), 2)),
                       Column("recovered", lambda r: num(r.get("recovered"))),
                       Column("ready to all read s", lambda r: num(r.get("recovered_seconds"), 2))])]
