"""Real ``meshnode run`` processes for tests, started and stopped by PID."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import msgpack
import zmq

from mesh.context import shared_context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHNODE = os.path.join(ROOT, "bin", "meshnode")


def meshnode(*args, timeout=30, **kw):
    """``bin/meshnode ARGS`` run to its end: the CompletedProcess, output as text."""
    return subprocess.run([sys.executable, MESHNODE, *args], capture_output=True, text=True, timeout=timeout, **kw)


class NodeProcess:
    def __init__(self, name, *extra, port=0, prefix=(), exact=False):
        """``meshnode run --name NAME --port PORT EXTRA...``; with ``exact``,
        ``meshnode run EXTRA...`` and nothing else (a config file's test)."""
        self.name = name
        self.stderr_text = ""
        args = list(extra) if exact else ["--name", name, "--port", str(port), *extra]
        cmd = [*prefix, sys.executable, MESHNODE, "run", *args]
        # stderr goes to a file: a pipe nobody reads would block the node once full.
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.pid = self.proc.pid
        line = self.proc.stdout.readline()
        if not line.startswith("meshnode ready"):
            self.kill()
            raise RuntimeError(f"node {name} did not start: {line!r} {self.stderr_text}")
        self.ready_line = line
        fields = dict(part.split("=", 1) for part in line.split()[2:])
        self.address = fields["control"]

    def request(self, cmd, **fields):
        """One control request with raw pyzmq (no client library)."""
        sock = shared_context(self.address).socket(zmq.DEALER)  # IPv6 too: a node may run on ::1
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{self.address}")
        try:
            sock.send(msgpack.packb({"v": 1, "cmd": cmd, "id": 1, **fields}))
            if not sock.poll(5000):
                raise TimeoutError(f"{self.name} did not answer {cmd}")
            return msgpack.unpackb(sock.recv())
        finally:
            sock.close()

    def stats(self):
        return self.request("stats")

    def peer_names(self):
        """The peers this node knows (membership; their data links may be coming up)."""
        return sorted(p["name"] for p in self.request("peers")["peers"])

    def linked_names(self):
        """The peers whose data link is up (peer changes apply within 100 ms: nodes/dataplane.py)."""
        return sorted(p["name"] for p in self.request("peers")["peers"] if p["link"] == "up")

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=10):
        """SIGTERM and wait; returns the exit code (``stderr_text`` then holds the log)."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.kill()  # gone already: this collects its log
        return code

    def kill(self):
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait()
        if not self._log.closed:
            self._log.seek(0)
            self.stderr_text = self._log.read()
            self._log.close()
            self.proc.stdout.close()


def free_port():
    """A TCP port free on loopback now (for a node or server that must come back on it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def linked(*nodes):
    """True when every node is alive and linked to exactly the others, links up."""
    names = sorted(n.name for n in nodes)
    return all(n.alive() and n.linked_names() == n.peer_names() == [x for x in names if x != n.name]
               for n in nodes)


def wait_until(predicate, timeout=10.0, interval=0.05, what="condition", sleep=time.sleep):
    """Poll ``predicate()`` until it is truthy; return its value or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        sleep(interval)


def start_mesh3(start_node, *extra):
    """Three linked nodes A, B, C, each started with ``extra`` (B and C name A;
    links are symmetric); ``start_node`` is conftest's factory."""
    a = start_node("A", *extra)
    b = start_node("B", *extra, peers=[a])
    c = start_node("C", *extra, peers=[a, b])
    wait_until(lambda: linked(a, b, c), what="A, B and C linked")
    return a, b, c
