"""Scenario 5: convergence, the time from a change to the first message it lets through.

A publisher process streams ticks on many subjects (``--convergence-rate`` per second:
the resolution). Joins: a new node (meshnode through ZooKeeper; a nats-server routed to
the cluster) is started and a client there subscribes: started -> first message, and
ready -> first message. Subscribes: a subscription made at another node (or server)
than the publisher's: subscribe -> first message. Raw pyzmq and Redis have no nodes to
join (skipped rows) and subscribe directly at the publisher's socket or server.
"""

import socket
import statistics
import time

from .base import Column, Scenario, measure, ms, option, skipped
from .peers import NatsServer
from .procs import LOOPBACK, free_port, wait_port
from .scenarios import RawNats

MESH = (("mesh-join", "mesh-sub"), ("mesh: node joins via ZooKeeper", "mesh: subscribe at B, publisher at A"))
NATS = (("nats-join", "nats-sub"), ("NATS: server joins the cluster (routes)",
                                     "NATS: subscribe at server 2, publisher at 1"))


def convergence(bench, rows):
    trials = bench.args.convergence_trials
    subjects = ["conv.join"] + [f"conv.sub.{k}" for k in range(trials)]
    bench.say(f"[5 convergence] meshnode with ZooKeeper: {trials} joins, {trials} subscribes")
    measure(bench, rows, *MESH, lambda: _mesh(bench, trials, subjects))
    bench.say(f"[5 convergence] NATS cluster: {trials} joins, {trials} subscribes")
    measure(bench, rows, *NATS, lambda: _nats(bench, trials, subjects))
    rows.append(skipped("zmq-join", "raw pyzmq: node joins", "no membership: raw PUB/SUB has no nodes to join"))
    bench.say(f"[5 convergence] raw pyzmq and Redis: {trials} subscribes")
    for key, label, subscribes in (("zmq-sub", "raw pyzmq: new SUB socket, direct to the PUB", _zmq),
                                   ("redis-sub", "Redis: SUBSCRIBE (one server, local delivery)", _redis)):
        measure(bench, rows, key, label,
                lambda subscribes=subscribes: {"kind": "subscribe", **summary(subscribes(bench, trials, subjects))})
    rows.append(skipped("redis-join", "Redis: node joins", "Redis pub/sub runs on one server: no node joins"))
    for r in rows:
        if r["status"] == "ok":
            bench.say(f"    {r['label']}: median {r['median_ms']} ms, max {r['max_ms']} ms"
                      + (f" (ready -> first message: median {r['after_ready_median_ms']} ms)"
                         if "after_ready_median_ms" in r else ""))
    return rows


def summary(values, prefix=""):
    ordered = sorted(values)
    return {f"{prefix}median_ms": round(statistics.median(ordered) * 1000, 1),
            f"{prefix}min_ms": round(ordered[0] * 1000, 1), f"{prefix}max_ms": round(ordered[-1] * 1000, 1),
            f"{prefix}trials": len(ordered)}


def _joined(joins, after_ready, subscribes):
    """The join row's and the subscribe row's numbers."""
    return ({"kind": "join", **summary(joins), **summary(after_ready, prefix="after_ready_")},
            {"kind": "subscribe", **summary(subscribes)})


class _Stream:
    """A publisher process streaming ticks on ``subjects`` for the length of a ``with``."""

    def __init__(self, bench, system, endpoint, subjects):
        self.procs = bench.procs
        self.pub = bench.procs.worker("pub", {"system": system, "endpoint": endpoint, "stream": True,
                                              "subjects": subjects, "rate": bench.args.convergence_rate},
                                      name=f"stream:{system}")

    def __enter__(self):
        self.pub.expect("ready", 60)
        return self

    def __exit__(self, *exc):
        self.pub.send("exit")
        self.procs.stop(self.pub.proc)


