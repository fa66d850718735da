"""Scenario "durable": what history on disk costs (--data-dir, nodes/disk.py).

One node with ``--history``; a publisher at it sends N messages of 100 bytes
as fast as it can. Reported per case (history in memory, on disk with
``--fsync batch``, on disk with ``--fsync never``): the rate at which the
history took them (N over the time from the first publish until the node
has recorded all N and, on disk, has nothing left to write), the ratio to
memory, the data file's bytes per message (the median of 3 runs); and for the disk: the node
killed with ``kill -9``, started again on the same directory, the time until
it is ready and until a reader has all N back from its history.
"""

import tempfile
import time

from .base import Column, Scenario, measure, num

RUNS = 3
PAYLOAD = "x" * 91  # 100 bytes once msgpack-encoded in a dict {"i": n, "p": ...} with a small n


def durable(bench, rows):
    count = max(10_000, min(100_000, bench.args.messages // 2))
    memory = {}
    for mode in ("memory", "batch", "never"):
        label = (f"{count:,} messages of 100 B into history "
                 f"{'in memory' if mode == 'memory' else f'on disk, --fsync {mode}'}")
        bench.say(f"[18 durable] {label}")
        measure(bench, rows, f"history-{mode}", label, lambda: _median(bench, count, mode, memory),
                lambda r: ", ".join(f"{k} {v:,.2f}" if isinstance(v, float) else f"{k} {v:,}"
                                    for k, v in r.items() if k not in ("key", "label", "status")))
    return rows


def _median(bench, count, mode, memory):
    """The median of RUNS runs; on disk also its rate as a share of memory's."""
    runs = sorted((_measure(bench, count, mode) for _ in range(RUNS)), key=lambda fields: fields["rate"])
    fields = runs[len(runs) // 2]
    if mode == "memory":
        memory["rate"] = fields["rate"]
    elif memory.get("rate"):
        fields["of_memory"] = fields["rate"] / memory["rate"]
    return fields


def _recorded(node, count, disk):
    history = node.request("stats")["history"]
    return history["recorded"] >= count and (not disk or history["disk"]["pending"] == 0)


def _measure(bench, count, mode):
    from mesh import Client, Position

    disk = mode != "memory"
    with tempfile.TemporaryDirectory(prefix="bench-durable-") as directory:
        args = ["--history", f"dur.>={count * 2}/3600s", "--history-bytes", str(512 * 1024 * 1024),
                *(["--data-dir", directory, "--fsync", mode] if disk else [])]
        node = bench.procs.node("dur-a", *args)
        try:
            began = time.time()
            with Client(node.address) as publisher:
                publisher.wait_for_interest("dur.x", history=True)
                started = time.monotonic()
                for i in range(count):
                    publisher.publish("dur.x", {"i": i, "p": PAYLOAD})
                publisher.flush()
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


SCENARIOS = [Scenario("durable", "18", "History in memory and on disk (--data-dir): rate, bytes per message, "
                      "recovery after kill -9", durable,
                      [Column("msg/s", lambda r: num(r["rate"])), Column("x memory", lambda r: num(r.get("of_memory"), 2)),
                       Column("disk B/msg", lambda r: num(r.get("disk_bytes_per_message"))),
                       Column("restart s", lambda r: num(r.get("restart_seconds"), 2)),
                       Column("recovered", lambda r: num(r.get("recovered"))),
                       Column("ready to all read s", lambda r: num(r.get("recovered_seconds"), 2))])]
