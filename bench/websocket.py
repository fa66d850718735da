"""Scenario 4: WebSocket fan-out, one broadcast to every client of one server.

One server (a meshnode edge, the same with JWT auth, or nats-server's WebSocket
listener), N clients in one bench.wsclient process on one epoll loop, timestamped
broadcasts. Reported: clients connected, deliveries, broadcast latency p50/p99 and the
server's RSS per connection. Redis has no WebSocket endpoint (a skipped row).
"""

import json
import time
from functools import partial

from .base import Column, Scenario, measure, ms, num, of, option, skipped, target
from .peers import NatsServer
from .procs import LOOPBACK, rss_kib
from .scenarios import BENCH_SECRET, MeshPublisher, RawNats
from .workers import PAD

LABELS = {"mesh": "meshnode edge (/ws/<pattern>)",
          "mesh-auth": "meshnode edge, JWT auth (an expiry timer per connection)",
          "nats": "nats-server WebSocket listener", "redis": "Redis"}


def websocket(bench, rows):
    for count in bench.args.ws_clients:
        for kind, label in LABELS.items():
            key = f"{kind}-{count}"
            if kind == "redis":
                rows.append(dict(skipped(key, label, "Redis has no WebSocket endpoint"), clients=count))
                continue
            bench.say(f"[4 websocket] {label}: {count:,} clients, {bench.args.broadcasts} broadcasts")
            measure(bench, rows, key, label, partial(ws_trial, bench, kind, count),
                    lambda r: f"{r['connected']:,} connected; {r['deliveries']:,}/{r['expected']:,} delivered; "
                              f"p50 {r['p50']} ms, p99 {r['p99']} ms; {r['kib_per_connection']:.1f} KiB per connection",
                    clients=count)
    return rows


def _server(bench, kind, count):
    """(host, port, pid, path, stop, publisher maker) of a started server for ``count`` clients."""
    if kind.startswith("mesh"):
        auth, path = [], "/ws/bench.all"
        if kind == "mesh-auth":
            import jwt

            auth = ["--auth-secret", BENCH_SECRET]
            path += "?token=" + jwt.encode({"exp": time.time() + 3600, "sub": "bench", "subscribe": [">"]},
                                           BENCH_SECRET, algorithm="HS256")
        node = bench.procs.node(f"bench-edge-{count}", "--http", "0", "--max-connections", str(count + 100), *auth)
        host, port = node.fields["http"].rsplit(":", 1)
        return host, port, node.pid, path, lambda: bench.procs.stop_node(node), lambda: MeshPublisher(node.address)
    binary = bench.binary("nats")
    server = NatsServer(bench.procs, binary, name=f"nats-ws-{count}", websocket=True).wait_ready()
    return LOOPBACK, server.ws_port, server.pid, "/", server.stop, lambda: RawNats(f"{LOOPBACK}:{server.port}")


def ws_trial(bench, kind, count):
    """One server, ``count`` clients in one bench.wsclient process, timestamped broadcasts."""
    host, port, pid, path, stop, publisher_of = _server(bench, kind, count)
    try:
        time.sleep(0.5)
        before = rss_kib(pid)
        cfg = {"kind": "mesh" if kind.startswith("mesh") else kind, "host": host, "port": int(port),
               "path": path, "count": count, "subject": "bench.all"}
        client = bench.procs.worker(None, cfg, name=f"wsclient:{kind}", module="bench.wsclient")
        started = time.monotonic()
        line = client.line(120 + count / 50)
        if not line.startswith("ready "):
            raise RuntimeError(f"wsclient: {line!r}{client.stderr_text()}")
        status = json.loads(line[6:])
        connect_s = time.monotonic() - started
        time.sleep(1.0)
        after = rss_kib(pid)
        _broadcast(bench, publisher_of(), waits=kind.startswith("mesh"))
        client.send("stop")
        result = client.result(120)
        end = rss_kib(pid)
        bench.procs.stop(client.proc)
    finally:
        stop()
    connected = status["connected"]
    return {"clients": count, "connected": connected, "failed": status["failed"],
            "connect_seconds": round(connect_s, 1), "rss_before_mib": round(before / 1024, 1),
            "rss_after_mib": round(after / 1024, 1), "rss_after_broadcasts_mib": round(end / 1024, 1),
            "kib_per_connection": (after - before) / connected if connected else None,
            "deliveries": result["deliveries"], "expected": connected * bench.args.broadcasts,
            "latency_ms": result["latency_ms"],
            "p50": result["latency_ms"]["p50"], "p99": result["latency_ms"]["p99"]}


