"""Run the benchmark suite: ``python -m bench [--quick] [options]``.

Prints progress while it runs, then one table per scenario and the targets;
writes the same as JSON and Markdown to bench/results/<timestamp>.json/.md.
Exit status: 0 when every row was measured or skipped, 1 when one failed,
130 when interrupted (the partial results are still written).
"""

import argparse
import os
import signal
import sys
import time

from . import report
from .procs import ROOT, Procs, raise_nofile_limit
from .scenarios import Bench

SCENARIOS = ("throughput", "sizes", "latency", "fanout", "websocket", "convergence", "receive", "entities",
             "http", "edge_memory", "revocation", "recovery", "requests", "queues", "hooks", "scale", "groups", "partitions",
             "durable")
DEFAULT = [name for name in SCENARIOS if name != "partitions"]  # it needs root and takes minutes

FULL = {"messages": 200_000, "repeat": 3, "latency_seconds": 10.0, "fanout_messages": 50_000,
        "ws_clients": [1000, 5000, 10000], "broadcasts": 5, "convergence_trials": 5,
        "sizes": [1024, 16384], "subscriptions": [1000, 10000], "entities": 100_000, "entity_seconds": 60.0,
        "scale_nodes": 128, "scale_idle_seconds": 10.0, "group_count": 4, "group_size": 16,
        "partition_cut": 25.0, "flap_seconds": 60.0}
QUICK = {"messages": 20_000, "repeat": 1, "latency_seconds": 2.0, "fanout_messages": 5_000,
         "ws_clients": [200, 1000], "broadcasts": 3, "convergence_trials": 3,
         "sizes": [1024], "subscriptions": [1000], "entities": 10_000, "entity_seconds": 8.0,
         "scale_nodes": 32, "scale_idle_seconds": 5.0, "group_count": 4, "group_size": 6,
         "partition_cut": 12.0, "flap_seconds": 20.0}


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small counts: " + ", ".join(
        f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=DEFAULT, metavar="NAME",
                   help=f"which to run (default all but partitions, which needs root: {' '.join(SCENARIOS)})")
    p.add_argument("--messages", type=int, help="throughput: messages per run (full 200000)")
    p.add_argument("--repeat", type=int, help="throughput: runs per case, the median is reported (full 3)")
    p.add_argument("--sizes", type=int, nargs="+", help="payload sizes for the sizes scenario (full 1024 16384)")
    p.add_argument("--rate", type=int, default=5000, help="latency: messages per second (default 5000)")
    p.add_argument("--latency-seconds", type=float, help="latency: seconds per case (full 10)")
    p.add_argument("--fanout-messages", type=int, help="fan-out: messages (to each subscriber; full 50000)")
    p.add_argument("--fanout-subscribers", type=int, default=10)
    p.add_argument("--ws-clients", type=int, nargs="+", help="WebSocket client counts (full 1000 5000 10000)")
    p.add_argument("--broadcasts", type=int, help="WebSocket: broadcasts per trial (full 5)")
    p.add_argument("--broadcast-interval", type=float, default=1.0, help="seconds between broadcasts")
    p.add_argument("--convergence-trials", type=int, help="joins and subscribes to time (full 5)")
    p.add_argument("--convergence-rate", type=int, default=1000,
                   help="convergence: publisher ticks per second (the resolution; default 1000)")
    p.add_argument("--subscriptions", type=int, nargs="+",
                   help="receive: subscription counts for idle cost and scale (full 1000 10000)")
    p.add_argument("--entities", type=int, help="entities: distinct subjects (full 100000)")
    p.add_argument("--entity-seconds", type=float, help="entities: seconds of the workload (full 60)")
    p.add_argument("--scale-nodes", type=int, help="scale: nodes started at once through ZooKeeper (full 128)")
    p.add_argument("--scale-idle-seconds", type=float, help="scale: quiet period over which idle CPU is measured "
                                                            "(full 10)")
    p.add_argument("--group-count", type=int, help="groups: groups joined by gateways (full 4)")
    p.add_argument("--group-size", type=int, help="groups: nodes per group, the first two gateway candidates "
                                                  "(full 16)")
    p.add_argument("--partition-cut", type=float, help="partitions: seconds each cut lasts (full 25)")
    p.add_argument("--flap-seconds", type=float, help="partitions: seconds of the flapping link (full 60)")
    p.add_argument("--redis-batch", type=int, default=100, help="Redis: publishes per pipeline (default 100)")
    p.add_argument("--redis-flush-ms", type=float, default=1.0,
                   help="Redis latency: a pipelined publisher flushes every this many ms (default 1)")
    p.add_argument("--skip-peer", action="append", default=[], choices=["nats", "redis"],
                   help="leave a peer out (reported as skipped)")
    p.add_argument("--no-install", dest="install", action="store_false",
                   help="do not apt-get install missing servers; report those peers as skipped")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="directory for the JSON")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


class LoadSampler:
    """The 1-minute load average every 5 s during the run (the machine may be shared)."""

    def __init__(self):
        import threading

        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(5.0):
            try:
                self.samples.append(float(open("/proc/loadavg").read().split()[0]))
            except OSError:
                pass

    def stop(self):
        self._stop.set()
        s = self.samples
        return {"samples": len(s), "max": max(s) if s else None,
                "mean": round(sum(s) / len(s), 2) if s else None}


def say(text):
    print(text, file=sys.stderr, flush=True)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    # Ctrl-C stops the run even when a shell started it with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise_nofile_limit()
    procs = Procs()
    bench = Bench(args, procs, say)
    result = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(["python -m bench"] + (
        sys.argv[1:] if argv is None else list(argv))), "machine": report.machine(),
        "config": {k: v for k, v in vars(args).items() if k != "out"}, "scenarios": {}}
    status = 0
    began = time.monotonic()
    load = LoadSampler()
    try:
        for name in args.scenarios:
            result["scenarios"][name] = rows = []
            getattr(bench, name)(rows)
        if any(r["status"] == "failed" for rows in result["scenarios"].values() for r in rows):
            status = 1
    except KeyboardInterrupt:
        result["interrupted"] = True
        status = 130
        say("interrupted: stopping every process started ...")
    finally:
        procs.close()
        left = procs.alive()
        if left:
            say(f"WARNING: still running after stop: {left}")
    nats_binary, _ = bench._peer.get("nats", (None, None))
    redis_binary, _ = bench._peer.get("redis", (None, None))
    result["versions"] = report.versions(nats_binary, redis_binary)
    result["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    result["machine"]["loadavg_1min_during_run"] = load.stop()
    result["seconds"] = round(time.monotonic() - began, 1)
    result["targets"] = report.targets(result["scenarios"])
    path = report.write(result, args.out)
    print(report.render(result))
    print(f"\n{result['seconds']:.0f} s; JSON: {os.path.relpath(path, os.getcwd())} "
          f"(Markdown beside it)")
    return status


if __name__ == "__main__":
    sys.exit(main())
