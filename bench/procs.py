"""Every process the benchmark starts, and stopping each of them by PID.

``Procs`` is the one registry: meshnode processes, NATS and Redis servers,
ZooKeeper and the publisher/subscriber workers are all started through it (or
registered with it) and stopped by PID in ``close()`` (SIGTERM, then SIGKILL),
which ``python -m bench`` runs on success, failure, Ctrl-C and SIGTERM alike.
Children also get ``PR_SET_PDEATHSIG`` so that they die with the benchmark
even if it is killed with SIGKILL.

``Worker`` wraps a ``python -m bench.workers ROLE CONFIG`` process: its stdout
lines are read by a thread into a queue, so the orchestrator can wait for a
line with a timeout.
"""

import ctypes
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from meshtest.nodeproc import MESHNODE, NodeProcess  # real `meshnode run` processes, stopped by PID

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """preexec_fn: SIGTERM this child when the benchmark process goes away."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0, proc=None):
    """Wait until something accepts TCP connections on loopback ``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return True
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def rss_kib(pid):
    """Resident set size of a process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid):
    """CPU time of a process so far (utime + stime from /proc/PID/stat, 10 ms ticks), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_nofile_limit():
    """Soft open-file limit up to the hard limit (10k WebSocket clients need it); returns it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class BenchNode(NodeProcess):
    """meshtest/nodeproc.py's NodeProcess (control requests, stop/kill by PID), started
    with PR_SET_PDEATHSIG so that a node never outlives a killed benchmark."""

    def __init__(self, name, *extra, wait=True):
        self.name = name
        self.stderr_text = ""
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, MESHNODE, "run", "--name", name, "--port", "0", *extra],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, preexec_fn=_die_with_parent)
        self.pid = self.proc.pid
        if wait:
            self.wait_ready()

    def wait_ready(self):
        """Read the node's ``meshnode ready`` line (its endpoints)."""
        line = self.proc.stdout.readline()
        if not line.startswith("meshnode ready"):
            self.kill()
            raise RuntimeError(f"node {self.name} did not start: {line!r} {self.stderr_text[-2000:]}")
        self.ready_line = line
        self.fields = dict(part.split("=", 1) for part in line.split()[2:])
        self.address = self.fields["control"]


class Worker:
    """A benchmark worker process speaking lines on stdin/stdout."""

    def __init__(self, popen, name, log):
        self.proc = popen
        self.pid = popen.pid
        self.name = name
        self._log = log
        self._lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self, timeout):
        """The next stdout line; RuntimeError if the worker exits or times out first."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"worker {self.name} said nothing for {timeout:.0f} s{self._tail()}") from None
        if line is None:
            self._lines.put(None)
            self.proc.wait(5)
            raise RuntimeError(f"worker {self.name} exited with status {self.proc.returncode}{self._tail()}")
        return line

    def expect(self, word, timeout=30.0):
        line = self.line(timeout)
        if line != word:
            raise RuntimeError(f"worker {self.name}: expected {word!r}, got {line!r}{self._tail()}")

    def result(self, timeout):
        """The worker's JSON result line."""
        line = self.line(timeout)
        try:
            return json.loads(line)
        except ValueError:
            raise RuntimeError(f"worker {self.name}: not a result: {line!r}{self._tail()}") from None

    def send(self, word):
        try:
            self.proc.stdin.write(word + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def _tail(self):
        try:
            self._log.flush()
            self._log.seek(0)
            text = self._log.read()[-2000:]
        except (OSError, ValueError):
            return ""
        return f"\n--- stderr of {self.name} ---\n{text}" if text.strip() else ""

    def stderr_text(self):
        return self._tail()


class Procs:
    """The registry of everything started; ``close()`` stops all of it by PID."""

    def __init__(self):
        self._popens = []  # (Popen, name)
        self._closers = []  # objects with their own stop-by-PID (ZooKeeperServer, NodeProcess)
        self.tmp = tempfile.mkdtemp(prefix="meshnode-bench-")

    # -- starting ------------------------------------------------------

    def popen(self, cmd, name, **kwargs):
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("preexec_fn", _die_with_parent)
        proc = subprocess.Popen(cmd, **kwargs)
        self._popens.append((proc, name))
        return proc

    def worker(self, role, config, name=None, module="bench.workers"):
        """Start ``python -m MODULE [ROLE] CONFIG_JSON``."""
        name = name or f"{role}:{config.get('system')}"
        log = tempfile.TemporaryFile(mode="w+", dir=self.tmp)
        argv = [sys.executable, "-m", module, *([role] if role else []), json.dumps(config)]
        proc = self.popen(argv, name,
                          cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                          bufsize=1)
        return Worker(proc, name, log)

    def node(self, name, *extra):
        """A real ``meshnode run`` process (meshtest/nodeproc.py), registered for stopping."""
        return self.nodes([name], *extra)[0]

    def nodes(self, names, *extra, each=None):
        """Several nodes started at once, returned once all are ready; ``each``
        maps a name to more arguments of its own."""
        nodes = []
        for name in names:
            node = BenchNode(name, "--log-level", "WARNING", *extra, *(each or {}).get(name, ()), wait=False)
            self._popens.append((node.proc, f"meshnode {name}"))
            self._closers.append(node)
            nodes.append(node)
        for node in nodes:
            node.wait_ready()
        return nodes

    def linked_nodes(self, names, *extra, timeout=20.0):
        """Nodes ``names``, each started with ``extra`` and naming the ones before
        it as peers; returned once every one is linked to all the others."""
        nodes = []
        for name in names:
            nodes.append(self.node(name, *extra, *[arg for node in nodes for arg in ("--peer", node.address)]))
        deadline = time.monotonic() + timeout
        while not all(len(node.linked_names()) == len(nodes) - 1 for node in nodes):  # links up
            if time.monotonic() > deadline:
                raise RuntimeError(f"{', '.join(names)} did not link within {timeout} s")
            time.sleep(0.1)
        return nodes

    def adopt(self, thing):
        """Register an object with ``stop()`` (or ``close()``) that stops its own process by PID."""
        self._closers.append(thing)
        return thing

    # -- stopping ------------------------------------------------------

    def stop(self, proc, timeout=10.0):
        """SIGTERM by PID, wait, then SIGKILL."""
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    def stop_node(self, node):
        try:
            node.stop()
        except Exception:
            node.kill()
        else:
            node.kill()  # reaps and closes its pipes; no-op signal once it exited

    def close(self):
        # Signal everything first so that shutdowns overlap, then wait for each.
        for proc, _ in self._popens:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc, _ in reversed(self._popens):
            self.stop(proc)
        for thing in reversed(self._closers):
            try:
                if isinstance(thing, NodeProcess):
                    thing.kill()
                elif hasattr(thing, "close"):
                    thing.close()
                else:
                    thing.stop()
            except Exception:
                pass
        self._popens.clear()
        self._closers.clear()
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)

    def alive(self):
        """Names and PIDs of registered processes still running (for a final check)."""
        return [(name, proc.pid) for proc, name in self._popens if proc.poll() is None]
