"""Peers written by hand over plain TCP, for tests that must send what no library would.

ZMTP 3.0 (RFC 23) greetings, frames and a NULL handshake as any socket type; WebSocket
(RFC 6455) frames with any flags, mask and declared length, and a client that reads
the server's frames; HTTP payloads each on its own connection. A libzmq socket in the
test process would hold the same state as the node it attacks and could crash with it.
"""

import base64
import os
import socket
import struct
import time


def zmtp_greeting(mechanism=b"NULL", major=3, minor=0):
    return (b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([major, minor]) + mechanism.ljust(20, b"\x00")
            + b"\x00" + b"\x00" * 31)


def zmtp_frame(body, more=False, command=False, declared=None):
    """One ZMTP 3.0 frame; ``declared`` lies about the size (the body is sent as given)."""
    flags = (1 if more else 0) | (4 if command else 0)
    size = len(body) if declared is None else declared
    if size > 255:
        return bytes([flags | 2]) + struct.pack(">Q", size) + body
    return bytes([flags, size]) + body


def zmtp_ready(socket_type):
    prop = bytes([11]) + b"Socket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return zmtp_frame(b"\x05READY" + prop, command=True)


def endpoint_host_port(endpoint):
    host, port = endpoint.replace("tcp://", "").rsplit(":", 1)
    return host, int(port)


def zmtp_connect(endpoint, socket_type=b"SUB", timeout=5, minor=0):
    """A TCP connection that has done the NULL handshake as ``socket_type``
    (ZMTP 3.``minor``: 3.1 has heartbeats)."""
    return zmtp_handshake(socket.create_connection(endpoint_host_port(endpoint), timeout=timeout),
                          socket_type, minor)


def zmtp_handshake(sock, socket_type, minor=0):
    """Greet and do the NULL handshake as ``socket_type`` over a connected TCP socket."""
    sock.sendall(zmtp_greeting(minor=minor))
    greeting = b""
    while len(greeting) < 64:
        chunk = sock.recv(64 - len(greeting))
        if not chunk:
            raise EOFError(f"{sock.getpeername()} closed during the greeting")
        greeting += chunk
    assert greeting[0] == 0xFF and greeting[10] == 3, greeting
    sock.sendall(zmtp_ready(socket_type))
    return sock


def closed_by_peer(sock, timeout):
    """True if the other side closed (EOF or reset) within ``timeout`` s; reads and discards."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except OSError:  # reset
            return True


def node_address(address):
    return address if "://" in address else f"tcp://{address}"


def exchange_all(address, payloads, wait=3.0):
    """Send every payload on its own connection at once; after ``wait`` s, what each got back."""
    host, port = address.rsplit(":", 1)
    socks = {}
    for name, data in payloads.items():
        sock = socket.create_connection((host, int(port)), timeout=5)
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server closed on us mid-send (a huge header): its answer may still be readable
        socks[name] = sock
    time.sleep(wait)
    replies = {}
    for name, sock in socks.items():
        out = b""
        sock.settimeout(0.05)
        while True:
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, OSError):
                break
            if not chunk:
                break
            out += chunk
        sock.close()
        replies[name] = out
    return replies


def ws_upgrade(address, path="/ws", key=None, version="13", extra="", method="GET"):
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    return (f"{method} {path} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n").encode()


def ws_frame(opcode, payload, fin=True, mask=True, rsv=0, declared=None):
    """A client frame; ``declared`` lies about the length."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload) if declared is None else declared
    mask_bit = 0x80 if mask else 0
    if size < 126:
        head = bytes([first, mask_bit | size])
    elif size < 65536:
        head = bytes([first, mask_bit | 126]) + struct.pack(">H", size)
    else:
        head = bytes([first, mask_bit | 127]) + struct.pack(">Q", size)
    if mask:
        key = os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


class RawWebSocket:
    def __init__(self, address, path="/ws"):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.sock.sendall(ws_upgrade(address, path))
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk, "closed during the handshake"
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _need(self, count, deadline):
        while len(self.buffer) < count:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError from None
            except OSError:
                chunk = b""
            if not chunk:
                raise EOFError
            self.buffer += chunk

    def frame(self, timeout=5):
        """The next server frame (opcode, payload); EOFError at end of stream, TimeoutError."""
        deadline = time.monotonic() + timeout
        self._need(2, deadline)
        first, second = self.buffer[0], self.buffer[1]
        assert second & 0x80 == 0, "server frames must not be masked"
        size, offset = second & 0x7F, 2
        if size == 126:
            self._need(4, deadline)
            size, offset = struct.unpack(">H", self.buffer[2:4])[0], 4
        elif size == 127:
            self._need(10, deadline)
            size, offset = struct.unpack(">Q", self.buffer[2:10])[0], 10
        self._need(offset + size, deadline)
        payload = self.buffer[offset:offset + size]
        self.buffer = self.buffer[offset + size:]
        return first & 0x0F, payload

    def close_code(self, timeout=5):
        """Read until a close frame: its code, or None if the stream just ended."""
        frames = []
        while True:
            try:
                opcode, payload = self.frame(timeout)
            except EOFError:
                return None, frames
            if opcode == 8:
                return (struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None), frames
            frames.append((opcode, payload))

    def close(self):
        self.sock.close()
