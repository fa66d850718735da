"""Many WebSocket clients in one process: ``python -m bench.wsclient CONFIG_JSON``.

Holds N subscribe-only WebSocket connections with plain non-blocking sockets
and one epoll loop (no greenlet or parser per client), so that the client
side costs as little as possible on a 2-core machine and the latency measured
is mostly the server's. The time of arrival is taken once when epoll returns,
before the sockets are read; frames are parsed only after the run.

Two server kinds:

* ``mesh``: a meshnode edge, ``GET /ws/<pattern>``; each message is a JSON
  text frame ``{"op": "msg", ..., "data": {"t": ..., ...}}``.
* ``nats``: nats-server's WebSocket listener; the client sends ``CONNECT``,
  ``SUB`` and ``PING`` in a masked frame and waits for ``PONG``; messages come
  as ``MSG <subject> <sid> <size>`` plus the JSON payload.

Protocol: prints ``ready {"connected": N, "failed": F}`` once every client is
connected (and, for NATS, subscribed); then reads until it gets ``stop`` on
stdin (or, with ``quiet`` in the config, until nothing came for that many
seconds after something did) and prints one JSON result with every
delivery's latency summary and the first and last arrival (monotonic).
"""

import base64
import json
import os
import select
import socket
import struct
import sys
import time

from .procs import raise_nofile_limit
from .workers import latency_summary

BATCH = 200


