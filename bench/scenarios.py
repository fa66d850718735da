"""The five scenarios, each run against every peer in the same run.

Every scenario returns a list of rows; a row is a dict with ``key``,
``label``, ``status`` (``ok``, ``skipped`` with a ``reason``, or ``failed``
with the error) and the scenario's numbers. A peer that cannot be had (its
Debian package or its Python client missing and not installable) is a
``skipped`` row: nothing is dropped silently.

Topology, shared by scenarios 1-3: a static mesh of three meshnode processes
A, B, C (links A-B, A-C, B-C); a NATS cluster of three nats-servers (routes
between all three); one redis-server. A case that uses fewer nodes leaves the
others idle: without interest there, nothing is sent to them.
"""

import importlib.util
import os
import socket
import statistics
import time

from .peers import NatsServer, RedisServer, ensure_debian, nats_cluster, wait_nats_routes
from .procs import LOOPBACK, free_port, rss_kib, wait_port

BENCH_SECRET = "bench-secret-of-at-least-thirty-two-bytes"

SUBJECT = "bench.x"
PEERS = {
    # name: (Debian package, binary, Python module, pip name)
    "nats": ("nats-server", "nats-server", "nats", "nats-py"),
    "redis": ("redis-server", "redis-server", "redis", "redis"),
}


def row(key, label, **fields):
    out = {"key": key, "label": label, "status": "ok"}
    out.update(fields)
    return out


def skipped(key, label, reason):
    return {"key": key, "label": label, "status": "skipped", "reason": reason}


def failed(key, label, error):
    return {"key": key, "label": label, "status": "failed", "reason": str(error)[:2000]}


