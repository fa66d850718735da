"""Scenario 4b: the edge against a peer, 1 publisher -> many WebSocket subscribers.

One server at a time, in the same run: a meshnode edge (``/ws/bench.all``) and
nats-server's WebSocket listener (``SUB bench.all``), each with ``--edge-clients``
(1,000) subscribers held by one bench.wsclient process (the same client for both:
raw sockets on one epoll loop, meshnode's JSON frames or NATS's text protocol).
Two phases per server, each with its own client process:

* paced: ``--edge-paced`` messages at ``--edge-paced-rate`` a second: one-way
  latency p50/p99/p99.9 of every delivery;
* burst: ``--edge-burst`` messages published as fast as the publisher goes:
  deliveries a second (all deliveries over first publish to last arrival),
  latency in the burst, and the server's CPU seconds per 100,000 deliveries
  (utime + stime of its process, /proc/PID/stat, including the 3 s of quiet
  by which the client knows the burst ended, when the server idles).

Memory per connection: the server's RSS after the clients connected minus
before, over the clients connected. The publisher runs in this process: a mesh
client on the edge's node, or a raw NATS connection whose PUBs are pipelined
(one PING at the end). Target: the edge's deliveries a second at least NATS's.
"""

import json
import os
import time
from functools import partial

from .base import Column, Scenario, measure, ms, num, ok_row, option, target
from .peers import NatsServer
from .procs import LOOPBACK, cpu_seconds, rss_kib
from .scenarios import MeshPublisher, RawNats
from .workers import PAD

SUBJECT = "bench.all"
LABELS = {"mesh": "meshnode edge (/ws/bench.all)", "nats": "nats-server WebSocket listener"}


def edge_fanout(bench, rows):
    count = bench.args.edge_clients
    for kind, label in LABELS.items():
        bench.say(f"[4b edge_fanout] {label}: {count:,} clients; {bench.args.edge_paced} paced at "
                  f"{bench.args.edge_paced_rate:g}/s, then a burst of {bench.args.edge_burst}")
        measure(bench, rows, kind, label, partial(_trial, bench, kind, count),
                lambda r: f"{r['deliveries_per_s']:,.0f} deliveries/s in the burst; p99 paced {r['paced_p99']} ms, "
                          f"in the burst {r['burst_p99']} ms; {r['cpu_s_per_100k']:.3f} CPU s per 100k deliveries; "
                          f"{r['kib_per_connection']:.1f} KiB per connection", clients=count)
    return rows


def _server(bench, kind, count):
    """(pid, wsclient config, publisher maker, stop) of a started server."""
    if kind == "mesh":
        node = bench.procs.node("bench-edge-fanout", "--http", "0", "--max-connections", str(count + 100))
        host, port = node.fields["http"].rsplit(":", 1)
        cfg = {"kind": "mesh", "host": host, "port": int(port), "path": f"/ws/{SUBJECT}"}
        return node.pid, cfg, lambda: MeshPublisher(node.address), lambda: bench.procs.stop_node(node)
    server = NatsServer(bench.procs, bench.binary("nats"), name="nats-ws-fanout", websocket=True).wait_ready()
    cfg = {"kind": "nats", "host": LOOPBACK, "port": server.ws_port, "path": "/"}
    return server.pid, cfg, lambda: NatsPipelined(f"{LOOPBACK}:{server.port}"), server.stop


class NatsPipelined(RawNats):
    """PUBs written back to back; one PING at the end waits until the server has them all."""

    def publish(self, subject, data):
        body = json.dumps(data).encode()
        self.sock.sendall(f"PUB {subject} {len(body)}\r\n".encode() + body + b"\r\n")

    def close(self):
        self.sock.sendall(b"PING\r\n")
        while self._line() != b"PONG":
            pass
        super().close()


def _trial(bench, kind, count):
    pid, cfg, publisher_of, stop = _server(bench, kind, count)
    try:
        time.sleep(0.5)
        before = rss_kib(pid)
        paced, connected, after = _phase(bench, kind, pid, cfg, count, publisher_of,
                                         bench.args.edge_paced, 1 / bench.args.edge_paced_rate)
        burst, _, _ = _phase(bench, kind, pid, cfg, count, publisher_of, bench.args.edge_burst, 0)
    finally:
        stop()
    return {"clients": count, "connected": connected, "kib_per_connection": (after - before) / connected,
            "paced_sent": bench.args.edge_paced, "paced_deliveries": paced["deliveries"],
            "paced_latency_ms": paced["latency_ms"], "paced_p50": paced["latency_ms"]["p50"],
            "paced_p99": paced["latency_ms"]["p99"], "paced_p99_9": paced["latency_ms"]["p99_9"],
            "burst_sent": bench.args.edge_burst, "burst_deliveries": burst["deliveries"],
            "burst_expected": bench.args.edge_burst * connected, "burst_seconds": round(burst["seconds"], 3),
            "burst_publish_seconds": round(burst["publish_seconds"], 3),
            "deliveries_per_s": burst["deliveries"] / burst["seconds"], "burst_latency_ms": burst["latency_ms"],
            "burst_p99": burst["latency_ms"]["p99"],
            "cpu_s_per_100k": burst["cpu_s"] / burst["deliveries"] * 100_000 if burst["deliveries"] else None,
            "load_average": os.getloadavg()[0]}


