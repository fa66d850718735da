"""A mesh on a network-namespace test bed, traffic through it, partitions and the accounting.

:class:`MeshBed` runs ZooKeeper on the bed's ZooKeeper bridge (tests/netns.py)
and one ``meshnode`` per host, all on port 7400 with ``--host`` the host's
own address, plus one client per host (tests/hostclient.py) that publishes
``part.<host>`` at a steady rate and subscribes to ``part.>``: every host
hears every host, itself included, so a partition crosses streams both ways.

:meth:`MeshBed.run` plays a schedule of cuts and heals under that traffic and
returns what each subscriber got: received, gaps, the sum of what was sent,
and how long after each heal delivery resumed (the first message published
after the heal and received, over every publisher and subscriber pair: the
slowest pair). :meth:`MeshBed.restart` stops a host's node (SIGTERM, or
kill -9) and starts it again under the same name and address, as a schedule's
action. Without ZooKeeper the nodes find each other as the README's static
example does: the first host's node is every other one's only ``--peer``.
A host named in ``skew`` runs its node and client with their wall clock off
(tests/skewclock.py). Used by tests/test_partition.py, tests/test_hosts.py
and bench/partitions.py.
"""

import json
import os
import queue
import subprocess
import sys
import threading
import time

from netns import Testbed
from meshtest.nodeproc import NodeProcess, wait_until
from skewclock import clock_prefix
from meshtest.zkserver import ZooKeeperServer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PORT = 7400


