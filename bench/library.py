"""Scenarios of the client library itself, beside the mesh: the receive path at
scale and under gevent (``receive``), and a per-entity workload (``entities``).

* receive/green: a gevent program (bench/workers.py ``mesh_green``) drains
  200,000 messages (fewer in tiny runs) published at another node while a greenlet sleeps 5 ms in
  a loop; its worst lateness during the drain, against the same program with
  no traffic.
* receive/subscriptions-N: one process holds N subscriptions (one subject
  each): time to subscribe, descriptors and RSS before and after, the CPU it
  burns while idle with a reader blocked (fraction of a core), and the time
  until each of the N got one message of its own.
* entities: one publisher writes once to each of E subjects every few seconds
  for a while; one subscriber on ``u.>`` at another node and one edge
  WebSocket client on ``u.>`` read everything. Reports wire messages per
  published message at the publisher's node and the RSS of publisher,
  subscriber and edge node over time.

Workers run as ``python -m bench.library ROLE CONFIG_JSON`` (bench/procs.py).
"""

import json
import os
import socket
import sys
import time

from .base import Column, Scenario, measure, ms, num, option
from .scenarios import SUBJECT, run_case

STREAM_IDLE = 10.0  # entities: both ends forget a subject this long after its last message


def rss_mib(pid="self"):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def cpu_seconds():
    """CPU time of every thread of this process, from the scheduler's own
    nanosecond count (os.times bills a whole 10 ms tick to a thread that
    happens to run on it, which overstates short periodic wake-ups many times)."""
    try:
        return sum(int(open(f"/proc/self/task/{task}/schedstat").read().split()[0])
                   for task in os.listdir("/proc/self/task")) / 1e9
    except (OSError, ValueError, IndexError):
        t = os.times()
        return t.user + t.system


def say(value):
    print(json.dumps(value), flush=True)


# -- workers ---------------------------------------------------------------------

def subscriptions(cfg):
    """Hold ``count`` subscriptions: setup cost, idle CPU, descriptors, delivery to each."""
    import threading

    from mesh import Client

    count = cfg["count"]
    fds_before, rss_before = len(os.listdir("/proc/self/fd")), rss_mib()
    pub, client = Client(cfg["endpoint"]), Client(cfg["endpoint"])
    began = time.monotonic()
    subs = [client.subscribe(f"sc.{i}.x") for i in range(count)]
    subscribe_seconds = time.monotonic() - began
    blocked = threading.Thread(target=_wait_quietly, args=(subs[0], cfg["idle_seconds"] + 1))
    blocked.start()
    time.sleep(0.5)
    cpu, wall = cpu_seconds(), time.monotonic()
    time.sleep(cfg["idle_seconds"])
    idle_fraction = (cpu_seconds() - cpu) / (time.monotonic() - wall)
    blocked.join()
    fds_after, rss_after = len(os.listdir("/proc/self/fd")), rss_mib()
    deadline = time.monotonic() + 30
    while not pub.has_interest(f"sc.{count - 1}.x") and time.monotonic() < deadline:
        time.sleep(0.01)
    began = time.monotonic()
    for i in range(count):
        pub.publish(f"sc.{i}.x", i)
    pub.flush()
    delivered = 0
    for sub in subs:
        try:
            sub.get(timeout=10)
            delivered += 1
        except TimeoutError:
            pass
    say({"subscriptions": count, "subscribe_seconds": subscribe_seconds, "idle_core_fraction": idle_fraction,
         "fds_before": fds_before, "fds_after": fds_after, "rss_before_mib": rss_before,
         "rss_after_mib": rss_after, "delivered": delivered, "deliver_seconds": time.monotonic() - began})
    client.close()
    pub.close()


def _wait_quietly(sub, seconds):
    try:
        sub.get(timeout=seconds)
    except TimeoutError:
        pass