def handshake(host, port, path):
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def upgrade(host, port, path, rcvbuf=None):
    """A blocking socket upgraded to a WebSocket at ``path``: (socket, bytes read past the handshake)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect((host, int(port)))
    sock.sendall(handshake(host, port, path))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"{path}: closed during the upgrade")
        head += chunk
    status, rest = head.split(b"\r\n\r\n", 1)
    if not status.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"{path}: upgrade refused: {status[:80]!r}")
    return sock, rest


def masked_frame(payload, opcode=0x1):
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def parse_frames(buf):
    """Complete server frames in ``buf``: ([(end_offset, opcode, payload)], consumed)."""
    frames, pos, n = [], 0, len(buf)
    while n - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        length, head = b1 & 0x7F, 2
        if length == 126:
            if n - pos < 4:
                break
            length, head = struct.unpack_from(">H", buf, pos + 2)[0], 4
        elif length == 127:
            if n - pos < 10:
                break
            length, head = struct.unpack_from(">Q", buf, pos + 2)[0], 10
        if b1 & 0x80:
            head += 4  # servers do not mask, but be safe
        if n - pos < head + length:
            break
        frames.append((pos + head + length, b0 & 0x0F, bytes(buf[pos + head:pos + head + length])))
        pos += head + length
    return frames, pos


class Conn:
    __slots__ = ("sock", "fd", "buf", "chunks", "state")

    def __init__(self, sock):
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = b""
        self.chunks = []  # (arrival time, bytes) after the handshake
        self.state = "handshake"

    def read(self, size):
        """What the socket has (b"" at its end or on an error); None when nothing is waiting."""
        try:
            return self.sock.recv(size)
        except BlockingIOError:
            return None
        except OSError:
            return b""


def connect_all(cfg):
    host, port, path, kind = cfg["host"], cfg["port"], cfg["path"], cfg["kind"]
    count = cfg["count"]
    conns, failed = [], 0
    nats_hello = masked_frame(b'CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\nSUB '
                              + cfg["subject"].encode() + b" 1\r\nPING\r\n", opcode=0x2)
    ep = select.epoll()
    for start in range(0, count, BATCH):
        batch = []
        for _ in range(min(BATCH, count - start)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.connect((host, port))
            except OSError:
                sock.close()
                failed += 1
                continue
            sock.setblocking(False)
            sock.send(handshake(host, port, path))
            conn = Conn(sock)
            batch.append(conn)
            ep.register(conn.fd, select.EPOLLIN)
        by_fd = {c.fd: c for c in batch}
        pending = set(by_fd)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for fd, _ in ep.poll(1.0):
                conn = by_fd[fd]
                data = conn.read(65536)
                if data is None:
                    continue
                if not data:
                    conn.state = "dead"
                    pending.discard(fd)
                    continue
                conn.buf += data
                if conn.state == "handshake" and b"\r\n\r\n" in conn.buf:
                    head, conn.buf = conn.buf.split(b"\r\n\r\n", 1)
                    if not head.startswith(b"HTTP/1.1 101"):
                        conn.state = "dead"
                        pending.discard(fd)
                        continue
                    if kind == "nats":
                        conn.state = "subscribing"
                        conn.sock.send(nats_hello)
                    else:
                        conn.state = "open"
                        pending.discard(fd)
                if conn.state == "subscribing":
                    frames, used = parse_frames(conn.buf)
                    if any(b"PONG" in payload for _, _, payload in frames):
                        conn.buf = conn.buf[used:]
                        conn.state = "open"
                        pending.discard(fd)
        for conn in batch:
            if conn.state == "open":
                conns.append(conn)
            else:
                failed += 1
                ep.unregister(conn.fd)
                conn.sock.close()
    return ep, conns, failed


def listen(ep, conns, quiet=None):
    """Read until ``stop`` arrives on stdin, or ``quiet`` seconds pass with nothing
    after something came; arrival time per epoll wake-up. Returns (first, last) arrival."""
    by_fd = {c.fd: c for c in conns}
    stdin = sys.stdin.fileno()
    ep.register(stdin, select.EPOLLIN)
    monotonic = time.monotonic
    maxevents = len(conns) + 1
    first = last = None
    while True:
        events = ep.poll(1.0 if quiet is None else min(1.0, quiet), maxevents)
        now = monotonic()
        if events:
            first, last = first or now, now
        elif quiet is not None and last is not None and now - last > quiet:
            return first, last
        for fd, _ in events:
            if fd == stdin:
                return first, last
            conn = by_fd[fd]
            while True:
                data = conn.read(262144)
                if data is None:
                    break
                if not data:
                    ep.unregister(fd)
                    break
                conn.chunks.append((now, data))
                if len(data) < 262144:
                    break


def latencies(conns, kind):
    """Per delivery: arrival of the chunk that completed its frame minus the publish time."""
    out, bad = [], 0
    for conn in conns:
        buf = conn.buf
        for arrival, data in conn.chunks:
            buf += data
            frames, used = parse_frames(buf)
            for _, opcode, payload in frames:
                if kind == "mesh":
                    if opcode != 0x1:
                        continue
                    try:
                        frame = json.loads(payload)
                    except ValueError:
                        bad += 1
                        continue
                    if frame.get("op") == "msg":
                        out.append(arrival - frame["data"]["t"])
                else:
                    pos = 0
                    while True:
                        pos = payload.find(b"MSG ", pos)
                        if pos < 0:
                            break
                        line_end = payload.index(b"\r\n", pos)
                        size = int(payload[pos:line_end].split()[-1])
                        body = payload[line_end + 2:line_end + 2 + size]
                        out.append(arrival - json.loads(body)["t"])
                        pos = line_end + 2 + size
            buf = buf[used:]
    return out, bad


def main():
    cfg = json.loads(sys.argv[1])
    raise_nofile_limit()
    ep, conns, failed = connect_all(cfg)
    print("ready " + json.dumps({"connected": len(conns), "failed": failed}), flush=True)
    first, last = listen(ep, conns, cfg.get("quiet"))
    values, bad = latencies(conns, cfg["kind"])
    summary = latency_summary(values)
    print(json.dumps({"connected": len(conns), "failed": failed, "deliveries": len(values),
                      "malformed": bad, "latency_ms": summary, "first_arrival": first,
                      "last_arrival": last}), flush=True)
    for conn in conns:
        conn.sock.close()


if __name__ == "__main__":
    main()
