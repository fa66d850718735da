"""What the run prints and writes: the machine, versions, one table per scenario
(Markdown, so the same text reads in a terminal and in docs/PERFORMANCE.md),
the targets of the benchmark issue each met or missed, and the JSON file."""

import importlib.metadata
import json
import os
import platform
import re
import subprocess

from .peers import version_of
from .registry import BY_NAME, SCENARIOS


def machine():
    info = {"nproc": os.cpu_count(), "kernel": platform.release()}
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            info["cpu"] = match.group(1).strip() if match else None
        with open("/proc/meminfo") as f:
            match = re.search(r"^MemTotal:\s*(\d+) kB", f.read(), re.M)
            info["ram_gib"] = round(int(match.group(1)) / 1024 / 1024, 1) if match else None
        info["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        pass
    return info


def _dist(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _deb(package):
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def versions(nats_binary=None, redis_binary=None):
    import sys

    import zmq

    return {
        "python": sys.version.split()[0], "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
        "gevent": _dist("gevent"), "msgpack": _dist("msgpack"), "ws4py": _dist("ws4py"),
        "nats-py": _dist("nats-py"), "redis-py": _dist("redis"), "hiredis": _dist("hiredis"),
        "nats-server": version_of([nats_binary, "--version"]) if nats_binary else None,
        "redis-server": version_of([redis_binary, "--version"], r"v=(\d+\.\d+\.\d+)") if redis_binary else None,
        "zookeeper": _deb("zookeeper"),
    }


# -- tables ------------------------------------------------------------------

def _table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in cells) + " |" for cells in rows]
    return "\n".join(lines)


def _cells(scenario, r):
    """A row's cells: its label, then each column's cell; a skipped or failed row's reason
    spans the columns not marked ``always``."""
    if r["status"] == "ok":
        return [r["label"]] + [column.cell(r) for column in scenario.columns]
    always = [column.cell(r) for column in scenario.columns if column.always]
    reason = (r.get("reason") or "").strip().splitlines()
    text = f"{'**FAILED**' if r['status'] == 'failed' else 'skipped'}: {reason[0] if reason else ''}"
    return [r["label"], *always, text[:200]] + [""] * (len(scenario.columns) - len(always) - 1)


def table(name, rows):
    scenario = BY_NAME[name]
    return _table([scenario.first] + [column.head for column in scenario.columns],
                  [_cells(scenario, r) for r in rows])


def targets(scenarios):
    """Every scenario's targets, each with its measured value and met/missed (None: not measured)."""
    return [item for scenario in SCENARIOS if scenario.targets
            for item in scenario.targets(scenarios.get(scenario.name, []))]


def targets_table(items):
    body = [[t["target"], t["want"], t["measured"],
             "met" if t["met"] else ("**missed**" if t["met"] is False else "not measured")] for t in items]
    return _table(["target", "wanted", "measured", "result"], body)


def render(result):
    """The whole report as Markdown text."""
    m, v = result["machine"], result["versions"]
    load = m.get("loadavg_1min_during_run", {})
    partial = " (INTERRUPTED: partial)" if result.get("interrupted") else ""
    parts = [f"meshnode benchmark, {result['started']}{partial}",
             f"machine: {m.get('nproc')} CPUs ({m.get('cpu')}), {m.get('ram_gib')} GiB RAM, Linux {m.get('kernel')}; "
             f"load average at start {' '.join(m.get('loadavg_start', []))}, at end "
             f"{' '.join(m.get('loadavg_end', []))}, 1-minute load during the run mean "
             f"{load.get('mean')} max {load.get('max')}",
             "versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
             "command: " + result["command"], ""]
    for name, rows in result["scenarios"].items():
        parts += [f"### {BY_NAME[name].number}. {BY_NAME[name].title}", "", table(name, rows), ""]
    if result.get("targets"):
        parts += ["### Targets", "", targets_table(result["targets"]), ""]
    return "\n".join(parts)


def write(result, directory):
    os.makedirs(directory, exist_ok=True)
    stamp = result["started"].replace(":", "").replace("-", "")
    path = os.path.join(directory, f"{stamp}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(path[:-5] + ".md", "w") as f:
        f.write(render(result) + "\n")
    return path