def _phase(bench, kind, pid, cfg, count, publisher_of, messages, interval):
    """Connect ``count`` clients, publish ``messages`` ``interval`` apart, read until quiet:
    the client's result plus seconds (first publish to last arrival) and server CPU seconds;
    clients connected; server RSS once they were."""
    client = bench.procs.worker(None, {**cfg, "count": count, "subject": SUBJECT, "quiet": 3.0},
                                name=f"wsclient:{kind}", module="bench.wsclient")
    try:
        line = client.line(120 + count / 50)
        if not line.startswith("ready "):
            raise RuntimeError(f"wsclient: {line!r}{client.stderr_text()}")
        connected = json.loads(line[6:])["connected"]
        if not connected:
            raise RuntimeError("no WebSocket client connected")
        time.sleep(1.0)
        rss = rss_kib(pid)
        publisher = publisher_of()
        try:
            if kind == "mesh" and not publisher.client.wait_for_interest(SUBJECT, timeout=10):
                raise RuntimeError("the edge's subscription did not reach its publisher")
            cpu_before = cpu_seconds(pid)
            started = time.monotonic()
            for i in range(messages):
                publisher.publish(SUBJECT, {"t": time.monotonic(), "i": i, "pad": PAD[:60].decode()})
                if interval:
                    time.sleep(interval)
        finally:
            publisher.close()
        published = time.monotonic() - started
        result = client.result(300)
        cpu_s = cpu_seconds(pid) - cpu_before
    finally:
        bench.procs.stop(client.proc)
    if result["last_arrival"] is None:
        raise RuntimeError(f"{kind}: nothing was delivered")
    return {**result, "seconds": result["last_arrival"] - started, "cpu_s": cpu_s,
            "publish_seconds": published}, connected, rss


def targets(rows):
    mesh, nats = ok_row(rows, "mesh"), ok_row(rows, "nats")
    name = "edge vs nats-server WebSocket, 1 publisher -> 1,000 subscribers: deliveries/s"
    if not (mesh and nats):
        return [target(name, ">= 1.0x")]
    ratio = mesh["deliveries_per_s"] / nats["deliveries_per_s"]
    complete = mesh["burst_deliveries"] == mesh["burst_expected"]
    return [target(name, ">= 1.0x", f"{ratio:.2f}x ({mesh['deliveries_per_s']:,.0f} vs "
                                    f"{nats['deliveries_per_s']:,.0f})" + ("" if complete else ", edge lost some"),
                   ratio, ratio >= 1.0 and complete)]


SCENARIOS = [Scenario(
    "edge_fanout", "4b", "The edge against nats-server's WebSocket: 1 publisher -> many subscribers", edge_fanout, [
        Column("clients", lambda r: num(r.get("clients")), always=True),
        Column("burst: delivered / expected", lambda r: f"{num(r['burst_deliveries'])} / {num(r['burst_expected'])}"),
        Column("deliveries/s", lambda r: num(r["deliveries_per_s"])),
        Column("p99 ms in the burst", lambda r: ms(r["burst_p99"])),
        Column("paced p50 / p99 / p99.9 ms",
               lambda r: f"{ms(r['paced_p50'])} / {ms(r['paced_p99'])} / {ms(r['paced_p99_9'])}"),
        Column("server CPU s per 100k deliveries", lambda r: f"{r['cpu_s_per_100k']:.3f}"),
        Column("memory per connection", lambda r: f"{r['kib_per_connection']:.1f} KiB"),
        Column("load average", lambda r: f"{r['load_average']:.1f}")],
    first="server", targets=targets, options=[
        option("--edge-clients", 1000, 200, type=int, help="edge_fanout: WebSocket subscribers"),
        option("--edge-burst", 1000, 200, type=int, help="edge_fanout: messages in the burst"),
        option("--edge-paced", 200, 50, type=int, help="edge_fanout: messages in the paced phase"),
        option("--edge-paced-rate", 100.0, 100.0, type=float, help="edge_fanout: paced messages a second")])]
