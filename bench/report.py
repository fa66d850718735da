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

TITLES = {
    "throughput": "1. Throughput: 1 publisher -> 1 subscriber, 100-byte messages",
    "sizes": "1b. Throughput at larger payloads: 1 publisher -> 1 subscriber",
    "latency": "2. One-way latency at a fixed rate, 100-byte messages",
    "fanout": "3. Fan-out: 1 publisher -> 10 subscribers",
    "websocket": "4. WebSocket fan-out: one broadcast to every client of one server",
    "convergence": "5. Convergence",
    "receive": "6. The client's receive path: gevent fairness and many subscriptions",
    "entities": "7. Per-entity subjects: wire overhead and memory over time",
    "http": "8. HTTP publish at an edge (POST /pub)",
    "edge_memory": "9. An edge under a WebSocket publish flood and connection churn",
    "revocation": "10. Revoking a token subject across 3 nodes",
    "recovery": "11. Recovering missed messages from history at another node",
    "requests": "12. Request/reply round trips across two nodes, one request at a time",
    "queues": "13. Queue-group throughput: 6 members over 3 nodes",
    "hooks": "14. Webhook deliveries to a fast local receiver, beside a direct subscription",
    "scale": "15. Many nodes on one machine through one ZooKeeper, and one more joining",
    "groups": "16. Groups of nodes joined by gateways",
    "partitions": "17. Partitions between hosts (namespaces): delivery after the heal, loss counted",
    "durable": "History in memory and on disk (--data-dir): rate, bytes per message, recovery after kill -9",
}


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


# -- tables --------------------------------------------------------------------

def _n(value, digits=0):
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def _ms(value):
    if value is None:
        return "-"
    return f"{value:,.3f}" if value < 1 else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _not_ok(r, width):
    reason = (r.get("reason") or "").strip().splitlines()
    text = f"{'**FAILED**' if r['status'] == 'failed' else 'skipped'}: {reason[0] if reason else ''}"
    return [text[:200]] + [""] * (width - 1)


def _table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in cells) + " |" for cells in rows]
    return "\n".join(lines)