def entities_pub(cfg):
    """Publish once to each of ``subjects`` subjects every ``period`` s for ``seconds`` s."""
    from mesh import Client

    client = Client(cfg["endpoint"], stream_idle=cfg["stream_idle"])
    deadline = time.monotonic() + 30
    while not client.has_interest("u.0.n") and time.monotonic() < deadline:
        time.sleep(0.01)
    say("ready")
    sys.stdin.readline()  # "go"
    n, subjects, period = 0, cfg["subjects"], cfg["period"]
    start = time.monotonic()
    samples, next_sample = [], start
    while time.monotonic() - start < cfg["seconds"]:
        round_start = time.monotonic()
        for i in range(subjects):
            client.publish(f"u.{i}.n", n)
            n += 1
            if not i % 1000:
                now = time.monotonic()
                if now >= next_sample:
                    samples.append((round(now - start, 1), round(rss_mib(), 1), client.counters()["streams"]))
                    next_sample += 5.0
                behind = round_start + period * i / subjects - now
                if behind > 0:
                    time.sleep(behind)
        client.flush()
    say({"published": n, "seconds": time.monotonic() - start, "rss": samples, **client.counters()})
    sys.stdin.readline()
    client.close()


def entities_sub(cfg):
    """Subscribe to ``u.>`` and count until told to stop; RSS every 5 s."""
    import threading

    from mesh import Client

    client = Client(cfg["endpoint"], stream_idle=cfg["stream_idle"])
    sub = client.subscribe("u.>")
    say("ready")
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    start = time.monotonic()
    samples, next_sample, received = [], start, 0
    while not stop.is_set():
        try:
            received += len(sub.take(timeout=0.5))
        except TimeoutError:
            pass
        now = time.monotonic()
        if now >= next_sample:
            samples.append((round(now - start, 1), round(rss_mib(), 1), sub.streams))
            next_sample += 5.0
    say({"received": received, "gaps": sub.gaps, "dropped": sub.dropped, "rss": samples})
    client.close()


ROLES = {"subscriptions": subscriptions, "entities_pub": entities_pub, "entities_sub": entities_sub}


# -- scenarios --------------------------------------------------------------------

def receive(bench, rows):
    count = min(200_000, max(2_000, bench.args.messages * 10))
    label = f"gevent: 5 ms greenlet beside a {count:,}-message drain"
    bench.say(f"[6 receive] {label}")
    measure(bench, rows, "green", label, lambda: _green(bench, count), _lateness)
    for count in bench.args.subscriptions:
        label = f"{count:,} subscriptions in one process"
        bench.say(f"[6 receive] {label}")
        measure(bench, rows, f"subscriptions-{count}", label, lambda count=count: _subscriptions(bench, count),
                lambda r: f"idle {r['idle_core_fraction'] * 100:.2f}% of a core, "
                          f"{r['fds_after'] - r['fds_before']} descriptors, {r['delivered']:,}/{r['subscriptions']:,} "
                          "delivered")
    return rows


def _lateness(r):
    late = r["drain_max_late_ms"]
    return (f"worst lateness {'n/a' if late is None else f'{late:.1f}'} ms during the drain "
            f"({r['idle_max_late_ms']:.1f} ms with no traffic)")


def _green(bench, count):
    a, b, _ = bench.mesh()
    _, (result,) = run_case(bench.procs, {"system": "mesh", "endpoint": a.address, "subject": SUBJECT,
                                          "count": count},
                            [{"system": "mesh_green", "endpoint": b.address, "subject": SUBJECT, "count": count}],
                            timeout=300)
    return result


def _subscriptions(bench, count):
    a, _, _ = bench.mesh()
    worker = bench.procs.worker("subscriptions", {"endpoint": a.address, "count": count, "idle_seconds": 5.0},
                                name=f"subscriptions-{count}", module="bench.library")
    return worker.result(300)


def entities(bench, rows):
    count, seconds = bench.args.entities, bench.args.entity_seconds
    period = max(1.0, count / 30_000)  # about 30,000 msg/s: one message per subject per period
    label = f"{count:,} subjects, one message each every {period:g} s, for {seconds:g} s"
    bench.say(f"[7 entities] {label}")
    measure(bench, rows, "entities", label, lambda: _entities(bench, count, period, seconds),
            lambda r: f"{r['wire_per_published']:.3f} wire messages per published message; "
                      f"received {r['received']:,}/{r['published']:,}")
    return rows


def _entity_mesh(bench):
    """Nodes A, B (linked to A) and an edge (linked to A), every link up."""
    a = bench.procs.node("ent-a", "--stream-idle", str(STREAM_IDLE))
    b = bench.procs.node("ent-b", "--peer", a.address)
    edge = bench.procs.node("ent-edge", "--peer", a.address, "--http", "0", "--stream-idle", str(STREAM_IDLE))
    deadline = time.monotonic() + 20
    while not (len(a.peer_names()) == 2 and b.peer_names() and edge.peer_names()):
        if time.monotonic() > deadline:
            raise RuntimeError("the entity mesh did not link")
        time.sleep(0.1)
    return a, b, edge


