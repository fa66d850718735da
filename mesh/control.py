"""Control-plane requests: the msgpack maps a node's ROUTER socket understands.

A request is one frame, a msgpack map ``{"v": 1, "cmd": NAME, "id": N, ...}``;
the reply echoes ``id`` with ``"ok": true`` and fields, or ``"ok": false`` with
``"error"`` (a code) and ``"message"``. :class:`ControlChannel` is the client
side used by the library, the CLI and peer nodes.
"""

import ipaddress
import itertools
import threading

import msgpack
import zmq

from .addresses import split_host_port, tcp_endpoint
from .curve import apply_client
from .liveness import CONNECT_TIMEOUT
from .concurrency import recv_multipart

CONTROL_VERSION = 1


class ControlError(RuntimeError):
    """A node answered a control request with an error."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code


def encode(fields):
    return msgpack.packb(fields)


def decode(frame):
    """Decode one control frame into a dict; raise ValueError if it is not one."""
    try:
        fields = msgpack.unpackb(frame, raw=False, strict_map_key=False)  # a message's data may have any keys
    except Exception as exc:
        raise ValueError(f"not msgpack: {exc}") from None
    if not isinstance(fields, dict):
        raise ValueError("not a msgpack map")
    if not all(isinstance(key, str) for key in fields):
        raise ValueError("map keys must be strings")
    return fields


def is_loopback(host):
    """True for a host name or address that is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_address(address):
    """``HOST:PORT`` (``[IPV6]:PORT``) or ``tcp://HOST:PORT`` -> ``tcp://HOST:PORT``."""
    if "://" in address:
        return address
    return tcp_endpoint(*split_host_port(address))


def outcome(reply):
    """A reply map's fields (without ``ok``/``id``), or its error raised as ControlError."""
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "error"), reply.get("message", ""))
    reply.pop("ok", None)
    reply.pop("id", None)
    return reply


class ControlChannel:
    """A DEALER connection to one node's control socket; thread-safe."""

    def __init__(self, context, address, wait, timeout=5.0, curve=None, heartbeat=None):
        """``heartbeat``: (interval, timeout) seconds of ZMTP pings, so that a
        node that froze drops the connection (mesh/watch.py)."""
        self.address = normalize_address(address)
        self.timeout = timeout
        self._wait = wait
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._sock = context.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 250)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        self._sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT)  # not the kernel's SYN back-off (mesh/liveness.py)
        if heartbeat is not None:
            self._sock.setsockopt(zmq.HEARTBEAT_IVL, int(heartbeat[0] * 1000))
            self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(heartbeat[1] * 1000))
        apply_client(curve, self._sock)
        self._sock.connect(self.address)

    def monitor(self, events):
        """A socket that receives this connection's ZeroMQ ``events``."""
        return self._sock.get_monitor_socket(events)

    def request(self, cmd, timeout=None, **fields):
        """Send one command and return the reply map (without ``ok``/``id``)."""
        timeout = self.timeout if timeout is None else timeout
        with self._lock:
            req_id = self._send(cmd, fields)
            while True:
                try:
                    frames = recv_multipart(self._sock, self._wait, timeout)
                except TimeoutError:
                    raise TimeoutError(
                        f"node at {self.address} did not answer {cmd!r} within {timeout} s") from None
                try:
                    reply = decode(frames[-1])
                except ValueError:
                    continue
                if reply.get("id") == req_id:
                    break
        return outcome(reply)

    def _send(self, cmd, fields):
        req_id = next(self._ids)
        try:
            self._sock.send(encode({"v": CONTROL_VERSION, "cmd": cmd, "id": req_id, **fields}), zmq.NOBLOCK)
        except zmq.Again:
            raise TimeoutError(f"node at {self.address} is not accepting requests") from None
        return req_id

    def send(self, cmd, **fields):
        """Send one command without waiting for its reply; returns its ``id``
        (the replies come from :meth:`replies`). TimeoutError when the
        connection holds too many unsent requests already."""
        with self._lock:
            return self._send(cmd, fields)

    def replies(self):
        """The reply maps that have arrived, without waiting."""
        found = []
        with self._lock:
            while True:
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return found
                try:
                    found.append(decode(frames[-1]))
                except ValueError:
                    continue

    def close(self):
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._sock.close(linger=0)
