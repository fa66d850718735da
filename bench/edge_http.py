"""Scenario 8: publishing over HTTP at an edge (``POST /pub/<subject>``).

The same requests on one keep-alive connection (what every HTTP client with a
connection pool does: requests.Session, httpx, Go's net/http, curl) and with a
new connection per request. NATS and Redis have no HTTP publish to compare
with (Centrifugo's HTTP API is not packaged for Debian).
"""

import http.client
import json
import time

from .base import Column, Scenario, measure, num


def http_publish(bench, rows):
    count = max(200, bench.args.messages // 100)
    for key, label, keep_alive in (("keepalive", "POST /pub, one keep-alive connection", True),
                                   ("new-connection", "POST /pub, a new connection per request", False)):
        bench.say(f"[8 http] {label}: {count:,} requests")
        measure(bench, rows, key, label, lambda keep_alive=keep_alive: _publish(bench, count, keep_alive),
                lambda r: f"{r['rate']:,.0f} requests/s")
    return rows


def _publish(bench, count, keep_alive):
    edge = _edge(bench)
    host, port = edge.fields["http"].rsplit(":", 1)
    body = json.dumps({"n": 1})
    connection = None
    started = time.monotonic()
    for _ in range(count):
        if connection is None:
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("POST", "/pub/bench.http", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
        if not keep_alive:
            connection.close()
            connection = None
    seconds = time.monotonic() - started
    if connection is not None:
        connection.close()
    return {"requests": count, "seconds": seconds, "rate": count / seconds}


def _edge(bench):
    if getattr(bench, "_http_edge", None) is None:
        bench._http_edge = bench.procs.node("http-edge", "--http", "0")
    return bench._http_edge


SCENARIOS = [Scenario("http", "8", "HTTP publish at an edge (POST /pub)", http_publish, [
    Column("requests", lambda r: num(r["requests"])), Column("requests/s", lambda r: num(r["rate"]))])]
