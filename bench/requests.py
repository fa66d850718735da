"""Scenario 12: request/reply round trips across two nodes (or two NATS servers).

A responder process (bench/responder.py) at node A echoes each request; the
benchmark process asks at node B, one request at a time, N times. Reported:
round trips per second and the p50/p99 round trip. NATS: the same with
nats-py on two routed nats-servers.
"""

import json
import subprocess
import sys
import time

from .base import Column, Scenario, measure, num
from .procs import LOOPBACK, ROOT
from .workers import percentile

SUBJECT = "bench.req"


def requests(bench, rows):
    count = max(300, bench.args.messages // 40)
    for key, label, run in (("mesh", "meshnode, responder at A, requester at B", _mesh),
                            ("nats", "NATS + nats-py, responder on server 1, requester on server 2", _nats)):
        bench.say(f"[12 requests] {label}: {count:,} requests, one at a time")
        measure(bench, rows, key, label, lambda run=run: run(bench, count),
                lambda r: f"{r['rate']:,.0f} round trips/s; p50 {r['p50']:.3f} ms, p99 {r['p99']:.3f} ms")
    return rows



def _responder(bench, config):
    proc = bench.procs.popen([sys.executable, "-m", "bench.responder", json.dumps(config)], "responder",
                             cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the responder did not start")
    return proc


def _summary(times, seconds):
    ordered = sorted(times)
    return {"requests": len(times), "seconds": seconds, "rate": len(times) / seconds,
            "p50": percentile(ordered, 50) * 1000, "p99": percentile(ordered, 99) * 1000}


def _mesh(bench, count):
    from mesh import Client

    a, b = bench.mesh()[:2]
    responder = _responder(bench, {"system": "mesh", "address": a.address, "subject": SUBJECT})
    try:
        with Client(b.address) as client:
            client.wait_for_interest(SUBJECT, 10)
            for i in range(50):  # warm up: the inbox subscription reaches A
                client.request(SUBJECT, i, timeout=10)
            times = []
            started = time.monotonic()
            for i in range(count):
                t = time.perf_counter()
                client.request(SUBJECT, i, timeout=10)
                times.append(time.perf_counter() - t)
            return _summary(times, time.monotonic() - started)
    finally:
        responder.stdin.close()
        bench.procs.stop(responder)


def _nats(bench, count):
    import asyncio

    from .peers import nats_cluster, wait_nats_routes

    binary = bench.binary("nats")
    servers = nats_cluster(bench.procs, binary, 2)
    try:
        if not wait_nats_routes(servers):
            raise RuntimeError("the NATS routes did not form")
        responder = _responder(bench, {"system": "nats", "url": f"nats://{LOOPBACK}:{servers[0].port}",
                                       "subject": SUBJECT})
        try:
            import nats as nats_client

            async def run():
                nc = await nats_client.connect(f"nats://{LOOPBACK}:{servers[1].port}")
                for i in range(50):
                    await nc.request(SUBJECT, b"%d" % i, timeout=10)
                times = []
                started = time.monotonic()
                for i in range(count):
                    t = time.perf_counter()
                    await nc.request(SUBJECT, b"%d" % i, timeout=10)
                    times.append(time.perf_counter() - t)
                seconds = time.monotonic() - started
                await nc.close()
                return _summary(times, seconds)

            return asyncio.run(run())
        finally:
            responder.stdin.close()
            bench.procs.stop(responder)
    finally:
        for server in servers:
            server.stop()


SCENARIOS = [Scenario("requests", "12", "Request/reply round trips across two nodes, one request at a time",
                      requests, [Column("requests", lambda r: num(r["requests"])),
                                 Column("round trips/s", lambda r: num(r["rate"])),
                                 Column("p50 ms", lambda r: f"{r['p50']:.3f}"),
                                 Column("p99 ms", lambda r: f"{r['p99']:.3f}")])]