def table(name, rows):
    if name in ("throughput", "sizes"):
        head = ["case", "delivered / sent (worst run)", "msg/s (median)", "min - max", "x raw pyzmq"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, len(head) - 1))
                continue
            body.append([r["label"], f"{_n(r['delivered'])} / {_n(r['sent'])}", _n(r["rate"]),
                         f"{_n(r['rate_min'])} - {_n(r['rate_max'])}", _n(r.get("x_raw"), 2)])
    elif name == "latency":
        head = ["case", "delivered / sent", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "p99 x raw pyzmq"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, len(head) - 1))
                continue
            body.append([r["label"], f"{_n(r['delivered'])} / {_n(r['sent'])}", _ms(r["p50"]), _ms(r["p99"]),
                         _ms(r["p99_9"]), _ms(r["max"]), _n(r.get("p99_x_raw"), 2)])
    elif name == "fanout":
        head = ["case", "delivered / expected", "deliveries/s (all subs)", "slowest sub msg/s", "publisher msg/s"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, len(head) - 1))
                continue
            body.append([r["label"], f"{_n(r['delivered'])} / {_n(r['expected'])}", _n(r["aggregate_rate"]),
                         _n(r["slowest_rate"]), _n(r["publisher_rate"])])
    elif name == "websocket":
        head = ["server", "clients", "connected", "delivered / expected", "p50 ms", "p99 ms",
                "server RSS before -> after", "per connection"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"], _n(r.get("clients"))] + _not_ok(r, len(head) - 2))
                continue
            kib = r["kib_per_connection"]
            body.append([r["label"], _n(r["clients"]), _n(r["connected"]),
                         f"{_n(r['deliveries'])} / {_n(r['expected'])}", _ms(r["p50"]), _ms(r["p99"]),
                         f"{r['rss_before_mib']:.1f} -> {r['rss_after_mib']:.1f} MiB",
                         f"{kib:.1f} KiB ({kib * 1.024:.1f} KB)" if kib is not None else "-"])
    elif name == "convergence":
        head = ["case", "trials", "median ms", "min ms", "max ms", "of which after ready (median)"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, len(head) - 1))
                continue
            body.append([r["label"], r["trials"], _ms(r["median_ms"]), _ms(r["min_ms"]), _ms(r["max_ms"]),
                         _ms(r.get("after_ready_median_ms"))])
    elif name == "receive":
        head = ["case", "result"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, 1))
            elif r["key"] == "green":
                body.append([r["label"], f"worst lateness {_ms(r['drain_max_late_ms'])} ms during the drain "
                             f"({_n(r['delivered'])} delivered, {r['ticks_during_drain']} ticks), "
                             f"{_ms(r['idle_max_late_ms'])} ms with no traffic"])
            else:
                body.append([r["label"], f"subscribe {r['subscribe_seconds']:.2f} s; idle "
                             f"{r['idle_core_fraction'] * 100:.2f}% of a core; descriptors "
                             f"{r['fds_before']} -> {r['fds_after']}; RSS {r['rss_before_mib']:.1f} -> "
                             f"{r['rss_after_mib']:.1f} MiB; one message to each: {_n(r['delivered'])} "
                             f"delivered in {r['deliver_seconds']:.2f} s"])
    elif name == "entities":
        head = ["case", "published", "wire msgs / published", "received (gaps, dropped)",
                "publisher RSS MiB over time", "subscriber RSS MiB", "edge RSS MiB"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, len(head) - 1))
                continue
            series = lambda samples: " ".join(f"{s[1]:.0f}" for s in samples)  # noqa: E731
            body.append([r["label"], _n(r["published"]), f"{r['wire_per_published']:.3f}",
                         f"{_n(r['received'])} ({r['gaps']}, {r['dropped']})", series(r["publisher_rss"]),
                         series(r["subscriber_rss"]), series(r["edge_rss"])])
    elif name == "http":
        head = ["case", "requests", "requests/s"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, len(head) - 1))
                continue
            body.append([r["label"], _n(r["requests"]), _n(r["rate"])])
    elif name == "edge_memory":
        head = ["case", "result", "edge RSS MiB"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, len(head) - 1))
            elif r["key"] == "flood":
                body.append([r["label"], f"{_n(r['rate'])} msg/s published; fast readers got "
                             f"{', '.join(_n(n) for n in r['delivered'])}, {r['fast_cut']} cut; slow consumers "
                             f"{r['slow_consumers']}, dropped {r['dropped']}",
                             f"{r['rss_before_mib']:.0f} -> peak {r['rss_peak_mib']:.0f} -> "
                             f"{r['rss_after_mib']:.0f} after"])
            else:
                body.append([r["label"], "all closed", f"{r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} "
                             f"-> {r['rss_later_mib']:.0f} five seconds later"])
    elif name == "revocation":
        head = ["case", "peers confirmed", "revoke answered", "last connection closed"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, len(head) - 1))
                continue
            body.append([r["label"], ", ".join(f"{k}: {v}" for k, v in r["peers"].items()),
                         f"{r['reply_ms']:.0f} ms", f"{r['last_close_ms']:.0f} ms"])
    elif name == "recovery":
        head = ["case", "recovered", "seconds", "msg/s", "every stream complete"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, len(head) - 1))
                continue
            body.append([r["label"], f"{_n(r['recovered'])} / {_n(r['messages'])}", f"{r['seconds']:.2f}",
                         _n(r["rate"]), "yes" if r["complete"] else "**no**"])
    elif name == "durable":
        head = ["case", "msg/s", "x memory", "disk B/msg", "restart s", "recovered", "ready to all read s"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, len(head) - 1))
                continue
            body.append([r["label"], _n(r["rate"]), _n(r.get("of_memory"), 2), _n(r.get("disk_bytes_per_message")),
                         _n(r.get("restart_seconds"), 2), _n(r.get("recovered")), _n(r.get("recovered_seconds"), 2)])
    elif name == "requests":
        head = ["case", "requests", "round trips/s", "p50 ms", "p99 ms"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, len(head) - 1))
                continue
            body.append([r["label"], _n(r["requests"]), _n(r["rate"]), f"{r['p50']:.3f}", f"{r['p99']:.3f}"])
    elif name == "queues":
        head = ["case", "delivered once / sent", "twice", "msg/s", "per member"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, len(head) - 1))
                continue
            body.append([r["label"], f"{_n(r['delivered'])} / {_n(r['messages'])}", str(r["duplicates"]),
                         _n(r["rate"]), " ".join(_n(n) for n in r["per_member"])])
    elif name == "hooks":
        head = ["case", "delivered once / sent", "burst deliveries/s", "webhook p50 / p99 ms",
                "subscription p50 / p99 ms"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, len(head) - 1))
                continue
            body.append([r["label"], f"{_n(r['delivered'])} / {_n(r['messages'])}", _n(r["rate"]),
                         f"{r['hook_p50']:.1f} / {r['hook_p99']:.1f}", f"{r['sub_p50']:.2f} / {r['sub_p99']:.2f}"])
    elif name == "scale":
        head = ["case", "start s", "converge s after last ready", "proxy restarts per node (median / max)",
                "delivered (fewest of 100)", "idle CPU per node (median / max)", "RSS MiB (median)",
                "fds (median)", "one more join: linked s / restarts"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, len(head) - 1))
                continue
            body.append([r["label"], f"{r['start_s']:.1f}", f"{r['converge_s']:.2f}",
                         f"{r['restarts_median']:g} / {r['restarts_max']}", str(r["delivered_min"]),
                         f"{r['idle_cpu_median'] * 100:.2f} % / {r['idle_cpu_max'] * 100:.2f} %",
                         f"{r['rss_mib_median']:.0f}", f"{r['fds_median']:g}",
                         f"{r['join_s']:.2f} / {r['join_restarts_max']}"])
    elif name == "groups":
        head = ["case", "start / converge s", "delivered of 100 (fewest-most), from first / last group",
                "latency p50 / p99 ms, in group; across", "msg/s in group; across",
                "idle CPU median / max, member; gateway", "RSS MiB / fds median, member; gateway",
                "failover: active / crossing again s, lost, duplicates", "one more join s / restarts elsewhere"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, len(head) - 1))
                continue
            body.append([
                r["label"], f"{r['start_s']:.1f} / {r['converge_s']:.2f}",
                f"{r['delivered_first_min']}-{r['delivered_first_max']} / "
                f"{r['delivered_last_min']}-{r['delivered_last_max']}",
                f"{r['latency_in_p50_ms']:.2f} / {r['latency_in_p99_ms']:.2f}; "
                f"{r['latency_across_p50_ms']:.2f} / {r['latency_across_p99_ms']:.2f}",
                f"{_n(r['rate_in'])}; {_n(r['rate_across'])}",
                f"{r['idle_cpu_member_median'] * 100:.2f} / {r['idle_cpu_member_max'] * 100:.2f} %; "
                f"{r['idle_cpu_gateway_median'] * 100:.2f} / {r['idle_cpu_gateway_max'] * 100:.2f} %",
                f"{r['rss_mib_member_median']:.0f} / {r['fds_member_median']:g}; "
                f"{r['rss_mib_gateway_median']:.0f} / {r['fds_gateway_median']:g}",
                f"{r['failover_active_s']:.2f} / {r['failover_resumed_s']:.2f}, {r['failover_lost']} of "
                f"{r['failover_sent']}, {r['failover_duplicates']}",
                f"{r['join_s']:.2f} / {r['join_restarts_other_groups']}"])
    elif name == "partitions":
        head = ["case", "resumed s after the heal (slowest pair)", "received per subscriber",
                "gaps per subscriber", "sent", "received + gaps = sent"]
        body = []
        for r in rows:
            if r["status"] != "ok":
                body.append([r["label"]] + _not_ok(r, len(head) - 1))
                continue
            body.append([r["label"], "**never**" if r["resumed_s"] is None else f"{r['resumed_s']:.2f}",
                         " / ".join(map(str, r["received"])), " / ".join(map(str, r["gaps"])), str(r["sent"]),
                         "yes" if r["accounted"] else "**no**"])
    else:
        raise ValueError(name)
    return _table(head, body)


