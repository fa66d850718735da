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
from .registry import BY_NAME, SCENARIOS
from .scenarios import Bench

NAMES = [scenario.name for scenario in SCENARIOS]
DEFAULT = [scenario.name for scenario in SCENARIOS if scenario.default]
OPTIONS = [option for scenario in SCENARIOS for option in scenario.options]


def _dest(option):
    return option.flag.lstrip("-").replace("-", "_")


def _value(value):
    return " ".join(map(str, value)) if isinstance(value, list) else value


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small counts: " + ", ".join(
        f"{_dest(o)}={o.quick}" for o in OPTIONS if o.quick is not None))
    p.add_argument("--scenarios", nargs="+", choices=NAMES, default=DEFAULT, metavar="NAME",
                   help=f"which to run (default all but {' '.join(sorted(set(NAMES) - set(DEFAULT)))}: "
                        f"{' '.join(NAMES)})")
    for o in OPTIONS:
        sizes = f" (full {_value(o.full)}, quick {_value(o.quick)})" if o.full is not None else ""
        p.add_argument(o.flag, **{**o.kwargs, "help": o.kwargs.get("help", "") + sizes})
    p.add_argument("--skip-peer", action="append", default=[], choices=["nats", "redis"],
                   help="leave a peer out (reported as skipped)")
    p.add_argument("--no-install", dest="install", action="store_false",
                   help="do not apt-get install missing servers; report those peers as skipped")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="directory for the JSON")
    args = p.parse_args(argv)
    for o in OPTIONS:
        if getattr(args, _dest(o)) is None and o.full is not None:
            setattr(args, _dest(o), o.quick if args.quick else o.full)
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
            BY_NAME[name].run(bench, rows)
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
    found = bench.binaries()
    result["versions"] = report.versions(found.get("nats"), found.get("redis"))
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