class HostClient:
    """tests/hostclient.py inside one host; its JSON lines arrive in a queue."""

    def __init__(self, host, address, rate, prefix=()):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))
        self.name = host.name
        self.proc = subprocess.Popen([*host.prefix, *prefix, sys.executable, os.path.join(HERE, "hostclient.py"),
                                      address, host.name, str(rate)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.lines = queue.Queue()
        self.warm = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def tell(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def answer(self, key, timeout=20):
        """The next line that has ``key`` (warm lines on the way are kept)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if "warm" in line:
                self.warm = line["warm"]
            if key in line:
                return line

    def heard_all(self, names):
        try:
            while True:
                line = self.lines.get_nowait()
                self.warm = line.get("warm", self.warm)
        except queue.Empty:
            pass
        return len(self.warm) == len(names)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class MeshBed:
    """``count`` hosts, ZooKeeper on the bridge, one node per host; close() undoes it all."""

    def __init__(self, count=3, zk_timeout=4, mesh="part", zookeeper=True, node_args=(), skew=None):
        """``zookeeper``: False for static peers; ``node_args``: more flags for
        every node; ``skew``: {host name: seconds its clock is off}."""
        self.zk_timeout = zk_timeout
        self.nodes, self.clients = [], []
        self.skew = skew or {}
        self.bed = Testbed(count)
        self.hosts = self.bed.hosts
        self.zk = ZooKeeperServer(host=self.bed.zk_address) if zookeeper else None
        if zookeeper:
            self.discovery = ("--zk", self.zk.hosts, "--mesh", mesh, "--zk-timeout", str(zk_timeout))
        else:
            self.discovery = ("--peer", f"{self.hosts[0].ip}:{PORT}")
        self.node_args = tuple(node_args)
        try:
            if self.zk is not None:
                self.zk.start()
            for host in self.hosts:
                self.nodes.append(self._start(host))
            self.wait_linked(timeout=30)
        except BaseException:
            self.close()
            raise

    def host(self, name):
        return next(host for host in self.hosts if host.name == name)

    def _clock(self, host):
        return clock_prefix(self.skew[host.name]) if host.name in self.skew else []

    def _start(self, host):
        discovery = self.discovery if self.zk is not None or host is not self.hosts[0] else ()
        return NodeProcess(host.name, "--host", host.ip, *discovery, *self.node_args, "--insecure", port=PORT,
                           prefix=[*host.prefix, *self._clock(host)])

    def linked(self):
        """True when every node is linked to every other."""
        names = sorted(host.name for host in self.hosts)
        return all(node.linked_names() == [n for n in names if n != node.name] for node in self.nodes)

    def wait_linked(self, timeout):
        wait_until(self.linked, timeout=timeout, interval=0.05, what="every node linked to the others")

    def restart(self, name, kill=False):
        """Stop ``name``'s node (SIGTERM and wait, or kill -9), start it again
        at once under the same name and address, wait until every node is
        linked to every other. Returns {"ready": seconds from the stop until
        the new node was ready, "linked": until every link was up,
        "ready_at": the wall time it was ready}."""
        index = next(i for i, node in enumerate(self.nodes) if node.name == name)
        old = self.nodes[index]
        started = time.monotonic()
        if kill:
            old.kill()
        else:
            assert old.stop() == 0, old.stderr_text
        self.nodes[index] = self._start(self.host(name))
        ready, ready_at = time.monotonic(), time.time()
        self.wait_linked(timeout=60)
        return {"ready": round(ready - started, 2), "linked": round(time.monotonic() - started, 2),
                "ready_at": ready_at}

    def run(self, schedule, rate=20.0, settle=3.0, attach=None):
        """Traffic from every host to every host while ``schedule`` plays: a list of
        (seconds to wait, action) where action is a callable (a cut or a heal)
        and a heal is marked by ``action.heal = True`` (see :func:`step`).
        Each host's client uses its own host's node, or the node of the host
        ``attach`` maps its name to (a client whose node is on another host).
        Returns {"sent", "subscribers": {host: {received, gaps, dropped}},
        "resumed": [seconds after each heal], "logs"} (see :meth:`account`)."""
        self.start_clients(rate, attach)
        for client in self.clients:
            client.tell("go")
        time.sleep(settle)
        heals = []
        for wait, action in schedule:
            time.sleep(wait)
            action()
            if getattr(action, "heal", False):
                heals.append(time.time())
        time.sleep(settle)
        return self.account(heals)

    def start_clients(self, rate=20.0, attach=None):
        """One client per host (at its own node, or at the node of the host
        ``attach`` maps its name to), each hearing every host before this returns."""
        names = [host.name for host in self.hosts]
        attach = attach or {}
        self.clients = [HostClient(host, f"{self.host(attach.get(host.name, host.name)).ip}:{PORT}", rate,
                                   self._clock(host)) for host in self.hosts]
        wait_until(lambda: all(c.heard_all(names) for c in self.clients), timeout=30, interval=0.1,
                   what="every client hearing every host")

    def client(self, name):
        return next(client for client in self.clients if client.name == name)

    def account(self, heals=()):
        """Stop every publisher and wait until every subscriber accounts for
        what was sent (or 15 s); the figures :meth:`run` returns, what each
        publisher sent ("sent_by") and each subscriber's log ("logs",
        tests/hostclient.py)."""
        names = [host.name for host in self.hosts]
        for client in self.clients:
            client.tell("stop")
        sent_by = {client.name: client.answer("sent")["sent"] for client in self.clients}
        sent = sum(sent_by.values())

        def reports():
            for client in self.clients:
                client.tell("report")
            return {client.name: client.answer("received") for client in self.clients}

        def accounted():
            got = reports()
            return got if all(r["received"] + r["gaps"] >= sent for r in got.values()) else None

        try:
            got = wait_until(accounted, timeout=15, interval=0.5, what="received + gaps to reach sent")
        except AssertionError:
            got = reports()
        return {"sent": sent, "sent_by": sent_by,
                "subscribers": {name: {k: r[k] for k in ("received", "gaps", "dropped")} for name, r in got.items()},
                "resumed": [resumed_after(heal, [r["log"] for r in got.values()], names) for heal in heals],
                "logs": {name: r["log"] for name, r in got.items()}}

    def close(self):
        """Every process by PID, then ZooKeeper, then the namespaces; each step
        runs even when one before it failed."""
        try:
            for proc in [*self.clients, *self.nodes]:
                try:
                    proc.kill()
                except OSError:
                    pass
        finally:
            try:
                if self.zk is not None:
                    self.zk.close()
            finally:
                self.bed.close()


def step(action, heal=False):
    """A schedule's action; ``heal`` marks the moments resumption is timed from."""
    def run():
        action()
    run.heal = heal
    return run


def resumed_after(heal, logs, names):
    """Seconds from ``heal`` until every subscriber had a message published after it
    from every publisher (None if some pair never resumed)."""
    slowest = 0.0
    for log in logs:
        for name in names:
            firsts = [received for subject, published, received, *_ in log
                      if subject == f"part.{name}" and published >= heal]
            if not firsts:
                return None
            slowest = max(slowest, min(firsts) - heal)
    return round(slowest, 2)
