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
slowest pair). Used by tests/test_partition.py and bench/partitions.py.
"""

import json
import os
import queue
import subprocess
import sys
import threading
import time

from netns import Testbed
from nodeproc import NodeProcess, wait_until
from zkserver import ZooKeeperServer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PORT = 7400


class HostClient:
    """tests/hostclient.py inside one host; its JSON lines arrive in a queue."""

    def __init__(self, host, address, rate):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))
        self.name = host.name
        self.proc = subprocess.Popen([*host.prefix, sys.executable, os.path.join(HERE, "hostclient.py"), address,
                                      host.name, str(rate)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
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

    def __init__(self, count=3, zk_timeout=4, mesh="part"):
        self.zk_timeout = zk_timeout
        self.nodes, self.clients = [], []
        self.bed = Testbed(count)
        self.hosts = self.bed.hosts
        self.zk = ZooKeeperServer(host=self.bed.zk_address)
        try:
            self.zk.start()
            for host in self.hosts:
                self.nodes.append(NodeProcess(host.name, "--host", host.ip, "--zk", self.zk.hosts, "--mesh", mesh,
                                              "--zk-timeout", str(zk_timeout), "--insecure", port=PORT,
                                              prefix=host.prefix))
            names = sorted(host.name for host in self.hosts)
            wait_until(lambda: all(node.linked_names() == [n for n in names if n != node.name]
                                   for node in self.nodes), timeout=30, what="every node linked to the others")
        except BaseException:
            self.close()
            raise

    def host(self, name):
        return next(host for host in self.hosts if host.name == name)

    def run(self, schedule, rate=20.0, settle=3.0, attach=None):
        """Traffic from every host to every host while ``schedule`` plays: a list of
        (seconds to wait, action) where action is a callable (a cut or a heal)
        and a heal is marked by ``action.heal = True`` (see :func:`step`).
        Each host's client uses its own host's node, or the node of the host
        ``attach`` maps its name to (a client whose node is on another host).
        Returns {"sent", "subscribers": {host: {received, gaps, dropped}},
        "resumed": [seconds after each heal]}."""
        names = [host.name for host in self.hosts]
        attach = attach or {}
        self.clients = [HostClient(host, f"{self.host(attach.get(host.name, host.name)).ip}:{PORT}", rate)
                        for host in self.hosts]
        wait_until(lambda: all(c.heard_all(names) for c in self.clients), timeout=30, interval=0.1,
                   what="every client hearing every host")
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
        for client in self.clients:
            client.tell("stop")
        sent = sum(client.answer("sent")["sent"] for client in self.clients)

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
        return {"sent": sent,
                "subscribers": {name: {k: r[k] for k in ("received", "gaps", "dropped")} for name, r in got.items()},
                "resumed": [resumed_after(heal, [r["log"] for r in got.values()], names) for heal in heals]}

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
            firsts = [received for subject, published, received in log
                      if subject == f"part.{name}" and published >= heal]
            if not firsts:
                return None
            slowest = max(slowest, min(firsts) - heal)
    return round(slowest, 2)
