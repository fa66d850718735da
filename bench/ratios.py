"""The library's targets as same-run ratios to raw pyzmq, each the worst of N rounds.

    .venv/bin/python -m bench.ratios [--rounds 5] [--parts throughput aio latency sizes floor] [--pin-nodes]

One 2-node mesh (A and B, a static link, ``--max-payload`` 2 MiB) for the whole run; every round
measures each case beside its raw pyzmq PUB->SUB counterpart, minutes apart
at most, on the suite's workers (bench/workers.py), so that the load of a
shared machine weighs on both sides of each ratio:

* ``throughput``: 400,000 x 100 B as fast as the publisher can, mesh (pub A,
  sub B) / raw; target >= 3.5x.
* ``aio``: the same through ``mesh.aio`` / the threaded client; target >= 0.9x.
* ``latency``: one-way p99 and p99.9 at 1k, 5k, 20k and 50k msg/s (at least
  10,000 messages each), mesh / raw; the mesh publisher relies on the flush
  rule (mesh/publisher.py) and never calls ``flush``; target at 5k: p99 <= 2x.
* ``sizes``: throughput at 1 KiB, 16 KiB, 256 KiB and 1 MiB payloads, mesh /
  raw; targets 1 KiB >= 1.5x, 16 KiB >= 1.0x. Each mesh case also prints the
  CPU per message of the publisher, node A, node B and the subscriber.
* ``floor``: the mesh's two hops without the mesh: raw pyzmq PUB -> two plain
  ``zmq.proxy`` processes -> SUB (bench/workers.py ``proxy``), / raw PUB->SUB,
  for p99 at 5,000 msg/s and for 16 KiB throughput: what the forwarding path
  fixed by the design costs before any client code runs.

Prints every round and, per ratio, the worst and the median over the rounds.
"""

import argparse
import os
import statistics
import time

from .procs import LOOPBACK, Procs, cpu_seconds, free_port
from .scenarios import SUBJECT, run_case

RATES = (1000, 5000, 20000, 50000)
SIZES = (1024, 16384, 262144, 1048576)
# ratio name -> (target, True when higher is better)
TARGETS = {"throughput 100 B": (3.5, True), "aio / threaded": (0.9, True), "p99 at 5,000/s": (2.0, False),
           "1 KiB": (1.5, True), "16 KiB": (1.0, True)}


def measure(procs, system, pub_ep, sub_ep, count, **extra):
    cfg = {"system": system, "subject": SUBJECT, "count": count, **extra}
    sub_cfg = {k: v for k, v in cfg.items() if k not in ("rate", "flush")}
    if "rate" in extra:
        sub_cfg["mode"] = "latency"
    pub, (sub,) = run_case(procs, dict(cfg, endpoint=pub_ep), [dict(sub_cfg, endpoint=sub_ep)],
                           timeout=120 + count / 1000)
    if sub["delivered"] < count:
        raise RuntimeError(f"{system}: {sub['delivered']} of {count} delivered")
    return dict(sub, pub_cpu_s=pub.get("cpu_s", 0.0))


def raw_endpoints():
    endpoint = f"tcp://{LOOPBACK}:{free_port()}"
    return endpoint, endpoint


