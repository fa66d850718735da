"""Scenario 10: revoking a token subject across a mesh.

Three edge nodes with JWT auth, linked; N WebSocket connections spread over
them, all holding tokens of one ``sub``. One ``revoke`` control request to
the first node; reported: the time from sending it to its reply (applied
here, relayed to both peers), and to the last connection's close frame as
its client sees it.
"""

import select
import time

from .base import Column, Scenario, measure
from .scenarios import BENCH_SECRET
from .wsclient import parse_frames, upgrade


def revocation(bench, rows):
    count = max(30, bench.args.ws_clients[0] if bench.args.ws_clients else 30)
    label = f"revoke one sub held by {count:,} WebSocket connections over 3 nodes"
    bench.say(f"[10 revocation] {label}")
    measure(bench, rows, "revoke-3-nodes", label, lambda: _revoke(bench, count),
            lambda r: f"reply after {r['reply_ms']:.0f} ms; all {r['closed']:,} closed after {r['last_close_ms']:.0f} ms")
    return rows


def _revoke(bench, count):
    import jwt
    import zmq

    from mesh.control import ControlChannel
    from mesh.concurrency import pick_waiter

    nodes = bench.procs.linked_nodes(("rv-a", "rv-b", "rv-c"), "--http", "0", "--auth-secret", BENCH_SECRET,
                                     "--max-connections", str(count + 100))
    try:
        token = jwt.encode({"exp": time.time() + 3600, "sub": "revoked-user", "subscribe": [">"]}, BENCH_SECRET,
                           algorithm="HS256")
        socks = []
        for i in range(count):
            host, port = nodes[i % 3].fields["http"].rsplit(":", 1)
            socks.append(upgrade(host, port, f"/ws/rv.x?token={token}")[0])
        poller = select.epoll()
        buffers = {}
        for sock in socks:
            sock.setblocking(False)
            poller.register(sock.fileno(), select.EPOLLIN)
            buffers[sock.fileno()] = b""
        channel = ControlChannel(zmq.Context.instance(), nodes[0].address, pick_waiter(), timeout=10)
        started = time.monotonic()
        reply = channel.request("revoke", sub="revoked-user", seconds=60)
        reply_s = time.monotonic() - started
        channel.close()
        by_fd = {sock.fileno(): sock for sock in socks}
        open_fds = set(by_fd)
        last = None
        while open_fds and time.monotonic() - started < 30:
            for fd, _ in poller.poll(1.0):
                try:
                    chunk = by_fd[fd].recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                buffers[fd] += chunk
                frames, _ = parse_frames(buffers[fd])
                if not chunk or any(opcode == 8 for _, opcode, _ in frames):
                    open_fds.discard(fd)
                    poller.unregister(fd)
                    last = time.monotonic() - started
        for sock in socks:
            sock.close()
        if open_fds:
            raise RuntimeError(f"{len(open_fds)} connections still open 30 s after the revocation")
        return {"connections": count, "peers": reply["peers"], "reply_ms": reply_s * 1000,
                "closed": count, "last_close_ms": last * 1000}
    finally:
        for node in nodes:
            bench.procs.stop_node(node)


SCENARIOS = [Scenario("revocation", "10", "Revoking a token subject across 3 nodes", revocation, [
    Column("peers confirmed", lambda r: ", ".join(f"{k}: {v}" for k, v in r["peers"].items())),
    Column("revoke answered", lambda r: f"{r['reply_ms']:.0f} ms"),
    Column("last connection closed", lambda r: f"{r['last_close_ms']:.0f} ms")])]
