"""Scenarios 1-3: one publisher process and its subscriber processes, every system side by side.

Throughput (1, and 1b at larger payloads), one-way latency at a fixed rate (2) and fan-out
to 10 subscribers (3), each against the same cases: raw pyzmq, the mesh over 1, 2 and 3
nodes (and the asyncio client), NATS over 1 and 2 servers, Redis with and without
pipelining (bench/scenarios.py ``Bench.pair_cases``). A case that uses fewer nodes leaves
the others idle: without interest there, nothing is sent to them.
"""

import statistics
from functools import partial

from .base import Column, Scenario, measure, ms, num, of, ok_row, option, target
from .procs import LOOPBACK, free_port
from .scenarios import SUBJECT


def throughput(bench, rows):
    return _throughput(bench, rows, bench.pair_cases(), bench.args.messages, size=100, step="1 throughput")


def sizes(bench, rows):
    """Throughput of raw pyzmq, the mesh across 2 nodes and NATS at larger payloads."""
    cases = [c for c in bench.pair_cases() if c[0] in ("zmq", "mesh2", "nats")]
    for size in bench.args.sizes:
        n = bench.args.messages if size <= 1024 else max(1000, bench.args.messages // 4)  # 800 MB at 16 KiB
        sized = [(f"{key}@{size}", f"{label}, {size:,} B", system, endpoints, extra)
                 for key, label, system, endpoints, extra in cases]
        _throughput(bench, rows, sized, n, size=size, step=f"1b sizes {size:,} B")
    return rows


def _throughput(bench, rows, cases, n, size, step):
    repeat = bench.args.repeat
    first = len(rows)
    for index, (key, label, system, endpoints, extra) in enumerate(cases, 1):
        bench.say(f"[{step} {index}/{len(cases)}] {label}: {repeat} x {n:,} messages")
        measure(bench, rows, key, label, partial(_runs, bench, key, system, endpoints, extra, n, size))
    mine = rows[first:]
    raw = next((r["rate"] for r in mine if r["key"].split("@")[0] == "zmq" and r["status"] == "ok"), None)
    for r in mine:
        if r["status"] == "ok" and raw:
            r["x_raw"] = r["rate"] / raw
    return rows


def _runs(bench, key, system, endpoints, extra, n, size):
    """``repeat`` runs of one case: the median rate, and the worst run's deliveries (so that
    loss in any run shows in the table)."""
    pub_ep, sub_ep = endpoints()
    runs = []
    for r in range(bench.args.repeat):
        if key.startswith("zmq") and r:
            pub_ep, sub_ep = endpoints()
        pub, (sub,) = bench.run_case(
            {"system": system, "endpoint": pub_ep, "subject": SUBJECT, "count": n, "size": size, **extra},
            [{"system": system, "endpoint": sub_ep, "subject": SUBJECT, "count": n, "size": size}],
            timeout=120 + n / 2000)
        runs.append({"sent": pub["sent"], "delivered": sub["delivered"], "rate": sub["rate"],
                     "seconds": sub["seconds"], "publisher_rate": pub["rate"], "gaps": sub.get("gaps")})
        bench.say(f"    run {r + 1}: {sub['delivered']:,}/{pub['sent']:,} delivered, "
                  f"{sub['rate']:,.0f} msg/s (publisher {pub['rate']:,.0f}/s)")
    rates = sorted(run["rate"] for run in runs)
    return {"sent": n, "size": size, "delivered": min(run["delivered"] for run in runs),
            "rate": statistics.median(rates), "rate_min": rates[0], "rate_max": rates[-1], "runs": runs}


def latency(bench, rows):
    rate, seconds = bench.args.rate, bench.args.latency_seconds
    count = max(1, int(rate * seconds))
    cases = [case for case in bench.pair_cases() if case[2] != "mesh_aio"]  # the bench's thread hop per message
    for index, (key, label, system, endpoints, extra) in enumerate(cases, 1):
        if key == "redis_pipe":
            label = f"Redis + redis-py, pipelined (flushed every {bench.args.redis_flush_ms:g} ms)"
            extra = {"batch_ms": bench.args.redis_flush_ms}
        bench.say(f"[2 latency {index}/{len(cases)}] {label}: {count:,} messages at {rate:,}/s")

        def run(system=system, endpoints=endpoints, extra=extra):
            pub_ep, sub_ep = endpoints()
            pub, (sub,) = bench.run_case(
                {"system": system, "endpoint": pub_ep, "subject": SUBJECT, "count": count, "rate": rate, **extra},
                [{"system": system, "endpoint": sub_ep, "subject": SUBJECT, "count": count, "mode": "latency"}],
                timeout=120 + seconds * 2)
            lat = sub["latency_ms"]
            return {"sent": pub["sent"], "delivered": sub["delivered"], "gaps": sub.get("gaps"),
                    "publisher_rate": pub["rate"], **{k: lat[k] for k in ("p50", "p99", "p99_9", "max")}}

        measure(bench, rows, key, label, run,
                lambda r: f"{r['delivered']:,}/{r['sent']:,} delivered; p50 {r['p50']} ms, p99 {r['p99']} ms, "
                          f"p99.9 {r['p99_9']} ms")
    raw = ok_row(rows, "zmq")
    for r in rows:
        if r["status"] == "ok" and raw and raw.get("p99"):
            r["p99_x_raw"] = r["p99"] / raw["p99"]
    return rows


def fanout(bench, rows):
    n, subs = bench.args.fanout_messages, bench.args.fanout_subscribers
    cases = _fanout_cases(bench, subs)
    for index, (key, label, system, endpoints, extra) in enumerate(cases, 1):
        bench.say(f"[3 fan-out {index}/{len(cases)}] {label}: {n:,} messages to each of {subs}")

        def run(system=system, endpoints=endpoints, extra=extra):
            pub_ep, sub_eps = endpoints()
            pub, results = bench.run_case(
                {"system": system, "endpoint": pub_ep, "subject": SUBJECT, "count": n, **extra},
                [{"system": system, "endpoint": ep, "subject": SUBJECT, "count": n} for ep in sub_eps],
                timeout=180 + n / 500)
            delivered = sum(r["delivered"] for r in results)
            firsts = [r["first"] for r in results if r["first"] is not None]
            lasts = [r["last"] for r in results if r["last"] is not None]
            span = (max(lasts) - min(firsts)) if firsts else 0.0
            rates = [r["rate"] for r in results]
            return {"sent": pub["sent"], "subscribers": subs, "delivered": delivered, "expected": pub["sent"] * subs,
                    "aggregate_rate": delivered / span if span else 0.0, "slowest_rate": min(rates),
                    "fastest_rate": max(rates), "publisher_rate": pub["rate"], "seconds": span}

        measure(bench, rows, key, label, run,
                lambda r: f"{r['delivered']:,}/{r['expected']:,} delivered in {r['seconds']:.2f} s: "
                          f"{r['aggregate_rate']:,.0f} deliveries/s, slowest subscriber "
                          f"{r['slowest_rate']:,.0f} msg/s")
    return rows


def _fanout_cases(bench, subs):
    """(key, label, system, endpoints, extra); endpoints() -> (publisher's, [each subscriber's])."""
    spread = [subs - 2 * (subs // 3), subs // 3, subs // 3]  # 4/3/3 for 10
    batch = bench.args.redis_batch

    def spread_over(servers):
        return servers[0].address, [servers[i].address for i in range(3) for _ in range(spread[i])]

    def zmq_eps():
        endpoint = f"tcp://{LOOPBACK}:{free_port()}"
        return endpoint, [endpoint] * subs

    def redis_eps():
        return bench.redis().address, [bench.redis().address] * subs

    where = "/".join(str(s) for s in spread)
    return [
        ("zmq", f"raw pyzmq, 1 PUB -> {subs} SUB", "zmq", zmq_eps, {}),
        ("mesh", f"mesh, 3 nodes ({where} subs on A/B/C, pub A)", "mesh", lambda: spread_over(bench.mesh()), {}),
        ("nats", f"NATS 3 servers ({where} subs, pub on 1)", "nats", lambda: spread_over(bench.nats()), {}),
        ("redis", "Redis + redis-py, 1 PUBLISH/call", "redis", redis_eps, {}),
        ("redis_pipe", f"Redis + redis-py, pipelined ({batch}/batch)", "redis", redis_eps, {"pipeline": batch}),
    ]


# -- targets -----------------------------------------------------------------------

def _ratio(name, want, mine, other, field, unit, label=None):
    """``mine[field] / other[field]`` against ``>= want``; ``label``: what was missing when not measured."""
    if mine and other and other[field]:
        value = mine[field] / other[field]
        return target(name, f">= {want}x", f"{value:.2f}x ({mine[field]:,.0f} vs {other[field]:,.0f} {unit})",
                      value, value >= want)
    return target(name, f">= {want}x", None if label is None else f"not measured ({label} or mesh 2 nodes missing)")


def throughput_targets(rows):
    mesh2 = ok_row(rows, "mesh2")
    return [_ratio("mesh across 2 nodes vs raw pyzmq throughput", 1.2, mesh2, ok_row(rows, "zmq"), "rate", "msg/s",
                   "raw pyzmq"),
            _ratio("mesh across 2 nodes vs NATS + nats-py throughput", 1.2, mesh2, ok_row(rows, "nats"), "rate",
                   "msg/s", "NATS"),
            _ratio("mesh across 2 nodes vs pipelined Redis throughput", 3.0, mesh2, ok_row(rows, "redis_pipe"),
                   "rate", "msg/s", "Redis pipelined"),
            _ratio("asyncio client vs threaded client, 2 nodes", 0.8, ok_row(rows, "aio2"), mesh2, "rate", "msg/s")]


def latency_targets(rows):
    mine, raw = ok_row(rows, "mesh2"), ok_row(rows, "zmq")
    name = "2-node p99 latency vs raw pyzmq p99"
    if mine and raw and raw["p99"]:
        value = mine["p99"] / raw["p99"]
        return [target(name, "<= 2x", f"{value:.2f}x ({mine['p99']:.3f} vs {raw['p99']:.3f} ms)", value, value <= 2.0)]
    return [target(name, "<= 2x")]


def fanout_targets(rows):
    return [_ratio("fan-out to 10 subscribers over 3 nodes vs NATS", 1.0, ok_row(rows, "mesh"), ok_row(rows, "nats"),
                   "aggregate_rate", "deliveries/s")]


RATE_COLUMNS = [Column("delivered / sent (worst run)", of("delivered", "sent")),
                Column("msg/s (median)", lambda r: num(r["rate"])),
                Column("min - max", lambda r: f"{num(r['rate_min'])} - {num(r['rate_max'])}"),
                Column("x raw pyzmq", lambda r: num(r.get("x_raw"), 2))]

SCENARIOS = [
    Scenario("throughput", "1", "Throughput: 1 publisher -> 1 subscriber, 100-byte messages", throughput,
             RATE_COLUMNS, targets=throughput_targets, options=[
                 option("--messages", 200_000, 20_000, type=int, help="throughput: messages per run"),
                 option("--repeat", 3, 1, type=int, help="throughput: runs per case, the median is reported"),
                 option("--redis-batch", type=int, default=100, help="Redis: publishes per pipeline (default 100)")]),
    Scenario("sizes", "1b", "Throughput at larger payloads: 1 publisher -> 1 subscriber", sizes, RATE_COLUMNS,
             options=[option("--sizes", [1024, 16384], [1024], type=int, nargs="+",
                             help="payload sizes for the sizes scenario")]),
    Scenario("latency", "2", "One-way latency at a fixed rate, 100-byte messages", latency, [
        Column("delivered / sent", of("delivered", "sent")), Column("p50 ms", lambda r: ms(r["p50"])),
        Column("p99 ms", lambda r: ms(r["p99"])), Column("p99.9 ms", lambda r: ms(r["p99_9"])),
        Column("max ms", lambda r: ms(r["max"])), Column("p99 x raw pyzmq", lambda r: num(r.get("p99_x_raw"), 2))],
        targets=latency_targets, options=[
            option("--rate", type=int, default=5000, help="latency: messages per second (default 5000)"),
            option("--latency-seconds", 10.0, 2.0, type=float, help="latency: seconds per case"),
            option("--redis-flush-ms", type=float, default=1.0,
                   help="Redis latency: a pipelined publisher flushes every this many ms (default 1)")]),
    Scenario("fanout", "3", "Fan-out: 1 publisher -> 10 subscribers", fanout, [
        Column("delivered / expected", of("delivered", "expected")),
        Column("deliveries/s (all subs)", lambda r: num(r["aggregate_rate"])),
        Column("slowest sub msg/s", lambda r: num(r["slowest_rate"])),
        Column("publisher msg/s", lambda r: num(r["publisher_rate"]))],
        targets=fanout_targets, options=[
            option("--fanout-messages", 50_000, 5_000, type=int, help="fan-out: messages (to each subscriber)"),
            option("--fanout-subscribers", type=int, default=10)]),
]
