"""Real ZooKeeper servers for tests: a standalone server and a 3-server ensemble.

This module owns the ZooKeeper *processes* that tests need, nothing else:

* ``ZooKeeperServer`` starts one real ZooKeeper (Debian's ``zookeeper`` /
  ``libzookeeper-java`` 3.8 jar under Java 17) on a free loopback port, with
  its own temp dir holding a generated ``zoo.cfg``, the data dir and the log
  file. Standalone servers run ``ZooKeeperServerMain``; ensemble members run
  ``QuorumPeerMain`` with a ``myid`` file.
* ``ZooKeeperEnsemble`` runs three such members that form a quorum, and lets a
  test stop / kill / restart any one of them and find the leader.

Every java process is started directly (no shell) so its PID is ours, and is
stopped by that PID: SIGTERM then SIGKILL in ``stop()``, SIGKILL in ``kill()``,
also when ``start()`` fails, and (as a last resort) at interpreter exit.
``close()`` stops the process and removes the temp dir.

Only the standard library is used; clients (kazoo) are the tests' business.

Things learned while probing Debian's packaging here:

* ``ruok`` answers ``imok`` as soon as the client port is open, *before* the
  server serves requests (``srvr`` then says "This ZooKeeper instance is not
  currently serving requests"), and an ensemble member without quorum also
  says ``imok``. So readiness here means ``ruok`` -> ``imok`` *and* ``srvr``
  reporting a ``Mode:``; ``is_alive()`` is the bare ``ruok`` check.
* Without an SLF4J binding on the classpath ZooKeeper logs nothing; we add
  ``slf4j-simple.jar`` when present (it logs to stderr, which goes to the log
  file).
* ZooKeeper exits with status 143 on SIGTERM (no clean-exit handler); that
  is normal and not reported as an error.
* The minimum session timeout is 2 x tickTime, so the default tickTime of
  500 ms here allows 1 s sessions (maximum is 20 x tickTime = 10 s).
"""

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

JAVA = shutil.which("java") or "/usr/bin/java"
ZK_CONF_DIR = "/etc/zookeeper/conf"
ZK_JAR = "/usr/share/java/zookeeper.jar"
# An SLF4J binding; without one ZooKeeper is silent. First one found is used.
SLF4J_BINDINGS = ("/usr/share/java/slf4j-simple.jar",)
STANDALONE_MAIN = "org.apache.zookeeper.server.ZooKeeperServerMain"
QUORUM_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
LOOPBACK = "127.0.0.1"
POLL_TIMEOUT = 0.25  # seconds, per 4lw request while waiting for a state

JVM_OPTS = (
    "-Xms16m",
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-Djava.net.preferIPv4Stack=true",
    "-Djava.awt.headless=true",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
    # Our readiness polling would fill the log with "Processing ruok command".
    "-Dorg.slf4j.simpleLogger.log.org.apache.zookeeper.server.NIOServerCnxn=warn",
)

# pid -> Popen of every java process started here and not yet reaped.
_LIVE = {}


def _kill_leftovers():
    for pid, proc in list(_LIVE.items()):
        if proc.poll() is None:
            try:
                os.kill(pid, signal.SIGKILL)
                proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        _LIVE.pop(pid, None)


atexit.register(_kill_leftovers)


class ZooKeeperError(RuntimeError):
    """A ZooKeeper process did not start or did not reach the wanted state."""


def free_ports(count=1):
    """``count`` distinct free TCP ports on loopback (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def four_letter_word(port, word, host=LOOPBACK, timeout=1.0):
    """Send a 4lw command over a plain TCP socket and return the reply (str).

    Raises OSError if nothing listens or nothing is answered within ``timeout``.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(word.encode("ascii"))
        chunks = []
        while True:
            try:
                data = sock.recv(4096)
            except socket.timeout:
                if chunks:  # replied but did not hang up (seen during startup)
                    break
                raise
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def classpath():
    parts = []
    if os.path.isdir(ZK_CONF_DIR):
        parts.append(ZK_CONF_DIR)
    if not os.path.exists(ZK_JAR):
        raise ZooKeeperError(f"{ZK_JAR} not found: is Debian's zookeeper package installed?")
    parts.append(ZK_JAR)
    for jar in SLF4J_BINDINGS:
        if os.path.exists(jar):
            parts.append(jar)
            break
    return ":".join(parts)