# -- targets -------------------------------------------------------------------

def _get(scenarios, name, key):
    for r in scenarios.get(name, []):
        if r["key"] == key and r["status"] == "ok":
            return r
    return None


def targets(scenarios):
    """The issue's targets, each with its measured value and met/missed (None: not measured)."""
    out = []
    tp = lambda key: _get(scenarios, "throughput", key)  # noqa: E731
    mesh2 = tp("mesh2")

    def ratio(name, other_key, want, other_label):
        other = tp(other_key)
        if mesh2 and other and other["rate"]:
            value = mesh2["rate"] / other["rate"]
            out.append({"target": name, "want": f">= {want}x", "measured": f"{value:.2f}x "
                        f"({mesh2['rate']:,.0f} vs {other['rate']:,.0f} msg/s)", "ratio": value,
                        "met": value >= want})
        else:
            out.append({"target": name, "want": f">= {want}x", "measured": f"not measured ({other_label} "
                        "or mesh 2 nodes missing)", "ratio": None, "met": None})

    ratio("mesh across 2 nodes vs raw pyzmq throughput", "zmq", 1.2, "raw pyzmq")
    ratio("mesh across 2 nodes vs NATS + nats-py throughput", "nats", 1.2, "NATS")
    ratio("mesh across 2 nodes vs pipelined Redis throughput", "redis_pipe", 3.0, "Redis pipelined")
    aio = tp("aio2")
    if aio and mesh2 and mesh2["rate"]:
        value = aio["rate"] / mesh2["rate"]
        out.append({"target": "asyncio client vs threaded client, 2 nodes", "want": ">= 0.8x",
                    "measured": f"{value:.2f}x ({aio['rate']:,.0f} vs {mesh2['rate']:,.0f} msg/s)", "ratio": value,
                    "met": value >= 0.8})
    else:
        out.append({"target": "asyncio client vs threaded client, 2 nodes", "want": ">= 0.8x",
                    "measured": "not measured", "ratio": None, "met": None})
    fan_mesh, fan_nats = _get(scenarios, "fanout", "mesh"), _get(scenarios, "fanout", "nats")
    if fan_mesh and fan_nats and fan_nats["aggregate_rate"]:
        value = fan_mesh["aggregate_rate"] / fan_nats["aggregate_rate"]
        out.append({"target": "fan-out to 10 subscribers over 3 nodes vs NATS", "want": ">= 1.0x",
                    "measured": f"{value:.2f}x ({fan_mesh['aggregate_rate']:,.0f} vs "
                                f"{fan_nats['aggregate_rate']:,.0f} deliveries/s)", "ratio": value,
                    "met": value >= 1.0})
    else:
        out.append({"target": "fan-out to 10 subscribers over 3 nodes vs NATS", "want": ">= 1.0x",
                    "measured": "not measured", "ratio": None, "met": None})
    lat2, raw = _get(scenarios, "latency", "mesh2"), _get(scenarios, "latency", "zmq")
    if lat2 and raw and raw["p99"]:
        value = lat2["p99"] / raw["p99"]
        out.append({"target": "2-node p99 latency vs raw pyzmq p99", "want": "<= 2x",
                    "measured": f"{value:.2f}x ({lat2['p99']:.3f} vs {raw['p99']:.3f} ms)", "ratio": value,
                    "met": value <= 2.0})
    else:
        out.append({"target": "2-node p99 latency vs raw pyzmq p99", "want": "<= 2x",
                    "measured": "not measured", "ratio": None, "met": None})
    ws = [r for r in scenarios.get("websocket", []) if r["key"].startswith("mesh-")
          and not r["key"].startswith("mesh-auth") and r["status"] == "ok"]
    big = max(ws, key=lambda r: r["clients"]) if ws else None
    label = f"{big['clients']:,} WebSocket clients" if big else "10,000 WebSocket clients"
    if big and big["clients"] < 10_000:
        label += " (fewer than the 10,000 of the target: a smaller run)"
    if big and big["kib_per_connection"] is not None:
        kb = big["kib_per_connection"] * 1.024
        out.append({"target": f"{label}: memory per connection", "want": "<= 20 KB",
                    "measured": f"{kb:.1f} KB ({big['kib_per_connection']:.1f} KiB; "
                                f"{big['connected']:,} connected)",
                    "ratio": kb / 20, "met": kb <= 20 and big["connected"] == big["clients"]})
        out.append({"target": f"{label}: broadcast p99", "want": "<= 250 ms",
                    "measured": f"{big['p99']:.0f} ms ({big['deliveries']:,}/{big['expected']:,} delivered)",
                    "ratio": big["p99"] / 250 if big["p99"] is not None else None,
                    "met": big["p99"] is not None and big["p99"] <= 250 and big["deliveries"] == big["expected"]})
    else:
        for what, want in (("memory per connection", "<= 20 KB"), ("broadcast p99", "<= 250 ms")):
            out.append({"target": f"{label}: {what}", "want": want, "measured": "not measured",
                        "ratio": None, "met": None})
    many = _get(scenarios, "scale", "mesh")
    name = f"{many['nodes']} nodes" if many else "128 nodes"
    out.append({"target": f"{name}: converge after the last is ready", "want": "< 5 s",
                "measured": f"{many['converge_s']:.2f} s" if many else "not measured",
                "ratio": many["converge_s"] / 5 if many else None, "met": many["converge_s"] < 5 if many else None})
    out.append({"target": f"{name}: idle CPU per node (max)", "want": "< 1 %",
                "measured": f"{many['idle_cpu_max'] * 100:.2f} % (median {many['idle_cpu_median'] * 100:.2f} %)"
                if many else "not measured",
                "ratio": many["idle_cpu_max"] / 0.01 if many else None,
                "met": many["idle_cpu_max"] < 0.01 if many else None})
    grouped = _get(scenarios, "groups", "groups")
    name = f"{grouped['groups'] * grouped['size']} nodes in {grouped['groups']} groups" if grouped \
        else "128 nodes in groups"
    out.append({"target": f"{name}: converge after the last is ready", "want": "< 5 s",
                "measured": f"{grouped['converge_s']:.2f} s" if grouped else "not measured",
                "ratio": grouped["converge_s"] / 5 if grouped else None,
                "met": grouped["converge_s"] < 5 if grouped else None})
    worst = max(grouped["idle_cpu_member_max"], grouped["idle_cpu_gateway_max"]) if grouped else None
    out.append({"target": f"{name}: idle CPU per node (max, gateways included)", "want": "< 1 %",
                "measured": f"{worst * 100:.2f} % (members' median {grouped['idle_cpu_member_median'] * 100:.2f} %)"
                if grouped else "not measured",
                "ratio": worst / 0.01 if grouped else None, "met": worst < 0.01 if grouped else None})
    return out


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
        parts += [f"### {TITLES[name]}", "", table(name, rows), ""]
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
