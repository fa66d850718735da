"""The peers' servers: NATS (`nats-server`) and Redis (`redis-server`) from Debian,
plus ZooKeeper for the convergence scenario.

``ensure_debian(package, binary)`` finds the binary, or installs the Debian
package with apt-get (as root, or through sudo) unless installing is turned
off; it returns None and a reason when the server cannot be had, and the
scenario then reports that peer as skipped with the reason.

Each server runs on loopback on a free port, from a temp dir of its own, and
is stopped by its PID (``Procs`` does it).
"""

import os
import re
import shutil
import subprocess
import time

from .procs import LOOPBACK, free_port, wait_port

_apt_updated = False
_install_failures = {}


def _apt(args):
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if sudo is None:
        return False, "not root and no sudo"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(sudo + ["apt-get", *args], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    return done.returncode == 0, done.stdout[-500:]


def _find(binary):
    if binary.startswith("/"):
        return binary if os.path.exists(binary) else None
    return shutil.which(binary) or next((p for p in (f"/usr/bin/{binary}", f"/usr/sbin/{binary}")
                                         if os.path.exists(p)), None)


def ensure_debian(package, binary, install=True, progress=print):
    """Path of ``binary`` (a command, or an absolute path of a file the package ships),
    installing Debian's ``package`` if needed: (path, None) or (None, reason)."""
    global _apt_updated
    path = _find(binary)
    if path:
        return path, None
    if not install:
        return None, f"{binary} not installed (Debian package {package}; installing is off: --no-install)"
    if package in _install_failures:
        return None, _install_failures[package]
    progress(f"  installing Debian package {package} (apt-get) ...")
    if not _apt_updated:
        _apt(["update", "-qq"])
        _apt_updated = True
    ok, output = _apt(["install", "-y", "-qq", "--no-install-recommends", package])
    path = _find(binary)
    if not ok or not path:
        _install_failures[package] = f"apt-get install {package} failed: {output.strip()[-200:]}"
        return None, _install_failures[package]
    return path, None


class NatsServer:
    """One nats-server on loopback; optionally a cluster member (routes) and a WebSocket listener."""

    def __init__(self, procs, binary, name="nats", cluster_port=None, routes=(), websocket=False):
        self.procs = procs
        self.name = name
        self.port = free_port()
        self.cluster_port = cluster_port
        self.ws_port = free_port() if websocket else None
        self.dir = os.path.join(procs.tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        lines = [f'listen: "{LOOPBACK}:{self.port}"', f'server_name: "{name}"',
                 "max_payload: 1048576", "max_connections: 65536"]
        if cluster_port:
            route_text = ", ".join(f'"nats-route://{LOOPBACK}:{p}"' for p in routes)
            lines.append(f'cluster {{ name: "bench", listen: "{LOOPBACK}:{cluster_port}", '
                         f"routes: [{route_text}] }}")
        if websocket:
            lines.append(f'websocket {{ listen: "{LOOPBACK}:{self.ws_port}", no_tls: true, compression: false }}')
        self.config = os.path.join(self.dir, "nats.conf")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log = open(os.path.join(self.dir, "nats.log"), "w")
        self.started = time.monotonic()
        self.proc = procs.popen([binary, "-c", self.config], f"nats-server {name}",
                                stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def wait_ready(self, timeout=10.0):
        if not wait_port(self.port, timeout, self.proc):
            raise RuntimeError(f"nats-server {self.name} did not listen on {self.port}: {self.log_tail()}")
        if self.ws_port and not wait_port(self.ws_port, timeout, self.proc):
            raise RuntimeError(f"nats-server {self.name} WebSocket did not listen: {self.log_tail()}")
        return self

    def log_text(self):
        try:
            with open(self.log.name) as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self):
        return self.log_text()[-1000:]

    @property
    def address(self):
        return f"{LOOPBACK}:{self.port}"

    def stop(self):
        self.procs.stop(self.proc)


def nats_cluster(procs, binary, size, websocket=False):
    """``size`` nats-servers routed to each other (a full mesh of routes, like our nodes)."""
    cluster_ports = [free_port() for _ in range(size)]
    servers = [NatsServer(procs, binary, name=f"nats{i + 1}", cluster_port=cluster_ports[i],
                          routes=[p for j, p in enumerate(cluster_ports) if j != i], websocket=websocket)
               for i in range(size)]
    for server in servers:
        server.wait_ready()
    return servers


def wait_nats_routes(servers, timeout=10.0):
    """Wait until every server logged a route to each of the others."""
    deadline = time.monotonic() + timeout
    want = len(servers) - 1
    while time.monotonic() < deadline:
        if all(s.log_text().count("Route connection created") >= want for s in servers):
            return True
        time.sleep(0.05)
    return False


class RedisServer:
    """One redis-server on loopback, no persistence.

    The pub/sub output buffer limit is lifted (``client-output-buffer-limit
    pubsub 0 0 0``): with the default (32 MB hard, 8 MB for 60 s) a subscriber
    that falls behind a 200k-message burst is disconnected, while the mesh and
    NATS buffer such a burst. We measure speed, not slow-consumer policy.
    """

    def __init__(self, procs, binary):
        self.procs = procs
        self.port = free_port()
        self.dir = os.path.join(procs.tmp, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.log = open(os.path.join(self.dir, "redis.log"), "w")
        self.proc = procs.popen([binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
                                 "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
                                 "--protected-mode", "no", "--client-output-buffer-limit", "pubsub 0 0 0"],
                                "redis-server", stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def wait_ready(self, timeout=10.0):
        if not wait_port(self.port, timeout, self.proc):
            with open(self.log.name) as f:
                raise RuntimeError(f"redis-server did not listen on {self.port}: {f.read()[-1000:]}")
        return self

    @property
    def address(self):
        return f"{LOOPBACK}:{self.port}"

    def stop(self):
        self.procs.stop(self.proc)


def version_of(argv, pattern=r"v?(\d+\.\d+\.\d+)"):
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(pattern, out)
    return match.group(1) if match else out.strip()[:60] or None