def pin(pid, cpu):
    """Every thread of process ``pid`` on ``cpu`` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except ProcessLookupError:
            pass  # a thread that ended meanwhile


def two_proxies(procs):
    """(publisher endpoint, subscriber endpoint) of PUB -> proxy -> proxy -> SUB."""
    first, middle, last = (f"tcp://{LOOPBACK}:{free_port()}" for _ in range(3))
    for cfg in ({"in": first, "out": middle}, {"in": middle, "out": last}):
        procs.worker("proxy", cfg, name="proxy").expect("ready", 30)
    return first, last


def one_round(procs, a, b, parts, messages, chain=None):
    """{ratio name: value} and the raw numbers behind them, for one round;
    ``chain``: the endpoints of :func:`two_proxies` for the ``floor`` part."""
    ratios, raw = {}, {}

    def pair(name, count, mesh_system="mesh", base_system="zmq", eps=None, **extra):
        base_eps = raw_endpoints() if base_system == "zmq" else (a.address, b.address)
        base = measure(procs, base_system, *base_eps, count, **extra)
        nodes_before = [cpu_seconds(node.pid) for node in (a, b)]
        mesh = measure(procs, mesh_system, *(eps or (a.address, b.address)), count, **extra)
        if eps is None:  # the nodes' CPU, for the sizes' breakdown
            mesh["nodes_cpu_s"] = [cpu_seconds(node.pid) - before for node, before in zip((a, b), nodes_before)]
        mesh["count"] = base["count"] = count
        raw[name] = (base, mesh)
        return base, mesh

    if "throughput" in parts:
        base, mesh = pair("throughput 100 B", messages)
        ratios["throughput 100 B"] = mesh["rate"] / base["rate"]
    if "aio" in parts:
        base, mesh = pair("aio / threaded", messages, mesh_system="mesh_aio", base_system="mesh")
        ratios["aio / threaded"] = mesh["rate"] / base["rate"]
    if "latency" in parts:
        for rate in RATES:
            count = max(10_000, rate * 4)
            base, mesh = pair(f"latency {rate}", count, rate=rate, flush=False)
            for p in ("p99", "p99_9"):
                ratios[f"{p.replace('_', '.')} at {rate:,}/s"] = mesh["latency_ms"][p] / base["latency_ms"][p]
    if "sizes" in parts:
        for size in SIZES:
            count = max(500, min(messages, 40_000_000 // size))
            base, mesh = pair(f"size {size}", count, size=size)
            label = f"{size // 1024} KiB" if size < 1048576 else "1 MiB"
            ratios[label] = mesh["rate"] / base["rate"]
    if "floor" in parts:
        base, hops = pair("two proxies, latency 5000", max(10_000, 5000 * 4), mesh_system="zmq", eps=chain,
                          rate=5000, flush=False)
        ratios["p99 at 5,000/s, two proxies"] = hops["latency_ms"]["p99"] / base["latency_ms"]["p99"]
        base, hops = pair("two proxies, size 16384", max(500, min(messages, 40_000_000 // 16384)),
                          mesh_system="zmq", eps=chain, size=16384)
        ratios["16 KiB, two proxies"] = hops["rate"] / base["rate"]
    return ratios, raw


def describe(name, base, mesh):
    if "latency_ms" in mesh:
        b, m = base["latency_ms"], mesh["latency_ms"]
        return (f"{name}: p99 {m['p99']} vs {b['p99']} ms, p99.9 {m['p99_9']} vs {b['p99_9']} ms "
                f"(p50 {m['p50']} vs {b['p50']})")
    line = f"{name}: {mesh['rate']:,.0f} vs {base['rate']:,.0f} msg/s"
    if name.startswith("size") and "nodes_cpu_s" in mesh:  # CPU per message in each process of the mesh's path
        us = [1e6 * seconds / mesh["count"] for seconds in
              (mesh.get("pub_cpu_s", 0.0), *mesh["nodes_cpu_s"], mesh.get("cpu_s", 0.0))]
        line += (f" (mesh CPU us/msg: publisher {us[0]:.1f}, node A {us[1]:.1f}, node B {us[2]:.1f}, "
                 f"subscriber {us[3]:.1f})")
    return line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=400_000)
    parser.add_argument("--parts", nargs="+", default=["throughput", "aio", "latency", "sizes", "floor"],
                        choices=["throughput", "aio", "latency", "sizes", "floor"])
    parser.add_argument("--pin-nodes", action="store_true",
                        help="run every thread of node A on one CPU and of node B on another (taskset's effect)")
    args = parser.parse_args(argv)
    procs = Procs()
    rounds = []
    try:
        big = ("--max-payload", str(2 * max(SIZES)))  # a 1 MiB payload and its batch header
        a = procs.node("bench-a", *big)
        b = procs.node("bench-b", "--peer", a.address, *big)
        if args.pin_nodes:
            allowed = sorted(os.sched_getaffinity(0))  # the CPUs this run may use
            for index, node in enumerate((a, b)):
                pin(node.pid, allowed[index % len(allowed)])
        chain = two_proxies(procs) if "floor" in args.parts else None
        time.sleep(2)  # the static link forms within one introduction interval
        for r in range(args.rounds):
            ratios, raw = one_round(procs, a, b, args.parts, args.messages, chain)
            rounds.append(ratios)
            print(f"round {r + 1} (load {open('/proc/loadavg').read().split()[0]}):", flush=True)
            for name, (base, mesh) in raw.items():
                print(f"  {describe(name, base, mesh)}", flush=True)
    finally:
        procs.close()
    print(f"\n{'ratio (mesh / raw)':<30}{'worst':>8}{'median':>8}  target")
    for name in rounds[0] if rounds else ():
        values = [r[name] for r in rounds]
        target, higher = TARGETS.get(name, (None, not name.startswith("p99")))
        worst = min(values) if higher else max(values)
        verdict = "" if target is None else (f"{'>=' if higher else '<='} {target}: "
                                             f"{'met' if (worst >= target if higher else worst <= target) else 'missed'}")
        print(f"{name:<30}{worst:>8.2f}{statistics.median(values):>8.2f}  {verdict}")


if __name__ == "__main__":
    main()
