"""Scenario 13: queue-group throughput across three nodes (or three NATS servers).

A publisher process at the first node publishes N messages of 100 bytes on a
subject whose subscribers are one queue group of 6 members, 2 at each node,
all in this process (meshnode: ``subscribe(queue=...)``; NATS: nats-py queue
subscriptions). Reported: messages each delivered once across the group per
second (first to last arrival), how they spread over the members, and any
lost or doubled.
"""

import asyncio
import threading
import time

from .base import Column, Scenario, measure, num
from .procs import LOOPBACK

SUBJECT = "bench.queue"
MEMBERS_PER_NODE = 2


def queues(bench, rows):
    count = max(2000, bench.args.messages // 4)
    for key, label, run in (("mesh", "meshnode, 6 members over 3 nodes, publisher at A", _mesh),
                            ("nats", "NATS + nats-py, 6 queue subscribers over 3 servers", _nats)):
        bench.say(f"[13 queues] {label}: {count:,} messages")
        measure(bench, rows, key, label, lambda run=run: run(bench, count),
                lambda r: f"{r['delivered']:,} delivered once ({r['duplicates']} twice) at {r['rate']:,.0f} msg/s; "
                          f"per member {r['per_member']}")
    return rows



class _Tally:
    """Arrivals per member; measured messages start with b"M"."""

    def __init__(self, members):
        self.counts = [0] * members
        self.seen = set()
        self.duplicates = 0
        self.warm = False
        self.first = self.last = None
        self.lock = threading.Lock()

    def arrived(self, member, data):
        if data[:1] != b"M":
            self.warm = True
            return
        now = time.monotonic()
        with self.lock:
            self.first = self.first or now
            self.last = now
            self.counts[member] += 1

    def result(self, count):
        delivered = sum(self.counts)
        seconds = (self.last - self.first) if delivered > 1 else 0.0
        return {"messages": count, "delivered": delivered, "duplicates": max(0, delivered - count),
                "seconds": seconds, "rate": delivered / seconds if seconds else 0.0, "per_member": self.counts}


def _count(bench, tally, count, system, endpoint):
    """A publisher process of ``count`` messages once the group is warm; what the group got."""
    publisher = bench.procs.worker("pub", {"system": system, "endpoint": endpoint, "subject": SUBJECT,
                                           "count": count})
    try:
        _wait(tally, count, publisher)
    finally:
        bench.procs.stop(publisher.proc)
    return tally.result(count)


def _wait(tally, count, publisher):
    deadline = time.monotonic() + 30
    while not tally.warm:
        if time.monotonic() > deadline:
            raise RuntimeError("no warm-up message reached the group")
        time.sleep(0.01)
    publisher.send("go")
    publisher.result(120)
    idle_since, seen = time.monotonic(), -1
    while sum(tally.counts) < count and time.monotonic() - idle_since < 5:
        if sum(tally.counts) != seen:
            seen, idle_since = sum(tally.counts), time.monotonic()
        time.sleep(0.02)
    publisher.send("exit")


def _mesh(bench, count):
    from mesh import Client

    nodes = bench.mesh()
    tally = _Tally(len(nodes) * MEMBERS_PER_NODE)
    clients = []
    try:
        for i in range(len(nodes) * MEMBERS_PER_NODE):
            client = Client(nodes[i // MEMBERS_PER_NODE].address)
            clients.append(client)
            client.subscribe(SUBJECT, lambda message, i=i: tally.arrived(i, message.data), queue="bench",
                             capacity=10_000)
        deadline = time.monotonic() + 20
        while not all(node.request("stats").get("queues", {}).get("reachable") == len(clients) for node in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the nodes did not reach every member")
            time.sleep(0.1)
        return _count(bench, tally, count, "mesh", nodes[0].address)
    finally:
        for client in clients:
            client.close()


def _nats(bench, count):
    from .peers import nats_cluster, wait_nats_routes

    binary = bench.binary("nats")
    import nats as nats_client

    servers = nats_cluster(bench.procs, binary, 3)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    tally = _Tally(len(servers) * MEMBERS_PER_NODE)
    connections = []
    try:
        if not wait_nats_routes(servers):
            raise RuntimeError("the NATS routes did not form")

        async def join():
            for i in range(len(servers) * MEMBERS_PER_NODE):
                nc = await nats_client.connect(f"nats://{LOOPBACK}:{servers[i // MEMBERS_PER_NODE].port}")
                connections.append(nc)

                async def on_message(msg, i=i):
                    tally.arrived(i, msg.data)

                await nc.subscribe(SUBJECT, queue="bench", cb=on_message)
                await nc.flush()

        asyncio.run_coroutine_threadsafe(join(), loop).result(30)
        time.sleep(0.5)  # the queue subscriptions cross the routes
        return _count(bench, tally, count, "nats", f"{LOOPBACK}:{servers[0].port}")
    finally:
        async def leave():
            for nc in connections:
                await nc.close()

        asyncio.run_coroutine_threadsafe(leave(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        for server in servers:
            server.stop()


SCENARIOS = [Scenario("queues", "13", "Queue-group throughput: 6 members over 3 nodes", queues, [
    Column("delivered once / sent", lambda r: f"{num(r['delivered'])} / {num(r['messages'])}"),
    Column("twice", lambda r: str(r["duplicates"])), Column("msg/s", lambda r: num(r["rate"])),
    Column("per member", lambda r: " ".join(num(n) for n in r["per_member"]))])]
