"""Scenario 11: recovering missed messages from history through another node.

Three linked nodes with ``--history``; a publisher at A; a subscriber at B
reads, keeps its position and leaves; N messages are published; a new
subscriber at C subscribes with that position. Reported: the time from
``subscribe(since=...)`` to the last of the N messages read, and the rate.
"""

import time

from .base import Column, Scenario, measure, num


def recovery(bench, rows):
    counts = [10_000, 100_000] if bench.args.messages >= 100_000 else [max(1000, bench.args.messages // 10)]
    for count in counts:
        key, label = f"recover-{count}", f"{count:,} missed messages recovered at another node"
        bench.say(f"[11 recovery] {label}")
        measure(bench, rows, key, label, lambda count=count: _recover(bench, count),
                lambda r: f"{r['recovered']:,} in {r['seconds']:.2f} s ({r['rate']:,.0f} msg/s); complete: "
                          f"{r['complete']}")
    return rows



def _recover(bench, count):
    from mesh import Client

    rule = ("--history", f"rec.>={count + 1000}/600s", "--history-bytes", str(256 * 1024 * 1024))
    nodes = bench.procs.linked_nodes(("rec-a", "rec-b", "rec-c"), *rule)
    a, b, c = nodes
    try:
        with Client(a.address) as publisher:
            with Client(b.address) as first:
                sub = first.subscribe("rec.>")
                while True:  # until B's subscription reached A
                    publisher.publish("rec.x", -1)
                    try:
                        sub.get(timeout=0.05)
                        break
                    except TimeoutError:
                        pass
                while True:
                    try:
                        sub.get(timeout=0.2)
                    except TimeoutError:
                        break
                position = sub.position
            for i in range(count):
                publisher.publish("rec.x", i)
            publisher.flush()
            while a.request("stats")["history"]["recorded"] < count:
                time.sleep(0.05)
            with Client(c.address) as second:
                started = time.monotonic()
                again = second.subscribe("rec.>", since=position, max_replay=count + 1000)
                got = 0
                while got < count:
                    if again.get(timeout=30).data != -1:
                        got += 1
                seconds = time.monotonic() - started
                complete = again.recovery.recovered
        return {"messages": count, "recovered": got, "seconds": seconds, "rate": got / seconds,
                "complete": complete}
    finally:
        for node in nodes:
            bench.procs.stop_node(node)


SCENARIOS = [Scenario("recovery", "11", "Recovering missed messages from history at another node", recovery, [
    Column("recovered", lambda r: f"{num(r['recovered'])} / {num(r['messages'])}"),
    Column("seconds", lambda r: f"{r['seconds']:.2f}"), Column("msg/s", lambda r: num(r["rate"])),
    Column("every stream complete", lambda r: "yes" if r["complete"] else "**no**")])]
