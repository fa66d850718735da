"""``meshnode demo``: a local mesh of real node processes with messages flowing.

Starts N ``meshnode run`` processes on loopback (each names the first as its
peer; the last also serves HTTP, the built-in page), subscribes to ``demo.>``
at every node but the first, publishes ``demo.tick`` at the first twice a
second and prints each delivery with its one-way latency. Every process it
started is stopped by PID on the way out.
"""

import os
import signal
import subprocess
import sys
import time

from .common import positive_int

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BIN = os.path.join(_ROOT, "bin", "meshnode")


def _start_node(name, port, peers, http=None):
    cmd = [sys.executable, _BIN, "run", "--name", name, "--port", str(port), "--log-level", "WARNING"]
    for peer in peers:
        cmd += ["--peer", peer]
    if http is not None:
        cmd += ["--http", str(http)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("meshnode ready"):
        proc.kill()
        raise RuntimeError(f"node {name} did not start (port {port} taken?): {line.strip()!r}")
    print(f"  {line.strip()}", flush=True)
    return proc, dict(part.split("=", 1) for part in line.split()[2:])


def run_demo(count, base_port, seconds, http_port):
    import gevent
    import gevent.event

    from mesh import Client

    procs, clients, status = [], [], 0
    first = f"127.0.0.1:{base_port}"
    try:
        print(f"Starting {count} nodes on loopback:", flush=True)
        for i in range(count):
            proc, fields = _start_node(f"node-{i + 1}", base_port + i, [first] if i else [],
                                       http_port if i == count - 1 else None)
            procs.append(proc)
        print(f"Open http://{fields['http']}/ in a browser: subscribe to demo.> and publish from the page.",
              flush=True)
        ready = set()  # subscribers that got the probe: their subscription has reached node-1

        def show(message, who):
            if message.subject == "demo.ready":
                ready.add(who)
                return
            print(f"  {who} received {message.subject} #{message.seq} {message.data} from "
                  f"{message.origin.split('/')[0]} ({(time.time() - message.ts) * 1000:.2f} ms)", flush=True)

        for i in range(1, count):
            client = Client(f"127.0.0.1:{base_port + i}")
            clients.append(client)
            client.subscribe("demo.>", callback=lambda m, who=client.node: show(m, who))
        publisher = Client(first)
        clients.append(publisher)
        print("Waiting for subscriptions to reach node-1 ...", flush=True)
        deadline = time.monotonic() + 10
        while len(ready) < count - 1:  # one subscriber's interest is not every subscriber's: probe each
            if time.monotonic() > deadline:
                raise RuntimeError("subscriptions did not propagate within 10 s")
            publisher.publish("demo.ready", None)
            gevent.sleep(0.05)
        print(f"Publishing demo.tick at node-1 every 0.5 s{'' if seconds else ' (Ctrl-C to stop)'}:",
              flush=True)
        stop = gevent.event.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            gevent.signal_handler(signum, stop.set)
        deadline = None if seconds is None else time.monotonic() + seconds
        n = 0
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            n += 1
            publisher.publish("demo.tick", {"n": n})
            stop.wait(0.5)
        gevent.sleep(0.3)
    finally:
        for client in clients:
            client.close()
        for proc in procs:
            os.kill(proc.pid, signal.SIGTERM)
        for i, proc in enumerate(procs):
            try:
                code = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if code != 0:
                print(f"node-{i + 1} exited with status {code}", file=sys.stderr, flush=True)
                status = 1
        print("Demo stopped; all nodes shut down.", flush=True)
    return status


def demo_parser(commands):
    """The ``demo`` sub-command."""
    demo = commands.add_parser("demo", help="start a local mesh and show messages flowing", description=(
        "Start a local mesh of nodes on loopback, subscribe at every node but the first, publish "
        "at the first and print what arrives. Stops on Ctrl-C or after --seconds."))
    demo.add_argument("--nodes", type=positive_int, default=3)
    demo.add_argument("--base-port", type=int, default=7401, help="control port of the first node")
    demo.add_argument("--seconds", type=float, help="stop after this long (default: run until Ctrl-C)")
    demo.add_argument("--http", type=int, default=8400, metavar="PORT",
                      help="HTTP port of the last node, which serves the built-in page (default: 8400; 0 picks one)")


def cmd_demo(args):
    return run_demo(args.nodes, args.base_port, args.seconds, args.http)


COMMANDS = {"demo": (demo_parser, cmd_demo)}