def _entities(bench, count, period, seconds):
    a, b, edge = _entity_mesh(bench)
    ws, edge_samples = _edge_reader(edge)
    sub = bench.procs.worker("entities_sub", {"endpoint": b.address, "stream_idle": STREAM_IDLE},
                             name="entities-sub", module="bench.library")
    sub.expect('"ready"', 60)
    pub = bench.procs.worker("entities_pub", {"endpoint": a.address, "subjects": count, "period": period,
                                              "seconds": seconds, "stream_idle": STREAM_IDLE},
                             name="entities-pub", module="bench.library")
    pub.expect('"ready"', 60)
    before = a.stats()["messages"]["published_here"]
    pub.send("go")
    start = time.monotonic()
    pub_result = None
    while pub_result is None:
        try:
            pub_result = pub.result(5)
        except RuntimeError as exc:
            if "said nothing" not in str(exc):
                raise
        edge_samples.append((round(time.monotonic() - start, 1), round(rss_mib(edge.pid), 1),
                             _edge_stats(edge).get("streams")))
    time.sleep(2.0)  # the last marks
    wire = a.stats()["messages"]["published_here"] - before
    pub.send("exit")
    sub.send("stop")
    sub_result = sub.result(30)
    ws.close()
    return {"published": pub_result["published"], "wire_messages": wire,
            "wire_per_published": wire / pub_result["published"], "batches": pub_result["batches"],
            "mark_messages": pub_result["mark_messages"], "received": sub_result["received"],
            "gaps": sub_result["gaps"], "dropped": sub_result["dropped"], "stream_idle": STREAM_IDLE,
            "publisher_rss": pub_result["rss"], "subscriber_rss": sub_result["rss"], "edge_rss": edge_samples}


def _edge_stats(edge):
    import urllib.request

    with urllib.request.urlopen(f"http://{edge.fields['http']}/stats", timeout=10) as response:
        return json.loads(response.read())


def _edge_reader(edge):
    """A WebSocket client on the edge's ``/ws/u.>`` that reads and discards; and the
    list the edge's RSS samples go to."""
    import threading

    host, port = edge.fields["http"].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"GET /ws/u.%3E HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def drain():
        try:
            while sock.recv(1 << 16):
                pass
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    return sock, []

def _receive_result(r):
    if r["key"] == "green":
        return (f"worst lateness {ms(r['drain_max_late_ms'])} ms during the drain ({num(r['delivered'])} delivered, "
                f"{r['ticks_during_drain']} ticks), {ms(r['idle_max_late_ms'])} ms with no traffic")
    return (f"subscribe {r['subscribe_seconds']:.2f} s; idle {r['idle_core_fraction'] * 100:.2f}% of a core; "
            f"descriptors {r['fds_before']} -> {r['fds_after']}; RSS {r['rss_before_mib']:.1f} -> "
            f"{r['rss_after_mib']:.1f} MiB; one message to each: {num(r['delivered'])} delivered in "
            f"{r['deliver_seconds']:.2f} s")


def _series(field):
    return lambda r: " ".join(f"{s[1]:.0f}" for s in r[field])


SCENARIOS = [
    Scenario("receive", "6", "The client's receive path: gevent fairness and many subscriptions", receive,
             [Column("result", _receive_result)],
             options=[option("--subscriptions", [1000, 10000], [1000], type=int, nargs="+",
                             help="receive: subscription counts for idle cost and scale")]),
    Scenario("entities", "7", "Per-entity subjects: wire overhead and memory over time", entities, [
        Column("published", lambda r: num(r["published"])),
        Column("wire msgs / published", lambda r: f"{r['wire_per_published']:.3f}"),
        Column("received (gaps, dropped)", lambda r: f"{num(r['received'])} ({r['gaps']}, {r['dropped']})"),
        Column("publisher RSS MiB over time", _series("publisher_rss")),
        Column("subscriber RSS MiB", _series("subscriber_rss")), Column("edge RSS MiB", _series("edge_rss"))],
        options=[option("--entities", 100_000, 10_000, type=int, help="entities: distinct subjects"),
                 option("--entity-seconds", 60.0, 8.0, type=float, help="entities: seconds of the workload")]),
]


if __name__ == "__main__":
    ROLES[sys.argv[1]](json.loads(sys.argv[2]))
