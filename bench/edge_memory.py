"""Scenario 9: an edge under a WebSocket publish flood and under connection churn.

Flood: three fast readers (``bench.wsreader``, each in its own process) and
one client that never reads subscribe to one pattern; one WebSocket client
publishes N messages of 1 KiB as fast as the edge takes them. Reported:
what each fast reader got, whether one was cut off (none may be; the stalled
client must be), and the edge node's RSS before, at its peak and after.

Churn: rounds of 500 WebSocket connections, each subscribing to a pattern of
its own, a publish to some of them, then all closed. Reported: RSS before,
after every connection closed, and five seconds later.
"""

import json
import subprocess
import sys
import threading
import time

from .base import Column, Scenario, measure, num
from .procs import ROOT, rss_kib
from .wsclient import masked_frame, upgrade

CHURN_ROUND = 500


def edge_memory(bench, rows):
    count = max(2000, bench.args.messages // 4)
    label = f"WebSocket flood of {count:,} x 1 KiB, 3 fast readers and 1 stalled"
    bench.say(f"[9 edge-memory] {label}")
    measure(bench, rows, "flood", label, lambda: _flood(bench, count),
            lambda r: f"readers {r['delivered']} of {count:,}, cut {r['fast_cut']}, slow consumers "
                      f"{r['slow_consumers']}, dropped {r['dropped']}; RSS {r['rss_before_mib']:.0f} -> peak "
                      f"{r['rss_peak_mib']:.0f} -> {r['rss_after_mib']:.0f} MiB")
    connections = max(CHURN_ROUND, bench.args.ws_clients[-1] if bench.args.ws_clients else CHURN_ROUND)
    label = f"churn: {connections:,} WebSocket connections, {CHURN_ROUND} at a time, each its own pattern"
    bench.say(f"[9 edge-memory] {label}")
    measure(bench, rows, "churn", label, lambda: _churn(bench, connections),
            lambda r: f"RSS {r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} -> {r['rss_later_mib']:.0f} MiB "
                      "five seconds later")
    return rows


def _address(node):
    host, port = node.fields["http"].rsplit(":", 1)
    return host, int(port)


def _flood(bench, count):
    edge = bench.procs.node("flood-edge", "--http", "0")
    try:
        host, port = _address(edge)
        before = rss_kib(edge.proc.pid)
        readers = [bench.procs.popen([sys.executable, "-m", "bench.wsreader", f"{host}:{port}", "/ws/flood.>",
                                      str(count)], f"wsreader {i}", cwd=ROOT, stdout=subprocess.PIPE, text=True)
                   for i in range(3)]
        for reader in readers:
            if reader.stdout.readline().strip() != "ready":
                raise RuntimeError("a reader did not connect")
        stalled = upgrade(host, port, "/ws/flood.>", rcvbuf=4096)[0]
        publisher = upgrade(host, port, "/ws")[0]
        oks = [0]

        def read_oks():
            buffer = b""
            while oks[0] < count:
                chunk = publisher.recv(1 << 20)
                if not chunk:
                    return
                buffer += chunk
                oks[0] += buffer.count(b'"op":"ok"')
                buffer = buffer[buffer.rfind(b"}") + 1:]

        counter = threading.Thread(target=read_oks, daemon=True)
        counter.start()
        peak = before
        payload = "x" * 1024
        started = time.monotonic()
        for i in range(count):
            publisher.sendall(masked_frame(json.dumps({"op": "pub", "subject": "flood.x", "data": payload,
                                                       "id": i}).encode()))
            if not i % 1000:
                peak = max(peak, rss_kib(edge.proc.pid))
        counter.join(120)
        seconds = time.monotonic() - started
        results = [json.loads(reader.communicate(timeout=120)[0]) for reader in readers]
        peak = max(peak, rss_kib(edge.proc.pid))
        publisher.close()
        stalled.close()
        time.sleep(5)
        stats = _stats(host, port)
        return {"messages": count, "seconds": seconds, "rate": count / seconds,
                "delivered": [r["messages"] for r in results],
                "fast_cut": sum(r["close"] is not None for r in results),
                "slow_consumers": stats["slow_consumers"], "dropped": stats["dropped"],
                "rss_before_mib": before / 1024, "rss_peak_mib": peak / 1024,
                "rss_after_mib": rss_kib(edge.proc.pid) / 1024}
    finally:
        bench.procs.stop_node(edge)


def _churn(bench, connections):
    edge = bench.procs.node("churn-edge", "--http", "0")
    try:
        host, port = _address(edge)
        before = rss_kib(edge.proc.pid)
        for start in range(0, connections, CHURN_ROUND):
            socks = [upgrade(host, port, "/ws")[0] for _ in range(min(CHURN_ROUND, connections - start))]
            for i, sock in enumerate(socks):
                sock.sendall(masked_frame(json.dumps({"op": "sub", "subject": f"churn.{start + i}.>"}).encode()))
            for sock in socks:
                sock.recv(4096)  # the ok
            for i in range(0, len(socks), 7):
                socks[i].sendall(masked_frame(json.dumps({"op": "pub", "subject": f"churn.{start + i}.x",
                                                          "data": "y" * 1000}).encode()))
            for sock in socks:
                sock.close()
        deadline = time.monotonic() + 30
        while _stats(host, port)["connections"]["total"] and time.monotonic() < deadline:
            time.sleep(0.2)
        after = rss_kib(edge.proc.pid)
        time.sleep(5)
        return {"connections": connections, "rss_before_mib": before / 1024, "rss_after_mib": after / 1024,
                "rss_later_mib": rss_kib(edge.proc.pid) / 1024}
    finally:
        bench.procs.stop_node(edge)


def _stats(host, port):
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{port}/stats", timeout=10) as response:
        return json.loads(response.read())


def _result(r):
    if r["key"] == "flood":
        return (f"{num(r['rate'])} msg/s published; fast readers got {', '.join(num(n) for n in r['delivered'])}, "
                f"{r['fast_cut']} cut; slow consumers {r['slow_consumers']}, dropped {r['dropped']}")
    return "all closed"


def _rss(r):
    if r["key"] == "flood":
        return f"{r['rss_before_mib']:.0f} -> peak {r['rss_peak_mib']:.0f} -> {r['rss_after_mib']:.0f} after"
    return f"{r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} -> {r['rss_later_mib']:.0f} five seconds later"


SCENARIOS = [Scenario("edge_memory", "9", "An edge under a WebSocket publish flood and connection churn",
                      edge_memory, [Column("result", _result), Column("edge RSS MiB", _rss)])]
