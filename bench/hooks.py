"""Scenario 14: webhook deliveries to a fast local receiver.

Two linked nodes; one hook registered to an HTTP receiver in this process
(a threading http.server that answers 200 at once); a subscriber at the
second node on the same subject. The publisher at the first node publishes N
messages at a steady 500 per second, each carrying its publish time, then
the same number at once. Reported: every message delivered once, the
latency p50/p99 of the webhook next to that of the direct subscription
(steady part), and deliveries per second of the burst (first to last receipt).
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .base import Column, Scenario, measure, num
from .workers import percentile

RATE = 500


def hooks(bench, rows):
    count = max(500, bench.args.messages // 40)
    label = f"{count:,} messages at {RATE}/s, then {count:,} at once; one hook, a fast receiver"
    bench.say(f"[14 hooks] {label}")
    measure(bench, rows, "webhook", label, lambda: _run(bench, count),
            lambda r: f"{r['delivered']:,} delivered once ({r['duplicates']} twice); webhook p50 {r['hook_p50']:.1f} "
                      f"ms p99 {r['hook_p99']:.1f} ms; subscription p50 {r['sub_p50']:.2f} ms p99 {r['sub_p99']:.2f} ms")
    return rows



def _run(bench, count):
    from mesh import Client

    arrivals = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            arrivals.append((time.time(), self.headers["webhook-id"], json.loads(body)["data"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    a, b = bench.procs.linked_nodes(("hook-a", "hook-b"), "--hooks-allow", "127.0.0.0/8")  # the receiver is on loopback
    try:
        deadline = time.monotonic() + 20
        with Client(a.address) as publisher, Client(b.address) as reader:
            publisher.register_hook("bench", f"http://127.0.0.1:{server.server_port}/")
            sub = reader.subscribe("hooks.bench.>")
            while not all(n.request("stats").get("queues", {}).get("reachable") == 2 for n in (a, b)):
                if time.monotonic() > deadline + 10:
                    raise RuntimeError("the deliverers did not join")
                time.sleep(0.1)
            publisher.wait_for_interest("hooks.bench.x", 10)
            received = []
            stop = threading.Event()

            def read():
                while not stop.is_set():
                    try:
                        message = sub.get(timeout=0.2)
                    except TimeoutError:
                        continue
                    received.append((time.time(), message.data))

            reader_thread = threading.Thread(target=read, daemon=True)
            reader_thread.start()
            for i in range(count):
                publisher.publish("hooks.bench.x", {"i": i, "t": time.time()})
                time.sleep(1 / RATE)
            publisher.flush()
            _wait_for(arrivals, count)
            steady = list(arrivals)
            for i in range(count, 2 * count):  # the burst
                publisher.publish("hooks.bench.x", {"i": i, "t": time.time()})
            publisher.flush()
            _wait_for(arrivals, 2 * count)
            time.sleep(0.5)
            stop.set()
            reader_thread.join(5)
        ids = [webhook_id for _, webhook_id, _ in arrivals]
        hook_ms = sorted((at - data["t"]) * 1000 for at, _, data in steady)
        sub_ms = sorted((at - data["t"]) * 1000 for at, data in received if data["i"] < count)
        burst = arrivals[len(steady):]
        seconds = burst[-1][0] - burst[0][0] if len(burst) > 1 else 0.0
        return {"messages": 2 * count, "delivered": len(set(ids)), "duplicates": len(ids) - len(set(ids)),
                "rate": len(burst) / seconds if seconds else 0.0, "hook_p50": percentile(hook_ms, 50),
                "hook_p99": percentile(hook_ms, 99), "sub_p50": percentile(sub_ms, 50),
                "sub_p99": percentile(sub_ms, 99)}
    finally:
        server.shutdown()
        server.server_close()
        bench.procs.stop_node(a)
        bench.procs.stop_node(b)


def _wait_for(arrivals, total, timeout=60):
    deadline = time.monotonic() + timeout
    while len(arrivals) < total and time.monotonic() < deadline:
        time.sleep(0.05)


SCENARIOS = [Scenario("hooks", "14", "Webhook deliveries to a fast local receiver, beside a direct subscription",
                      hooks, [Column("delivered once / sent", lambda r: f"{num(r['delivered'])} / {num(r['messages'])}"),
                              Column("burst deliveries/s", lambda r: num(r["rate"])),
                              Column("webhook p50 / p99 ms", lambda r: f"{r['hook_p50']:.1f} / {r['hook_p99']:.1f}"),
                              Column("subscription p50 / p99 ms",
                                     lambda r: f"{r['sub_p50']:.2f} / {r['sub_p99']:.2f}")])]