def _mesh(bench, trials, subjects):
    from mesh import Client

    zk = bench.zookeeper()
    zk_args = ("--zk", zk.hosts, "--mesh", "bench", "--zk-timeout", "2")
    a = bench.procs.node("conv-a", *zk_args)
    b = bench.procs.node("conv-b", *zk_args)
    with _Stream(bench, "mesh", a.address, subjects):
        joins, after_ready = [], []
        for k in range(trials):
            started = time.monotonic()
            node = bench.procs.node(f"conv-join{k}", *zk_args)
            ready = time.monotonic()
            with Client(node.address) as client:
                client.subscribe("conv.join").get(timeout=20)
                done = time.monotonic()
            joins.append(done - started)
            after_ready.append(done - ready)
            bench.procs.stop_node(node)
            time.sleep(0.3)
        subscribes = []
        with Client(b.address) as client:
            for k in range(trials):
                started = time.monotonic()
                sub = client.subscribe(f"conv.sub.{k}")
                sub.get(timeout=20)
                subscribes.append(time.monotonic() - started)
                sub.unsubscribe()
    return _joined(joins, after_ready, subscribes)


def _nats(bench, trials, subjects):
    binary = bench.binary("nats")
    servers = bench.nats()
    with _Stream(bench, "nats", servers[0].address, subjects):
        joins, after_ready = [], []
        for k in range(trials):
            started = time.monotonic()
            server = NatsServer(bench.procs, binary, name=f"nats-join{k}", cluster_port=free_port(),
                                routes=[s.cluster_port for s in servers])
            if not wait_port(server.port, 10, server.proc):
                raise RuntimeError(f"nats-server join{k} did not start: {server.log_tail()}")
            ready = time.monotonic()
            client = RawNats(server.address)
            try:
                client.subscribe("conv.join")
                client.next_message(20)
                done = time.monotonic()
            finally:
                client.close()
            joins.append(done - started)
            after_ready.append(done - ready)
            server.stop()
            time.sleep(0.3)
        subscribes = []
        client = RawNats(servers[1].address)
        try:
            for k in range(trials):
                started = time.monotonic()
                client.subscribe(f"conv.sub.{k}", sid=k + 1)
                client.next_message(20, subject=f"conv.sub.{k}")
                subscribes.append(time.monotonic() - started)
                client.unsubscribe(k + 1)
        finally:
            client.close()
    return _joined(joins, after_ready, subscribes)


def _zmq(bench, trials, subjects):
    import zmq

    endpoint = f"tcp://{LOOPBACK}:{free_port()}"
    context = zmq.Context.instance()
    out = []
    with _Stream(bench, "zmq", endpoint, subjects):
        for k in range(trials):
            started = time.monotonic()
            sock = context.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            sock.subscribe(f"conv.sub.{k}.".encode())
            if not sock.poll(20000):
                raise RuntimeError("no message within 20 s")
            sock.recv_multipart()
            out.append(time.monotonic() - started)
            sock.close()
    return out


def _redis(bench, trials, subjects):
    server = bench.redis()
    out = []
    with _Stream(bench, "redis", server.address, subjects):
        for k in range(trials):
            sock = socket.create_connection((LOOPBACK, server.port), timeout=20)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                started = time.monotonic()
                sock.sendall(f"SUBSCRIBE conv.sub.{k}\r\n".encode())
                buf = b""
                while b"$7\r\nmessage\r\n" not in buf:  # RESP: ["message", channel, data]
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise RuntimeError("redis closed the connection")
                    buf += chunk
                out.append(time.monotonic() - started)
            finally:
                sock.close()
    return out


SCENARIOS = [Scenario("convergence", "5", "Convergence", convergence, [
    Column("trials", lambda r: r["trials"]), Column("median ms", lambda r: ms(r["median_ms"])),
    Column("min ms", lambda r: ms(r["min_ms"])), Column("max ms", lambda r: ms(r["max_ms"])),
    Column("of which after ready (median)", lambda r: ms(r.get("after_ready_median_ms")))],
    options=[option("--convergence-trials", 5, 3, type=int, help="joins and subscribes to time"),
             option("--convergence-rate", type=int, default=1000,
                    help="convergence: publisher ticks per second (the resolution; default 1000)")])]