class Bench:
    """Owns the servers and nodes shared by the scenarios; starts each on first use."""

    def __init__(self, args, procs, say):
        self.args = args
        self.procs = procs
        self.say = say
        self._peer = {}
        self._mesh = None
        self._nats = None
        self._redis = None
        self._case_procs = []  # processes that live for one case only

    def end_case(self):
        while self._case_procs:
            self.procs.stop(self._case_procs.pop())

    # -- peers and topology ----------------------------------------------

    def peer(self, name):
        """(binary path, None) or (None, reason why the peer is skipped)."""
        if name not in self._peer:
            package, binary, module, pip_name = PEERS[name]
            if name in self.args.skip_peer:
                self._peer[name] = (None, "left out with --skip-peer")
            elif importlib.util.find_spec(module) is None:
                self._peer[name] = (None, f"Python package {pip_name} not installed "
                                          f"(pip install -e '.[bench]')")
            else:
                self._peer[name] = ensure_debian(package, binary, install=self.args.install,
                                                 progress=self.say)
        return self._peer[name]

    def mesh(self):
        """Nodes A, B, C linked by static peers."""
        if self._mesh is None:
            self.say("  starting meshnode A, B, C ...")
            a = self.procs.node("bench-a")
            b = self.procs.node("bench-b", "--peer", a.address)
            c = self.procs.node("bench-c", "--peer", a.address, "--peer", b.address)
            want = {"bench-a": ["bench-b", "bench-c"], "bench-b": ["bench-a", "bench-c"],
                    "bench-c": ["bench-a", "bench-b"]}
            deadline = time.monotonic() + 20
            while not all(n.peer_names() == want[n.name] for n in (a, b, c)):
                if time.monotonic() > deadline:
                    raise RuntimeError("the 3-node mesh did not link within 20 s")
                time.sleep(0.1)
            self._mesh = (a, b, c)
        return self._mesh

    def nats(self):
        """Three routed nats-servers, or raises with the reason they are skipped."""
        binary, reason = self.peer("nats")
        if binary is None:
            raise Skip(reason)
        if self._nats is None:
            self.say("  starting a 3-server NATS cluster ...")
            servers = nats_cluster(self.procs, binary, 3)
            if not wait_nats_routes(servers):
                raise RuntimeError("NATS routes did not form within 10 s")
            self._nats = servers
        return self._nats

    def redis(self):
        binary, reason = self.peer("redis")
        if binary is None:
            raise Skip(reason)
        if self._redis is None:
            self.say("  starting redis-server ...")
            self._redis = RedisServer(self.procs, binary).wait_ready()
        return self._redis

    # -- running one publisher and its subscribers --------------------------

    def run_case(self, pub_cfg, sub_cfgs, timeout):
        return run_case(self.procs, pub_cfg, sub_cfgs, timeout)

    def pair_cases(self):
        """The 1 publisher -> 1 subscriber set: (key, label, system, pub endpoint, sub endpoint, extra)
        with endpoints as callables (started lazily), or a Skip raised from them."""
        def mesh_pair(pub_i, sub_i):
            def endpoints():
                nodes = self.mesh()
                return nodes[pub_i].address, nodes[sub_i].address
            return endpoints

        def zmq_pair():
            endpoint = f"tcp://{LOOPBACK}:{free_port()}"
            return endpoint, endpoint

        def zmq_proxies():
            """PUB -> proxy -> proxy -> SUB: the mesh's 2-node path without nodes or client library."""
            first, middle, last = (f"tcp://{LOOPBACK}:{free_port()}" for _ in range(3))
            for cfg in ({"in": first, "out": middle}, {"in": middle, "out": last}):
                proxy = self.procs.worker("proxy", cfg, name="proxy")
                self._case_procs.append(proxy.proc)
                proxy.expect("ready", 30)
            return first, last

        def nats_pair(pub_i, sub_i):
            def endpoints():
                servers = self.nats()
                return servers[pub_i].address, servers[sub_i].address
            return endpoints

        def redis_pair():
            return self.redis().address, self.redis().address

        batch = self.args.redis_batch
        return [
            ("zmq", "raw pyzmq PUB->SUB", "zmq", zmq_pair, {}),
            ("mesh1", "mesh, 1 node (pub A, sub A)", "mesh", mesh_pair(0, 0), {}),
            ("mesh2", "mesh, 2 nodes (pub A, sub B)", "mesh", mesh_pair(0, 1), {}),
            ("aio2", "mesh.aio (asyncio client), 2 nodes (pub A, sub B)", "mesh_aio", mesh_pair(0, 1), {}),
            ("mesh3", "mesh, 3 nodes (pub A, sub C)", "mesh", mesh_pair(0, 2), {}),
            ("zmq_proxy2", "diagnostic: raw pyzmq via 2 zmq.proxy processes", "zmq", zmq_proxies, {}),
            ("nats", "NATS 1 server + nats-py", "nats", nats_pair(0, 0), {}),
            ("nats2", "NATS 2 servers (pub 1, sub 2)", "nats", nats_pair(0, 1), {}),
            ("redis", "Redis + redis-py, 1 PUBLISH/call", "redis", redis_pair, {}),
            ("redis_pipe", f"Redis + redis-py, pipelined ({batch}/batch)", "redis", redis_pair,
             {"pipeline": batch}),
        ]

    # -- scenario 1 ------------------------------------------------------

    def throughput(self, rows=None):
        rows = [] if rows is None else rows  # the caller's list: partial results survive Ctrl-C
        return self._throughput(rows, self.pair_cases(), self.args.messages, size=100, step="1 throughput")

    def sizes(self, rows=None):
        """Throughput of raw pyzmq, the mesh across 2 nodes and NATS at larger payloads."""
        rows = [] if rows is None else rows
        wanted = ("zmq", "mesh2", "nats")
        cases = [c for c in self.pair_cases() if c[0] in wanted]
        for size in self.args.sizes:
            n = self.args.messages if size <= 1024 else max(1000, self.args.messages // 4)  # 800 MB at 16 KiB
            sized = [(f"{key}@{size}", f"{label}, {size:,} B", system, endpoints, extra)
                     for key, label, system, endpoints, extra in cases]
            self._throughput(rows, sized, n, size=size, step=f"1b sizes {size:,} B")
        return rows

    def _throughput(self, rows, cases, n, size, step):
        repeat = self.args.repeat
        first = len(rows)
        for index, (key, label, system, endpoints, extra) in enumerate(cases, 1):
            self.say(f"[{step} {index}/{len(cases)}] {label}: {repeat} x {n:,} messages")
            try:
                pub_ep, sub_ep = endpoints()
                runs = []
                for r in range(repeat):
                    if key.startswith("zmq") and r:
                        pub_ep, sub_ep = endpoints()
                    pub, (sub,) = self.run_case(
                        {"system": system, "endpoint": pub_ep, "subject": SUBJECT, "count": n, "size": size,
                         **extra},
                        [{"system": system, "endpoint": sub_ep, "subject": SUBJECT, "count": n, "size": size}],
                        timeout=120 + n / 2000)
                    runs.append({"sent": pub["sent"], "delivered": sub["delivered"], "rate": sub["rate"],
                                 "seconds": sub["seconds"], "publisher_rate": pub["rate"],
                                 "gaps": sub.get("gaps")})
                    self.say(f"    run {r + 1}: {sub['delivered']:,}/{pub['sent']:,} delivered, "
                             f"{sub['rate']:,.0f} msg/s (publisher {pub['rate']:,.0f}/s)")
                rates = sorted(run["rate"] for run in runs)
                median = statistics.median(rates)
                # delivered: the worst run's, so that loss in any run shows in the table
                rows.append(row(key, label, sent=n, size=size, delivered=min(run["delivered"] for run in runs),
                                rate=median, rate_min=rates[0], rate_max=rates[-1], runs=runs))
            except Skip as exc:
                rows.append(skipped(key, label, str(exc)))
                self.say(f"    skipped: {exc}")
            except Exception as exc:
                rows.append(failed(key, label, exc))
                self.say(f"    FAILED: {exc}")
            finally:
                self.end_case()
        mine = rows[first:]
        raw = next((r["rate"] for r in mine if r["key"].split("@")[0] == "zmq" and r["status"] == "ok"), None)
        for r in mine:
            if r["status"] == "ok" and raw:
                r["x_raw"] = r["rate"] / raw
        return rows

    # -- scenario 2 ------------------------------------------------------

    def latency(self, rows=None):
        rows = [] if rows is None else rows  # the caller's list: partial results survive Ctrl-C
        rate, seconds = self.args.rate, self.args.latency_seconds
        count = max(1, int(rate * seconds))
        cases = [case for case in self.pair_cases() if case[2] != "mesh_aio"]  # the bench's thread hop per message
        for index, (key, label, system, endpoints, extra) in enumerate(cases, 1):
            if key == "redis_pipe":
                label = f"Redis + redis-py, pipelined (flushed every {self.args.redis_flush_ms:g} ms)"
                extra = {"batch_ms": self.args.redis_flush_ms}
            self.say(f"[2 latency {index}/{len(cases)}] {label}: {count:,} messages at {rate:,}/s")
            try:
                pub_ep, sub_ep = endpoints()
                pub, (sub,) = self.run_case(
                    {"system": system, "endpoint": pub_ep, "subject": SUBJECT, "count": count, "rate": rate,
                     **extra},
                    [{"system": system, "endpoint": sub_ep, "subject": SUBJECT, "count": count,
                      "mode": "latency"}],
                    timeout=120 + seconds * 2)
                lat = sub["latency_ms"]
                rows.append(row(key, label, sent=pub["sent"], delivered=sub["delivered"], gaps=sub.get("gaps"),
                                publisher_rate=pub["rate"], **{k: lat[k] for k in ("p50", "p99", "p99_9", "max")}))
                self.say(f"    {sub['delivered']:,}/{pub['sent']:,} delivered; p50 {lat['p50']} ms, "
                         f"p99 {lat['p99']} ms, p99.9 {lat['p99_9']} ms")
            except Skip as exc:
                rows.append(skipped(key, label, str(exc)))
                self.say(f"    skipped: {exc}")
            except Exception as exc:
                rows.append(failed(key, label, exc))
                self.say(f"    FAILED: {exc}")
            finally:
                self.end_case()
        raw = next((r for r in rows if r["key"] == "zmq" and r["status"] == "ok"), None)
        for r in rows:
            if r["status"] == "ok" and raw and raw.get("p99"):
                r["p99_x_raw"] = r["p99"] / raw["p99"]
        return rows

    # -- scenario 3 ------------------------------------------------------

    def fanout(self, rows=None):
        rows = [] if rows is None else rows  # the caller's list: partial results survive Ctrl-C
        n, subs = self.args.fanout_messages, self.args.fanout_subscribers
        spread = [subs - 2 * (subs // 3), subs // 3, subs // 3]  # 4/3/3 for 10
        batch = self.args.redis_batch

        def mesh_eps():
            nodes = self.mesh()
            return nodes[0].address, [nodes[i].address for i in range(3) for _ in range(spread[i])]

        def nats_eps():
            servers = self.nats()
            return servers[0].address, [servers[i].address for i in range(3) for _ in range(spread[i])]

        def zmq_eps():
            endpoint = f"tcp://{LOOPBACK}:{free_port()}"
            return endpoint, [endpoint] * subs

        def redis_eps():
            return self.redis().address, [self.redis().address] * subs

        where = "/".join(str(s) for s in spread)
        cases = [
            ("zmq", f"raw pyzmq, 1 PUB -> {subs} SUB", "zmq", zmq_eps, {}),
            ("mesh", f"mesh, 3 nodes ({where} subs on A/B/C, pub A)", "mesh", mesh_eps, {}),
            ("nats", f"NATS 3 servers ({where} subs, pub on 1)", "nats", nats_eps, {}),
            ("redis", "Redis + redis-py, 1 PUBLISH/call", "redis", redis_eps, {}),
            ("redis_pipe", f"Redis + redis-py, pipelined ({batch}/batch)", "redis", redis_eps, {"pipeline": batch}),
        ]
        for index, (key, label, system, endpoints, extra) in enumerate(cases, 1):
            self.say(f"[3 fan-out {index}/{len(cases)}] {label}: {n:,} messages to each of {subs}")
            try:
                pub_ep, sub_eps = endpoints()
                pub, results = self.run_case(
                    {"system": system, "endpoint": pub_ep, "subject": SUBJECT, "count": n, **extra},
                    [{"system": system, "endpoint": ep, "subject": SUBJECT, "count": n} for ep in sub_eps],
                    timeout=180 + n / 500)
                delivered = sum(r["delivered"] for r in results)
                firsts = [r["first"] for r in results if r["first"] is not None]
                lasts = [r["last"] for r in results if r["last"] is not None]
                span = (max(lasts) - min(firsts)) if firsts else 0.0
                rates = [r["rate"] for r in results]
                rows.append(row(key, label, sent=pub["sent"], subscribers=subs, delivered=delivered,
                                expected=pub["sent"] * subs, aggregate_rate=delivered / span if span else 0.0,
                                slowest_rate=min(rates), fastest_rate=max(rates), publisher_rate=pub["rate"],
                                seconds=span))
                self.say(f"    {delivered:,}/{pub['sent'] * subs:,} delivered in {span:.2f} s: "
                         f"{delivered / span if span else 0:,.0f} deliveries/s, slowest subscriber "
                         f"{min(rates):,.0f} msg/s")
            except Skip as exc:
                rows.append(skipped(key, label, str(exc)))
                self.say(f"    skipped: {exc}")
            except Exception as exc:
                rows.append(failed(key, label, exc))
                self.say(f"    FAILED: {exc}")
        return rows

    # -- scenario 4 ------------------------------------------------------

    def websocket(self, rows=None):
        rows = [] if rows is None else rows  # the caller's list: partial results survive Ctrl-C
        for count in self.args.ws_clients:
            for kind in ("mesh", "mesh-auth", "nats", "redis"):
                key = f"{kind}-{count}"
                label = {"mesh": "meshnode edge (/ws/<pattern>)",
                         "mesh-auth": "meshnode edge, JWT auth (an expiry timer per connection)",
                         "nats": "nats-server WebSocket listener", "redis": "Redis"}[kind]
                if kind == "redis":
                    rows.append(dict(skipped(key, label, "Redis has no WebSocket endpoint"), clients=count))
                    continue
                self.say(f"[4 websocket] {label}: {count:,} clients, {self.args.broadcasts} broadcasts")
                try:
                    result = self.ws_trial(kind, count)
                    rows.append(row(key, label, **result))
                    lat = result["latency_ms"]
                    self.say(f"    {result['connected']:,} connected; {result['deliveries']:,}/"
                             f"{result['expected']:,} delivered; p50 {lat['p50']} ms, p99 {lat['p99']} ms; "
                             f"{result['kib_per_connection']:.1f} KiB per connection")
                except Skip as exc:
                    rows.append(dict(skipped(key, label, str(exc)), clients=count))
                    self.say(f"    skipped: {exc}")
                except Exception as exc:
                    rows.append(dict(failed(key, label, exc), clients=count))
                    self.say(f"    FAILED: {exc}")
        return rows

    def ws_trial(self, kind, count):
        """One server, ``count`` clients in one bench.wsclient process, timestamped broadcasts."""
        import json

        from .workers import PAD

        if kind.startswith("mesh"):
            auth = []
            path = "/ws/bench.all"
            if kind == "mesh-auth":
                import jwt

                auth = ["--auth-secret", BENCH_SECRET]
                path += "?token=" + jwt.encode({"exp": time.time() + 3600, "sub": "bench", "subscribe": [">"]},
                                               BENCH_SECRET, algorithm="HS256")
            node = self.procs.node(f"bench-edge-{count}", "--http", "0", "--max-connections", str(count + 100),
                                   *auth)
            fields = dict(part.split("=", 1) for part in node.ready_line.split()[2:])
            host, port = fields["http"].rsplit(":", 1)
            pid, stop = node.pid, (lambda: self.procs.stop_node(node))
        else:
            binary, reason = self.peer("nats")
            if binary is None:
                raise Skip(reason)
            server = NatsServer(self.procs, binary, name=f"nats-ws-{count}", websocket=True).wait_ready()
            host, port, pid, path, stop = LOOPBACK, server.ws_port, server.pid, "/", server.stop
        try:
            time.sleep(0.5)
            before = rss_kib(pid)
            cfg = {"kind": "mesh" if kind.startswith("mesh") else kind, "host": host, "port": int(port),
                   "path": path, "count": count, "subject": "bench.all"}
            client = self.procs.worker(None, cfg, name=f"wsclient:{kind}", module="bench.wsclient")
            started = time.monotonic()
            line = client.line(120 + count / 50)
            if not line.startswith("ready "):
                raise RuntimeError(f"wsclient: {line!r}{client.stderr_text()}")
            status = json.loads(line[6:])
            connect_s = time.monotonic() - started
            time.sleep(1.0)
            after = rss_kib(pid)
            mesh = kind.startswith("mesh")
            publisher = MeshPublisher(node.address) if mesh else RawNats(f"{LOOPBACK}:{server.port}")
            try:
                if mesh and not publisher.client.wait_for_interest("bench.all", timeout=10):
                    raise RuntimeError("the edge's subscription did not reach its publisher")
                for i in range(self.args.broadcasts):
                    publisher.publish("bench.all", {"t": time.monotonic(), "i": i, "pad": PAD[:60].decode()})
                    time.sleep(self.args.broadcast_interval)
            finally:
                publisher.close()
            client.send("stop")
            result = client.result(120)
            end = rss_kib(pid)
            self.procs.stop(client.proc)
        finally:
            stop()
        connected = status["connected"]
        return {"clients": count, "connected": connected, "failed": status["failed"],
                "connect_seconds": round(connect_s, 1), "rss_before_mib": round(before / 1024, 1),
                "rss_after_mib": round(after / 1024, 1), "rss_after_broadcasts_mib": round(end / 1024, 1),
                "kib_per_connection": (after - before) / connected if connected else None,
                "deliveries": result["deliveries"], "expected": connected * self.args.broadcasts,
                "latency_ms": result["latency_ms"],
                "p50": result["latency_ms"]["p50"], "p99": result["latency_ms"]["p99"]}

    # -- scenario 5 ------------------------------------------------------

    def convergence(self, rows=None):
        rows = [] if rows is None else rows  # the caller's list: partial results survive Ctrl-C
        trials = self.args.convergence_trials
        subjects = ["conv.join"] + [f"conv.sub.{k}" for k in range(trials)]
        self.say(f"[5 convergence] meshnode with ZooKeeper: {trials} joins, {trials} subscribes")
        try:
            rows += self.convergence_mesh(trials, subjects)
        except Skip as exc:
            rows += [skipped("mesh-join", "mesh: node joins via ZooKeeper", str(exc)),
                     skipped("mesh-sub", "mesh: subscribe at B, publisher at A", str(exc))]
        except Exception as exc:
            rows += [failed("mesh-join", "mesh: node joins via ZooKeeper", exc),
                     failed("mesh-sub", "mesh: subscribe at B, publisher at A", exc)]
        self.say(f"[5 convergence] NATS cluster: {trials} joins, {trials} subscribes")
        try:
            rows += self.convergence_nats(trials, subjects)
        except Skip as exc:
            rows += [skipped("nats-join", "NATS: server joins the cluster (routes)", str(exc)),
                     skipped("nats-sub", "NATS: subscribe at server 2, publisher at 1", str(exc))]
        except Exception as exc:
            rows += [failed("nats-join", "NATS: server joins the cluster (routes)", exc),
                     failed("nats-sub", "NATS: subscribe at server 2, publisher at 1", exc)]
        rows.append(skipped("zmq-join", "raw pyzmq: node joins", "no membership: raw PUB/SUB has no nodes to join"))
        self.say(f"[5 convergence] raw pyzmq and Redis: {trials} subscribes")
        for key, label, fn in (("zmq-sub", "raw pyzmq: new SUB socket, direct to the PUB", self.convergence_zmq),
                               ("redis-sub", "Redis: SUBSCRIBE (one server, local delivery)",
                                self.convergence_redis)):
            try:
                rows.append(row(key, label, kind="subscribe", **_summary(fn(trials, subjects))))
            except Skip as exc:
                rows.append(skipped(key, label, str(exc)))
            except Exception as exc:
                rows.append(failed(key, label, exc))
        rows.append(skipped("redis-join", "Redis: node joins", "Redis pub/sub runs on one server: no node joins"))
        for r in rows:
            if r["status"] == "ok":
                self.say(f"    {r['label']}: median {r['median_ms']} ms, max {r['max_ms']} ms"
                         + (f" (ready -> first message: median {r['after_ready_median_ms']} ms)"
                            if "after_ready_median_ms" in r else ""))
            else:
                self.say(f"    {r['label']}: {r['status']}: {r['reason']}")
        return rows

    def _stream(self, system, endpoint, subjects):
        pub = self.procs.worker("pub", {"system": system, "endpoint": endpoint, "stream": True,
                                        "subjects": subjects, "rate": self.args.convergence_rate},
                                name=f"stream:{system}")
        pub.expect("ready", 60)
        return pub

    def zookeeper(self, **config):
        """A ZooKeeper server for one scenario (Debian's, installed if missing), started;
        ``config``: extra zoo.cfg keys."""
        import zkserver

        if not os.path.exists(zkserver.ZK_JAR):
            _, reason = ensure_debian("zookeeper", zkserver.ZK_JAR, install=self.args.install, progress=self.say)
            if reason:
                raise Skip(reason)
        zk = self.procs.adopt(zkserver.ZooKeeperServer(tick_time=500, extra_config=config))
        zk.start()
        return zk

    def convergence_mesh(self, trials, subjects):
        from mesh import Client

        zk = self.zookeeper()
        zk_args = ("--zk", zk.hosts, "--mesh", "bench", "--zk-timeout", "2")
        a = self.procs.node("conv-a", *zk_args)
        b = self.procs.node("conv-b", *zk_args)
        pub = self._stream("mesh", a.address, subjects)
        try:
            joins, after_ready = [], []
            for k in range(trials):
                started = time.monotonic()
                node = self.procs.node(f"conv-join{k}", *zk_args)
                ready = time.monotonic()
                with Client(node.address) as client:
                    client.subscribe("conv.join").get(timeout=20)
                    done = time.monotonic()
                joins.append(done - started)
                after_ready.append(done - ready)
                self.procs.stop_node(node)
                time.sleep(0.3)
            subscribes = []
            with Client(b.address) as client:
                for k in range(trials):
                    started = time.monotonic()
                    sub = client.subscribe(f"conv.sub.{k}")
                    sub.get(timeout=20)
                    subscribes.append(time.monotonic() - started)
                    sub.unsubscribe()
        finally:
            pub.send("exit")
            self.procs.stop(pub.proc)
        join_row = row("mesh-join", "mesh: node joins via ZooKeeper", kind="join", **_summary(joins))
        join_row.update(_summary(after_ready, prefix="after_ready_"))
        return [join_row, row("mesh-sub", "mesh: subscribe at B, publisher at A", kind="subscribe",
                              **_summary(subscribes))]

    def convergence_nats(self, trials, subjects):
        binary, reason = self.peer("nats")
        if binary is None:
            raise Skip(reason)
        servers = self.nats()
        pub = self._stream("nats", servers[0].address, subjects)
        try:
            joins, after_ready = [], []
            for k in range(trials):
                started = time.monotonic()
                server = NatsServer(self.procs, binary, name=f"nats-join{k}", cluster_port=free_port(),
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
        finally:
            pub.send("exit")
            self.procs.stop(pub.proc)
        join_row = row("nats-join", "NATS: server joins the cluster (routes)", kind="join", **_summary(joins))
        join_row.update(_summary(after_ready, prefix="after_ready_"))
        return [join_row, row("nats-sub", "NATS: subscribe at server 2, publisher at 1", kind="subscribe",
                              **_summary(subscribes))]

    def convergence_zmq(self, trials, subjects):
        import zmq

        endpoint = f"tcp://{LOOPBACK}:{free_port()}"
        pub = self._stream("zmq", endpoint, subjects)
        context = zmq.Context.instance()
        try:
            out = []
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
        finally:
            pub.send("exit")
            self.procs.stop(pub.proc)

    def convergence_redis(self, trials, subjects):
        server = self.redis()
        pub = self._stream("redis", server.address, subjects)
        try:
            out = []
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
        finally:
            pub.send("exit")
            self.procs.stop(pub.proc)

    # -- the client library at scale (bench/library.py) ---------------------

    def receive(self, rows=None):
        from .library import receive

        return receive(self, [] if rows is None else rows)

    def entities(self, rows=None):
        from .library import entities

        return entities(self, [] if rows is None else rows)

    def http(self, rows=None):
        from .edge_http import http_publish

        return http_publish(self, [] if rows is None else rows)

    def edge_memory(self, rows=None):
        from .edge_memory import edge_memory

        return edge_memory(self, [] if rows is None else rows)

    def scale(self, rows=None):
        from .scale import scale

        return scale(self, [] if rows is None else rows)

    def groups(self, rows=None):
        from .groups import groups

        return groups(self, [] if rows is None else rows)

    def hooks(self, rows=None):
        from .hooks import hooks

        return hooks(self, [] if rows is None else rows)

    def queues(self, rows=None):
        from .queues import queues

        return queues(self, [] if rows is None else rows)

    def requests(self, rows=None):
        from .requests import requests

        return requests(self, [] if rows is None else rows)

    def recovery(self, rows=None):
        from .recovery import recovery

        return recovery(self, [] if rows is None else rows)

    def durable(self, rows=None):
        from .durable import durable

        return durable(self, [] if rows is None else rows)

    def partitions(self, rows=None):
        from .partitions import partitions

        return partitions(self, [] if rows is None else rows)

    def revocation(self, rows=None):
        from .edge_auth import revocation

        return revocation(self, [] if rows is None else rows)


def run_case(procs, pub_cfg, sub_cfgs, timeout):
    """Subscribers first, then the publisher; warm-up until every subscriber
    sees it; then the measured run. Returns (publisher result, subscriber results)."""
    subs = [procs.worker("sub", cfg, name=f"sub{i}:{cfg['system']}") for i, cfg in enumerate(sub_cfgs)]
    pub = None
    finished = False
    try:
        for sub in subs:
            sub.expect("ready", 60)
        pub = procs.worker("pub", pub_cfg, name=f"pub:{pub_cfg['system']}")
        for sub in subs:
            try:
                sub.expect("warm", 30)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}{pub.stderr_text()}") from None
        pub.send("go")
        pub_result = pub.result(timeout)
        results = [sub.result(timeout) for sub in subs]
        pub.send("exit")
        finished = True
        return pub_result, results
    finally:
        for worker in subs + ([pub] if pub else []):
            if finished:  # they exit by themselves now
                try:
                    worker.proc.wait(10)
                except Exception:
                    pass
            procs.stop(worker.proc)


class Skip(Exception):
    """A peer that cannot be had: the row is reported as skipped with this reason."""


def _summary(values, prefix=""):
    ordered = sorted(values)
    return {f"{prefix}median_ms": round(statistics.median(ordered) * 1000, 1),
            f"{prefix}min_ms": round(ordered[0] * 1000, 1), f"{prefix}max_ms": round(ordered[-1] * 1000, 1),
            f"{prefix}trials": len(ordered)}


class MeshPublisher:
    def __init__(self, address):
        from mesh import Client

        self.client = Client(address)

    def publish(self, subject, data):
        self.client.publish(subject, data)

    def close(self):
        self.client.close()


class RawNats:
    """Just enough of the NATS client protocol over a plain socket (publish, subscribe, MSG)."""

    def __init__(self, address, timeout=10.0):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # else Nagle holds a SUB for 40 ms
        self.buf = b""
        self._line()  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\nPING\r\n')
        while self._line() != b"PONG":
            pass

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("nats-server closed the connection")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        if line == b"PING":
            self.sock.sendall(b"PONG\r\n")
        return line

    def subscribe(self, subject, sid=1):
        self.sock.sendall(f"SUB {subject} {sid}\r\n".encode())

    def unsubscribe(self, sid):
        self.sock.sendall(f"UNSUB {sid}\r\n".encode())

    def next_message(self, timeout, subject=None):
        """The body of the next MSG (on ``subject``, if given; others are skipped)."""
        self.sock.settimeout(timeout)
        while True:
            line = self._line()
            if line.startswith(b"MSG "):
                parts = line.split()
                size = int(parts[-1])
                while len(self.buf) < size + 2:
                    self._fill()
                body, self.buf = self.buf[:size], self.buf[size + 2:]
                if subject is None or parts[1].decode() == subject:
                    return body

    def publish(self, subject, data):
        import json

        body = json.dumps(data).encode()
        self.sock.sendall(f"PUB {subject} {len(body)}\r\n".encode() + body + b"\r\nPING\r\n")
        self.sock.settimeout(10)
        while self._line() != b"PONG":
            pass

    def close(self):
        self.sock.close()