class ZooKeeperServer:
    """One real ZooKeeper process on loopback (or on ``host``).

    Standalone by default. With ``myid`` and ``servers`` (list of
    ``(myid, peer_port, election_port)``) it is an ensemble member run by
    ``QuorumPeerMain``; ``ZooKeeperEnsemble`` builds those.
    """

    def __init__(self, port=None, tick_time=500, myid=None, servers=None, extra_config=None,
                 base_dir=None, name=None, host=LOOPBACK):
        self.host = host  # where clients connect (a test bed's bridge address: tests/netns.py)
        self._auto_port = port is None
        self.port = port if port is not None else free_ports(1)[0]
        self.tick_time = tick_time
        self.myid = myid
        self.servers = list(servers) if servers else None
        self.extra_config = dict(extra_config or {})
        self.name = name or (f"zk{myid}" if myid is not None else "zk")
        self._own_dir = base_dir is None
        self.dir = base_dir or tempfile.mkdtemp(prefix=f"meshnode-{self.name}-")
        os.makedirs(self.dir, exist_ok=True)
        self.data_dir = os.path.join(self.dir, "data")
        self.config_path = os.path.join(self.dir, "zoo.cfg")
        self.log_path = os.path.join(self.dir, "zookeeper.log")
        self.proc = None
        self._closed = False
        os.makedirs(self.data_dir, exist_ok=True)
        if self.myid is not None:
            with open(os.path.join(self.data_dir, "myid"), "w") as f:
                f.write(f"{self.myid}\n")
        self._write_config()

    # -- configuration -------------------------------------------------

    @property
    def is_member(self):
        return self.servers is not None

    def _write_config(self):
        lines = [
            f"tickTime={self.tick_time}",
            "initLimit=10",
            "syncLimit=5",
            f"dataDir={self.data_dir}",
            f"clientPort={self.port}",
            f"clientPortAddress={self.host}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=*",
            # Unknown keys become zookeeper.* system properties: keep the
            # transaction log preallocation small (KB; default is 64 MB).
            "preAllocSize=1024",
            "snapCount=10000",
        ]
        if self.is_member:
            for sid, peer_port, election_port in self.servers:
                lines.append(f"server.{sid}={LOOPBACK}:{peer_port}:{election_port}")
        for key, value in self.extra_config.items():
            lines.append(f"{key}={value}")
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    # -- state ---------------------------------------------------------

    @property
    def hosts(self):
        return f"{self.host}:{self.port}"

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def running(self):
        """The java process exists and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def four(self, word, timeout=1.0):
        return four_letter_word(self.port, word, host=self.host, timeout=timeout)

    def is_alive(self, timeout=1.0):
        """``ruok`` answers ``imok`` (the process listens; it may not serve yet)."""
        try:
            return self.four("ruok", timeout=timeout) == "imok"
        except OSError:
            return False

    def mode(self, timeout=1.0):
        """'standalone', 'leader' or 'follower' from ``srvr``; None if not serving."""
        try:
            reply = self.four("srvr", timeout=timeout)
        except OSError:
            return None
        match = re.search(r"^Mode: (\w+)", reply, re.M)
        return match.group(1) if match else None

    def is_serving(self, timeout=1.0):
        """``ruok`` -> ``imok`` and ``srvr`` shows a Mode (the server takes requests)."""
        return self.is_alive(timeout) and self.mode(timeout) is not None

    def log_tail(self, lines=40):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- lifecycle -----------------------------------------------------

    def start(self, timeout=20.0, wait_serving=True):
        """Start the process; wait until it serves (or only until ``ruok``
        answers, with ``wait_serving=False``, as ensemble members without a
        quorum do). On failure the process is killed and ZooKeeperError
        raised with the log tail."""
        if self._closed:
            raise ZooKeeperError(f"{self.name} is closed")
        if self.running():
            raise ZooKeeperError(f"{self.name} already running (pid {self.pid})")
        attempts = 3 if (self._auto_port and not self.is_member) else 1
        for attempt in range(attempts):
            try:
                return self._start_once(timeout, wait_serving)
            except ZooKeeperError as exc:
                if attempt + 1 < attempts and "Address already in use" in str(exc):
                    # Someone took our free port between pick and bind: pick another.
                    self.port = free_ports(1)[0]
                    self._write_config()
                    continue
                raise

    def _start_once(self, timeout, wait_serving):
        cmd = [JAVA, *JVM_OPTS, "-cp", classpath(),
               QUORUM_MAIN if self.is_member else STANDALONE_MAIN, self.config_path]
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')} port {self.port}: "
                      f"{' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        _LIVE[self.proc.pid] = self.proc
        ready = self.is_serving if wait_serving else self.is_alive
        # Short 4lw timeouts while polling: during startup ZooKeeper 3.8 can
        # leave a 4lw connection open after replying (NullPointerException
        # "zkDb is null" in ServerCnxn.cleanupWriterSocket), so a read would
        # otherwise hang for the whole timeout.
        deadline = started + timeout
        try:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise ZooKeeperError(
                        f"{self.name} (port {self.port}) exited with status {code} while starting; "
                        f"log {self.log_path} ends with:\n{self.log_tail()}")
                if ready(POLL_TIMEOUT):
                    self.start_seconds = time.monotonic() - started
                    return self
                if time.monotonic() > deadline:
                    raise ZooKeeperError(
                        f"{self.name} (port {self.port}, pid {self.pid}) not "
                        f"{'serving' if wait_serving else 'answering ruok'} after {timeout:.0f} s; "
                        f"log {self.log_path} ends with:\n{self.log_tail()}")
                time.sleep(0.02)
        except BaseException:
            self.kill()
            raise

    def _signal_and_wait(self, sig, wait):
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            return proc.wait(wait)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=5.0):
        """SIGTERM, then SIGKILL after ``timeout`` s; waits for the process. Returns its status."""
        if self.proc is None:
            return None
        code = self._signal_and_wait(signal.SIGTERM, timeout)
        if code is None:
            code = self._signal_and_wait(signal.SIGKILL, 10.0)
        self._reaped()
        return code

    def kill(self):
        """SIGKILL by PID and wait. Returns the exit status."""
        if self.proc is None:
            return None
        code = self._signal_and_wait(signal.SIGKILL, 10.0)
        self._reaped()
        return code

    def _reaped(self):
        if self.proc is not None and self.proc.poll() is not None:
            _LIVE.pop(self.proc.pid, None)

    def restart(self, timeout=20.0, wait_serving=True):
        """Stop (if running) and start again on the same port with the same data dir."""
        self.stop()
        return self._start_once(timeout, wait_serving)

    def close(self):
        """Stop the process and remove the temp dir."""
        try:
            self.stop()
        finally:
            self._closed = True
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start() if not self.running() else self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<ZooKeeperServer {self.name} {self.hosts} pid={self.pid}>"


class ZooKeeperEnsemble:
    """Three ``QuorumPeerMain`` members on loopback (server.N=127.0.0.1:peer:election)."""

    def __init__(self, size=3, tick_time=500, extra_config=None):
        self.dir = tempfile.mkdtemp(prefix="meshnode-zk-ensemble-")
        ports = free_ports(3 * size)
        client_ports = ports[:size]
        servers = [(i + 1, ports[size + 2 * i], ports[size + 2 * i + 1]) for i in range(size)]
        self.members = [
            ZooKeeperServer(port=client_ports[i], tick_time=tick_time, myid=i + 1, servers=servers,
                            extra_config=extra_config, name=f"zk{i + 1}",
                            base_dir=os.path.join(self.dir, f"zk{i + 1}"))
            for i in range(size)
        ]

    def __getitem__(self, index):
        return self.members[index]

    def __iter__(self):
        return iter(self.members)

    def __len__(self):
        return len(self.members)

    @property
    def hosts(self):
        return ",".join(m.hosts for m in self.members)

    def start(self, timeout=30.0):
        """Start all members and wait for quorum (one leader, all others followers)."""
        started = time.monotonic()
        try:
            for member in self.members:
                member.start(timeout=timeout, wait_serving=False)
            self.wait_for_quorum(timeout=max(1.0, timeout - (time.monotonic() - started)))
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def modes(self):
        """{member name: mode or None} for running members."""
        return {m.name: m.mode() for m in self.members if m.running()}

    def wait_for_quorum(self, timeout=20.0, members=None):
        """Wait until every running member (or the given ones) serves, with exactly one leader.
        Returns the leader."""
        deadline = time.monotonic() + timeout
        while True:
            group = members if members is not None else [m for m in self.members if m.running()]
            modes = [m.mode(POLL_TIMEOUT) for m in group]
            if group and all(modes) and modes.count("leader") == 1 and \
                    modes.count("follower") == len(group) - 1:
                return group[modes.index("leader")]
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {m.name} (pid {m.pid}) {m.log_path}\n{m.log_tail(15)}"
                                  for m in self.members)
                seen = {m.name: mode for m, mode in zip(group, modes)}
                raise ZooKeeperError(f"no quorum after {timeout:.0f} s: {seen}\n{tails}")
            time.sleep(0.02)

    def leader(self):
        """The member whose ``srvr`` says Mode: leader, or None."""
        for member in self.members:
            if member.running() and member.mode() == "leader":
                return member
        return None

    def followers(self):
        return [m for m in self.members if m.running() and m.mode() == "follower"]

    def stop(self):
        """Stop every member (by PID)."""
        errors = []
        for member in self.members:
            try:
                member.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]

    def close(self):
        try:
            self.stop()
        finally:
            for member in self.members:
                member.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