def _broadcast(bench, publisher, waits):
    """``--broadcasts`` timestamped messages, ``--broadcast-interval`` apart; ``waits``: first
    until the edge's subscription reached the publisher."""
    try:
        if waits and not publisher.client.wait_for_interest("bench.all", timeout=10):
            raise RuntimeError("the edge's subscription did not reach its publisher")
        for i in range(bench.args.broadcasts):
            publisher.publish("bench.all", {"t": time.monotonic(), "i": i, "pad": PAD[:60].decode()})
            time.sleep(bench.args.broadcast_interval)
    finally:
        publisher.close()


def targets(rows):
    """Memory per connection and broadcast p99 at the most clients measured (10,000 in a full run)."""
    ws = [r for r in rows if r["key"].startswith("mesh-") and not r["key"].startswith("mesh-auth")
          and r["status"] == "ok"]
    big = max(ws, key=lambda r: r["clients"]) if ws else None
    label = f"{big['clients']:,} WebSocket clients" if big else "10,000 WebSocket clients"
    if big and big["clients"] < 10_000:
        label += " (fewer than the 10,000 of the target: a smaller run)"
    if not big or big["kib_per_connection"] is None:
        return [target(f"{label}: memory per connection", "<= 20 KB"), target(f"{label}: broadcast p99", "<= 250 ms")]
    kb = big["kib_per_connection"] * 1.024
    return [target(f"{label}: memory per connection", "<= 20 KB",
                   f"{kb:.1f} KB ({big['kib_per_connection']:.1f} KiB; {big['connected']:,} connected)",
                   kb / 20, kb <= 20 and big["connected"] == big["clients"]),
            target(f"{label}: broadcast p99", "<= 250 ms",
                   f"{big['p99']:.0f} ms ({big['deliveries']:,}/{big['expected']:,} delivered)",
                   big["p99"] / 250 if big["p99"] is not None else None,
                   big["p99"] is not None and big["p99"] <= 250 and big["deliveries"] == big["expected"])]


def _per_connection(r):
    kib = r["kib_per_connection"]
    return f"{kib:.1f} KiB ({kib * 1.024:.1f} KB)" if kib is not None else "-"


SCENARIOS = [Scenario(
    "websocket", "4", "WebSocket fan-out: one broadcast to every client of one server", websocket, [
        Column("clients", lambda r: num(r.get("clients")), always=True),
        Column("connected", lambda r: num(r["connected"])),
        Column("delivered / expected", of("deliveries", "expected")),
        Column("p50 ms", lambda r: ms(r["p50"])), Column("p99 ms", lambda r: ms(r["p99"])),
        Column("server RSS before -> after", lambda r: f"{r['rss_before_mib']:.1f} -> {r['rss_after_mib']:.1f} MiB"),
        Column("per connection", _per_connection)],
    first="server", targets=targets, options=[
        option("--ws-clients", [1000, 5000, 10000], [200, 1000], type=int, nargs="+", help="WebSocket client counts"),
        option("--broadcasts", 5, 3, type=int, help="WebSocket: broadcasts per trial"),
        option("--broadcast-interval", type=float, default=1.0, help="seconds between broadcasts")])]
