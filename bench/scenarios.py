"""What the scenarios share: ``Bench`` (the servers and nodes they use, each started on
first use, and the peers that cannot be had), ``run_case`` (a publisher process and its
subscriber processes) and the small clients used from this process.

Topology shared by the pair scenarios (bench/pairs.py): a static mesh of three meshnode
processes A, B, C (links A-B, A-C, B-C); a NATS cluster of three nats-servers (routes
between all three); one redis-server. A peer that cannot be had (its Debian package or its
Python client missing and not installable) raises ``Skip``: its rows are reported as
skipped, never dropped.
"""

import importlib.util
import os
import socket
import time

from .base import Skip
from .peers import (
    RedisServer,
    ensure_debian,
    nats_cluster,
    wait_nats_routes,
)
from .procs import LOOPBACK, free_port

BENCH_SECRET = "bench-secret-of-at-least-thirty-two-bytes"

SUBJECT = "bench.x"
PEERS = {
    # name: (Debian package, binary, Python module, pip name)
    "nats": ("nats-server", "nats-server", "nats", "nats-py"),
    "redis": ("redis-server", "redis-server", "redis", "redis"),
}


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

    def binary(self, name):
        """The peer's binary; Skip (with the reason) when it cannot be had."""
        binary, reason = self.peer(name)
        if binary is None:
            raise Skip(reason)
        return binary

    def binaries(self):
        """{peer name: binary} of the peers this run found."""
        return {name: binary for name, (binary, _) in self._peer.items() if binary}

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
        binary = self.binary("nats")
        if self._nats is None:
            self.say("  starting a 3-server NATS cluster ...")
            servers = nats_cluster(self.procs, binary, 3)
            if not wait_nats_routes(servers):
                raise RuntimeError("NATS routes did not form within 10 s")
            self._nats = servers
        return self._nats

    def redis(self):
        binary = self.binary("redis")
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

    def zookeeper(self, **config):
        """A ZooKeeper server for one scenario (Debian's, installed if missing), started;
        ``config``: extra zoo.cfg keys."""
        from meshtest import zkserver

        if not os.path.exists(zkserver.ZK_JAR):
            _, reason = ensure_debian("zookeeper", zkserver.ZK_JAR, install=self.args.install, progress=self.say)
            if reason:
                raise Skip(reason)
        zk = self.procs.adopt(zkserver.ZooKeeperServer(tick_time=500, extra_config=config))
        zk.start()
        return zk


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
