"""How many WebSocket clients one edge node holds, its memory per connection,
and broadcast delivery latency to all of them.

Starts one `meshnode run --http` process, opens N WebSocket connections to
/ws/<subject> from this process (gevent, one greenlet per client), measures
the node's RSS before and after, then publishes timestamped broadcasts and
records, at each client, receive time minus publish time.

    .venv/bin/python -m bench.ws_connections --clients 1000 5000 10000
"""

from gevent import monkey

monkey.patch_all()

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import gevent
import websocket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from bench.procs import rss_kib
from bench.workers import percentile as _percentile
from mesh import Client


def percentile(values, p):
    return _percentile(sorted(values), p) if values else float("nan")


def trial(count, broadcasts):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", "meshnode"), "run", "--name", "edge",
                             "--port", "0", "--http", "0", "--log-level", "WARNING",
                             "--max-connections", str(count + 100)], stdout=subprocess.PIPE, text=True)
    try:
        fields = dict(p.split("=", 1) for p in proc.stdout.readline().split()[2:])
        http, control = fields["http"], fields["control"]
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        sockets = []

        def connect():
            for attempt in range(5):
                try:
                    sockets.append(websocket.create_connection(f"ws://{http}/ws/bench.all", timeout=60))
                    return
                except OSError:
                    gevent.sleep(0.2 * (attempt + 1))

        started = time.monotonic()
        for start in range(0, count, 500):
            gevent.joinall([gevent.spawn(connect) for _ in range(min(500, count - start))])
        connect_seconds = time.monotonic() - started
        gevent.sleep(1.0)
        after = rss_kib(proc.pid)
        latencies = []

        def listen(ws):
            try:
                for _ in range(broadcasts):
                    frame = json.loads(ws.recv())
                    latencies.append(time.time() - frame["data"]["t"])
            except Exception:
                pass

        readers = [gevent.spawn(listen, ws) for ws in sockets]
        with Client(control) as pub:
            pub.wait_for_interest("bench.all", timeout=10)
            for _ in range(broadcasts):
                pub.publish("bench.all", {"t": time.time()})
                gevent.sleep(0.5)
        gevent.joinall(readers, timeout=30)
        for ws in sockets:
            ws.close()
        return {"clients": count, "connected": len(sockets), "connect_s": round(connect_seconds, 1),
                "rss_before_mib": round(before / 1024, 1), "rss_after_mib": round(after / 1024, 1),
                "kib_per_connection": round((after - before) / max(1, len(sockets)), 1),
                "deliveries": len(latencies), "expected": len(sockets) * broadcasts,
                "p50_ms": round(percentile(latencies, 50) * 1000, 1),
                "p99_ms": round(percentile(latencies, 99) * 1000, 1)}
    finally:
        proc.terminate()
        proc.wait(20)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1000])
    parser.add_argument("--broadcasts", type=int, default=5)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for count in args.clients:
        print(f"{count} clients ...", file=sys.stderr, flush=True)
        print(json.dumps(trial(count, args.broadcasts)), flush=True)


if __name__ == "__main__":
    main()
