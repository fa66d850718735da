"""Quick side-by-side throughput: raw pyzmq PUB->SUB vs mesh publish->subscribe across 2 nodes.

One publisher process and one subscriber process per case, 100-byte payloads,
tcp loopback. Prints delivered msg/s at the subscriber and the ratio to raw
pyzmq. It uses the suite's workers (bench/workers.py) and process handling
(bench/procs.py); the full suite with NATS, Redis, latency, fan-out,
WebSocket and convergence is ``python -m bench`` (docs/PERFORMANCE.md).

    .venv/bin/python -m bench.quick_throughput [--messages 200000] [--history]

``--history`` adds two cases across 2 nodes: both nodes with a ``--history``
rule for another subject (what history costs the subjects that do not use
it), and for the benchmark's own subject (what it costs the ones that do).
"""

import argparse
import time

from bench.procs import LOOPBACK, Procs, free_port
from bench.scenarios import SUBJECT, run_case


def pair(procs, system, pub_endpoint, sub_endpoint, count):
    pub, (sub,) = run_case(procs, {"system": system, "endpoint": pub_endpoint, "subject": SUBJECT, "count": count},
                           [{"system": system, "endpoint": sub_endpoint, "subject": SUBJECT, "count": count}],
                           timeout=120 + count / 2000)
    return sub["delivered"], sub["rate"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--history", action="store_true", help="also measure with history rules on the nodes")
    args = parser.parse_args()
    n = args.messages
    procs = Procs()
    results = {}
    try:
        endpoint = f"tcp://{LOOPBACK}:{free_port()}"
        print(f"raw pyzmq PUB->SUB, {n} x 100 B ...", flush=True)
        results["raw pyzmq PUB->SUB"] = pair(procs, "zmq", endpoint, endpoint, n)
        a = procs.node("bench-a")
        b = procs.node("bench-b", "--peer", a.address)
        time.sleep(2)  # the static link forms within one introduction interval
        print("mesh across 2 nodes ...", flush=True)
        results["mesh A->B (2 nodes)"] = pair(procs, "mesh", a.address, b.address, n)
        print("mesh on one node ...", flush=True)
        results["mesh A->A (1 node)"] = pair(procs, "mesh", a.address, a.address, n)
        if args.history:
            for label, rule in (("history on another subject", "other.>=1000/60s"),
                                ("history on this subject", f"{SUBJECT}=1000/60s")):
                procs.stop_node(a)
                procs.stop_node(b)
                a = procs.node("bench-a", "--history", rule)
                b = procs.node("bench-b", "--peer", a.address, "--history", rule)
                time.sleep(2)
                print(f"mesh across 2 nodes, {label} ...", flush=True)
                results[f"mesh A->B, {label}"] = pair(procs, "mesh", a.address, b.address, n)
    finally:
        procs.close()
    raw_rate = results["raw pyzmq PUB->SUB"][1]
    print(f"\n{'case':<44}{'delivered':>12}{'msg/s':>12}{'x raw':>8}")
    for case, (delivered, rate) in results.items():
        print(f"{case:<44}{delivered:>12}{rate:>12,.0f}{rate / raw_rate:>8.2f}")


if __name__ == "__main__":
    main()
