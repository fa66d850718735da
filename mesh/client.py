"""The Python client: publish and subscribe through one meshnode.

``Client("HOST:PORT")`` asks the node's control socket where its data sockets
are, then publishes through an XPUB socket connected to the node's ``ingress``
and subscribes with one SUB socket per :class:`Subscription`, connected to the
node's ``out`` (local publishers) and ``remote`` (publishers on peers).
Reading and decoding happen on the caller's own thread or greenlet.
"""

import collections
import functools
import logging
import os
import socket
import threading
import time
import uuid
import weakref

import zmq

from .control import ControlChannel
from .curve import apply_client
from .envelope import PROTOCOL_VERSION, EnvelopeEncoder, MalformedMessage, decode
from .subjects import Pattern, subject_from_topic, validate_subject
from .waiting import pick_waiter, recv_multipart, running_under_gevent

log = logging.getLogger("mesh.client")

DEFAULT_HWM = 100_000
_INTEREST_DRAIN_EVERY = 1024
_CLOSE_CHECK_SECONDS = 0.1
_READ_AHEAD = 256  # messages decoded per socket visit when a burst is waiting
MARK_SECONDS = 1.0  # how often a publisher announces its last sequence numbers (if it published)


class Client:
    """A connection to one node. ``publish`` is thread-safe; each Subscription
    belongs to the thread (or greenlet) that reads it."""

    def __init__(self, address, *, name=None, timeout=5.0, hwm=DEFAULT_HWM, curve=None):
        self._context = zmq.Context.instance()
        self._wait = pick_waiter()
        self._hwm = hwm
        self._timeout = timeout
        self._curve = curve  # mesh.CurveKeys when the mesh uses CurveZMQ
        self._control, info = self._hello(address)
        self._adopt(info)
        self.origin = name or f"{self.node}/{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self._encoder = EnvelopeEncoder(self.origin, self.max_payload)
        self._streams = {}  # subject -> [topic frame, last sequence number]
        self._interest = set()  # topic prefixes some subscriber in the mesh wants
        self._publishes = 0
        self._lock = threading.Lock()
        self._subscriptions = set()
        self._pub = self._publish_socket()
        self._unmarked = set()  # subjects published since the last sequence marks
        self._failover = None
        self.failovers = 0
        self.closed = False
        _start_background(functools.partial(_mark_when_idle, weakref.ref(self)), f"mesh-marks-{self.origin}")

    @classmethod
    def from_zookeeper(cls, hosts, mesh="default", *, zk_auth=None, zk_timeout=10.0, on_failover=None,
                       **options):
        """A Client on a random node of ``mesh``, found through ZooKeeper.

        When that node leaves the mesh (its znode goes: at once on a clean stop,
        after its session timeout on a crash) the client moves to another node,
        re-creates its subscriptions there and calls ``on_failover(old, new)``.
        Messages missed meanwhile show up in each ``Subscription.gaps``.
        """
        from .failover import ZooKeeperFailover

        return ZooKeeperFailover.connect(cls, hosts, mesh, zk_auth, zk_timeout, on_failover, options)

    def _hello(self, address):
        control = ControlChannel(self._context, address, self._wait, self._timeout, self._curve)
        try:
            info = control.request("hello")
            if info.get("protocol") != PROTOCOL_VERSION:
                raise RuntimeError(f"node at {address} speaks data protocol {info.get('protocol')!r}, "
                                   f"this library {PROTOCOL_VERSION}")
        except BaseException:
            control.close()
            raise
        return control, info

    def _adopt(self, info):
        self.node = info["name"]
        self.endpoints = info["endpoints"]
        self.max_payload = info["max_payload"]

    def _publish_socket(self):
        sock = self._context.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, self._hwm)
        sock.setsockopt(zmq.LINGER, 2000)
        apply_client(self._curve, sock)
        sock.connect(self.endpoints["ingress"])
        return sock

    def _subscribe_socket(self, prefix):
        sock = self._context.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, self._hwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, prefix)
        apply_client(self._curve, sock)
        sock.connect(self.endpoints["out"])
        sock.connect(self.endpoints["remote"])
        return sock

    def _move_to(self, address):
        """Switch to the node at ``address``: publisher, subscriptions, control."""
        control, info = self._hello(address)
        with self._lock:
            old_control, old_pub = self._control, self._pub
            self._control = control
            self._adopt(info)
            self._encoder.max_payload = self.max_payload
            self._pub = self._publish_socket()
            self._interest.clear()
            old_pub.close(linger=0)
            old_control.close()
        for sub in list(self._subscriptions):
            sub._reconnect()

    # -- publishing -------------------------------------------------------

    def publish(self, subject, data):
        """Publish ``data`` (anything msgpack can carry) on a concrete subject.

        Raises ValueError for an invalid subject, PayloadTooLarge (a ValueError)
        over the node's limit, TypeError for data msgpack cannot encode.
        Returns the message's sequence number on this subject.
        """
        with self._lock:
            if self.closed:
                raise RuntimeError("client is closed")
            stream = self._streams.get(subject)
            if stream is None:
                stream = [validate_subject(subject), 0]
                self._streams[subject] = stream
            seq = stream[1] + 1
            raw = self._encoder.encode(seq, data)
            stream[1] = seq
            self._pub.send(stream[0], zmq.SNDMORE)
            self._pub.send(raw)
            self._unmarked.add(subject)
            self._publishes += 1
            if self._publishes % _INTEREST_DRAIN_EVERY == 0:
                self._drain_interest()
            return seq

    def _send_marks(self):
        """Announce the last sequence number of every subject published since
        the last marks (lock held). Subscribers count what they never got."""
        for subject in self._unmarked:
            topic, seq = self._streams[subject]
            self._pub.send(topic, zmq.SNDMORE)
            self._pub.send(self._encoder.encode_mark(seq))
        self._unmarked.clear()

    def _drain_interest(self):
        """Read subscription notices the node forwarded to us (lock held)."""
        while True:
            try:
                notice = self._pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if notice[:1] == b"\x01":
                self._interest.add(notice[1:])
            elif notice[:1] == b"\x00":
                self._interest.discard(notice[1:])

    def has_interest(self, subject):
        """True if some subscriber in the mesh currently covers ``subject``."""
        topic = validate_subject(subject)
        with self._lock:
            self._drain_interest()
            return any(topic.startswith(prefix) for prefix in self._interest)

    def wait_for_interest(self, subject, timeout=5.0):
        """Wait until a subscriber somewhere in the mesh covers ``subject``.

        Subscriptions travel to publishers asynchronously (the ZeroMQ
        "slow joiner"); messages published before they arrive are not
        delivered. Returns True once interest is seen, False on timeout.
        """
        deadline = time.monotonic() + timeout
        while not self.has_interest(subject):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    # -- subscribing ------------------------------------------------------

    def subscribe(self, pattern, callback=None):
        """Subscribe to a pattern (``*`` one token, ``>`` the rest).

        Without ``callback``, returns a Subscription to read with ``get()`` or
        iteration. With ``callback``, a reader thread (a greenlet under gevent)
        calls ``callback(message)`` for each message.
        """
        if self.closed:
            raise RuntimeError("client is closed")
        sub = Subscription(self, Pattern(pattern))
        self._subscriptions.add(sub)
        if callback is not None:
            sub._start_callback(callback)
        return sub

    def stats(self):
        """The node's counters (see docs/PROTOCOL.md, command ``stats``)."""
        return self._control.request("stats")

    def close(self):
        """Unsubscribe everything and close the connection."""
        if self.closed:
            return
        for sub in list(self._subscriptions):
            sub.unsubscribe()
        if self._failover is not None:
            self._failover.close()
        with self._lock:
            self._send_marks()  # the end of the last burst counts too (LINGER delivers them)
            self.closed = True
            self._pub.close()
        self._control.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Subscription:
    """Messages matching one pattern, read with ``get()`` or by iterating.

    Counters: ``received`` (delivered to you), ``gaps`` (messages known to be
    missing: sequence numbers skipped by a publisher on a subject), ``malformed``
    (frames dropped because they did not follow docs/PROTOCOL.md).
    """

    def __init__(self, client, pattern):
        self.pattern = pattern
        self.received = 0
        self.gaps = 0
        self.malformed = 0
        self._client = client
        self._wait = client._wait
        self._last_seq = {}  # (origin, subject) -> last sequence number seen
        self._ready = collections.deque()  # decoded messages read ahead, in order
        self._closing = False
        self._moved = False  # the client moved to another node: reconnect before reading
        self._reading = False
        self._state_lock = threading.Lock()
        self._reader = None
        self._sock = client._subscribe_socket(pattern.prefix)

    @property
    def closed(self):
        return self._closing

    def get(self, timeout=None):
        """The next message; raises TimeoutError if none came within ``timeout``
        seconds, RuntimeError if the subscription is closed."""
        if self._ready and not self._closing:
            self.received += 1
            return self._ready.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state_lock:
            if self._closing:
                raise RuntimeError("subscription is closed")
            self._reading = True
        try:
            while True:
                if self._moved:
                    self._replace_socket()
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                slice_ = _CLOSE_CHECK_SECONDS if remaining is None else min(remaining, _CLOSE_CHECK_SECONDS)
                try:
                    frames = recv_multipart(self._sock, self._wait, slice_)
                except TimeoutError:
                    if self._closing:
                        raise RuntimeError("subscription is closed") from None
                    if remaining is not None and remaining <= _CLOSE_CHECK_SECONDS:
                        raise TimeoutError(f"no message on {self.pattern.text!r} within {timeout} s") from None
                    continue
                message = self._accept(frames)
                if message is not None:
                    self._read_ahead()
                    self.received += 1
                    return message
        finally:
            with self._state_lock:
                self._reading = False
                if self._closing:
                    self._sock.close()

    def _read_ahead(self):
        """Decode what has already arrived (up to a batch) so the next calls of
        ``get`` return without touching the socket, a lock or the clock."""
        sock, ready = self._sock, self._ready
        for _ in range(_READ_AHEAD):
            # Zero-copy frames tell whether more follow without a getsockopt per
            # frame: 1.3 us per message here against 2.0 for recv_multipart.
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            frames = [frame.bytes]
            while frame.more:  # the rest of a multipart message is already here
                frame = sock.recv(zmq.NOBLOCK, copy=False)
                frames.append(frame)  # the envelope is decoded from the frame's buffer
            message = self._accept(frames)
            if message is not None:
                ready.append(message)

    def _accept(self, frames):
        """Decode, filter and sequence-check one wire message; None to skip it."""
        try:
            if len(frames) != 2:
                raise MalformedMessage(f"{len(frames)} frames, expected 2")
            subject = subject_from_topic(frames[0])
            if not self.pattern.matches(subject):
                return None
            message = decode(subject, frames[1])
        except (MalformedMessage, ValueError):
            self.malformed += 1
            return None
        key = (message.origin, subject)
        last = self._last_seq.get(key)
        if message.is_mark:  # everything up to seq was published: count what never came
            if last is not None and message.seq > last:
                self.gaps += message.seq - last
                self._last_seq[key] = message.seq
            return None
        if last is not None and message.seq > last + 1:
            self.gaps += message.seq - last - 1
        if last is None or message.seq > last:
            self._last_seq[key] = message.seq
        return message

    def __iter__(self):
        while True:
            try:
                yield self.get()
            except RuntimeError:
                if self._closing:
                    return
                raise

    def _reconnect(self):
        """The client moved nodes; the reader (or we, if none) re-creates the socket."""
        with self._state_lock:
            self._moved = True
            if not self._reading and not self._closing:
                self._replace_socket()

    def _replace_socket(self):
        self._moved = False
        self._sock.close()
        self._sock = self._client._subscribe_socket(self.pattern.prefix)

    def unsubscribe(self):
        """Stop receiving. Safe to call from another thread than the reader."""
        with self._state_lock:
            if self._closing:
                return
            self._closing = True
            if not self._reading:
                self._sock.close()
        self._client._subscriptions.discard(self)

    def _start_callback(self, callback):
        def run():
            for message in self:
                try:
                    callback(message)
                except Exception:
                    log.exception("subscription callback for %r failed", self.pattern.text)

        self._reader = _start_background(run, f"mesh-sub-{self.pattern.text}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.unsubscribe()


def _start_background(work, name):
    """Run ``work`` beside the program: a greenlet under gevent, else a daemon thread."""
    if running_under_gevent():
        import gevent

        return gevent.spawn(work)
    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    return thread


def _mark_when_idle(client_ref):
    """Every MARK_SECONDS, send sequence marks for what a client published since
    the last ones; ends when the client is closed or collected."""
    while True:
        time.sleep(MARK_SECONDS)
        client = client_ref()
        if client is None or client.closed:
            return
        with client._lock:
            if client._unmarked and not client.closed:
                client._send_marks()
        del client
