"""The publishing side of a client: streams, batching, sequence marks, interest.

A *stream* is what one client publishes on one subject: its topic frame, an
epoch and the last sequence number. Consecutive publishes on one subject
travel as one batch (docs/PROTOCOL.md 4.2). The flush rule:

* publishes closer than ``IDLE_GAP`` to the one before are a *burst*; the
  first ``BURST_STREAK`` of a burst, and every publish outside one, go out at
  once, alone: a lone message, or one of a steady stream at any rate a program
  paces itself to, never waits for company;
* the next publish of a burst opens a batch, which the following ones join;
  it goes out when it holds ``BATCH_MAX_MESSAGES`` or ``BATCH_MAX_BYTES``,
  when a publish on another subject comes (order across subjects is kept),
  when a publish comes after a pause (it joins, and the burst is over), when
  a publish finds it ``BATCH_MAX_AGE`` old, on ``flush()`` and ``close()``,
  and otherwise from the housekeeper ``BATCH_MAX_AGE`` after it opened;
* the pause before a publish is counted from the end of the publish before
  it (after its sends), so that it is the caller's own pace: counted from
  its start, a send slower than ``IDLE_GAP`` (a busy machine) would make the
  next publish look like the end of a burst, so it would go out alone,
  slowly, and so would the next, and a tight loop would stay in sending
  every few messages alone.

The housekeeper is woken only when it would sleep past the deadline of a
newly opened batch, and it never waits for the publisher's lock (a publisher
holding it is publishing, and sends an aged batch itself): a tight loop
does not hand the interpreter to it once per batch.

Once a second, for every stream it remembers, the client sends *marks*
(each stream's epoch and last sequence number) so that loss at the end of a
burst is counted, even by a subscriber whose queue was full when the first
ones went by; marks for many subjects share one message per subscription
prefix that covers them (mesh/marks.py). A stream not published for
``stream_idle`` seconds (at most twice that) is forgotten; if its subject is
published again it starts over at sequence 1 in a new epoch. On close the
last marks go out once more and ``close`` returns them, for the node to
repeat (mesh/marks.py ``hand_over``).

While the node is unreachable (mesh/watch.py says so), publishes wait in a
backlog bounded in bytes, with their sequence numbers; once the client is
attached again and the subscriptions of their subjects have arrived (or a
grace period passed), they go out in order. A publish that does not fit
raises :class:`Disconnected`.
"""

import collections

import threading
import time
from time import monotonic as _monotonic

import zmq

from .envelope import RAW_BYTES_MIN
from .generations import Generations
from .marks import MARK_SECONDS, MARKS_MAX_BYTES, MarkSet
from .subjects import is_reader_prefix, validate_subject

IDLE_GAP = 0.00002  # publishes closer than this are a burst
BURST_STREAK = 2  # a batch opens on the third publish of a burst
BATCH_MAX_AGE = 0.0005
BATCH_MAX_MESSAGES = 1024
BATCH_MAX_BYTES = 256 * 1024
DEFAULT_STREAM_IDLE = 60.0
DEFAULT_BACKLOG_BYTES = 8 * 1024 * 1024
_INTEREST_DRAIN_EVERY = 64  # batches sent between reads of the interest notices


def read_interest(sock, interest, recorded=None):
    """Apply the subscription notices waiting on ``sock`` (an XPUB connected
    to a node's ``ingress``, docs/PROTOCOL.md 6) to the set of readers' prefixes
    ``interest``; other prefixes (a history recorder's) go to ``recorded``, or
    are ignored without it."""
    while True:
        try:
            notice = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        prefix = notice[1:]
        known = interest if is_reader_prefix(prefix) else recorded
        if known is None:
            continue
        if notice[:1] == b"\x01":
            known.add(prefix)
        elif notice[:1] == b"\x00":
            known.discard(prefix)


class Disconnected(RuntimeError):
    """A publish made while the node is unreachable, with the reconnect backlog full."""


class _Stream:
    __slots__ = ("topic", "epoch", "seq")

    def __init__(self, topic, epoch):
        self.topic = topic
        self.epoch = epoch
        self.seq = 0


class Publisher:
    """Thread-safe: ``publish`` may be called from any thread."""

    def __init__(self, sock, encoder, stream_idle, kick, maybe_yield, backlog_bytes=DEFAULT_BACKLOG_BYTES):
        self._sock = sock
        self._encoder = encoder
        self._kick = kick  # an Event that wakes the client's housekeeper
        self._yield = maybe_yield  # fair yielding under gevent, else None
        self._lock = threading.Lock()
        self._streams = Generations(stream_idle, 0.0)  # subject -> _Stream, forgotten when idle
        self._unmarked = set()  # subjects published since the last marks
        self._marks = MarkSet()  # every remembered stream's last (epoch, seq), repeated each round
        self._epoch = 0  # grows each time idle streams are forgotten
        self._interest = set()  # readers' subscription prefixes wanted somewhere in the mesh
        self._recorded = set()  # other prefixes: the node's history recorder's (PROTOCOL.md 6)
        self._batch = None  # [stream, first seq, ts, parts, bytes, deadline] of the open batch
        self._joining = None  # its subject while publishes may join it (its stream is in ``recent``)
        self._forked_to = None  # in a forked child: where every publish through this publisher goes
        self._deadline = 0.0  # its deadline (batch[5]), for the hot path
        self._pack = encoder.pack_unchecked
        self._batch_room = min(BATCH_MAX_BYTES, encoder.payload_room)  # payload bytes a batch may hold
        self._last_publish = float("-inf")
        self._streak = 0  # publishes in a row that came within IDLE_GAP of the one before
        self._house_due = float("inf")  # when the housekeeper looks next (inf: not before a kick)
        self._next_marks = 0.0
        self.published = 0
        self.batches = 0
        self.mark_messages = 0
        self.forgotten = 0
        self.closed = False
        self.connected = True
        self.backlog_limit = backlog_bytes
        self._backlog = None  # a deque of (stream, seq, packed, ts) while publishes must wait
        self._backlog_bytes = 0
        self.dropped_at_close = 0  # publishes still waiting for the node when the client closed

    # -- publishing -------------------------------------------------------

    def publish(self, subject, data, headers=None):
        """Publish ``data`` on ``subject``; returns its sequence number (mesh.Client.publish
        says what it raises). With ``headers``: :meth:`publish_with_headers`."""
        if headers is not None:
            return self.publish_with_headers(subject, data, headers)
        lock = self._lock
        lock.acquire()  # not ``with``: its __exit__ takes three arguments, release() none
        try:
            now = _monotonic()
            if subject == self._joining and now < self._deadline:
                # Joining the open batch: the hot path, kept short. Small payloads
                # are packed unchecked: one that fits the batch fits the size limit
                # (``_batch_room``); the checked ``pack`` says what is wrong.
                if type(data) is bytes and len(data) >= RAW_BYTES_MIN:
                    packed = self._encoder.pack(data)
                else:
                    try:
                        packed = self._pack(data)
                    except Exception:
                        packed = self._encoder.pack(data)  # raises the error to report
                batch = self._batch
                parts = batch[3]
                size = batch[4] + len(packed)
                if size <= self._batch_room and len(parts) <= BATCH_MAX_MESSAGES:
                    parts.append(packed)
                    batch[4] = size
                    stream = batch[0]
                    seq = stream.seq = stream.seq + 1
                    self.published += 1
                    if now - self._last_publish < IDLE_GAP:
                        self._last_publish = now
                    else:  # after a pause: nothing more will join
                        self._send_batch()
                        self._last_publish = _monotonic()
                    return seq
                if len(packed) > self._encoder.payload_room:
                    packed = None  # the long way packs it checked, and raises PayloadTooLarge
            else:
                packed = None
            seq = self._publish(subject, data, now, packed)
        finally:
            lock.release()
        if self._yield is not None:
            self._yield()
        return seq

    def _publish(self, subject, data, now, packed):
        """A publish that does not join the open batch (lock held): it sends
        the open batch, then goes out alone or opens a batch (the flush rule)."""
        if self._forked_to is not None:
            return self._forked_to(subject, data, None)
        if self.closed:
            raise RuntimeError("client is closed")
        stream = self._streams.recent.get(subject) or self._stream(subject, now)
        if packed is None:
            packed = self._encoder.pack(data)
        if self._backlog is not None:  # unreachable, or just back: keep order behind the backlog
            return self._hold(subject, stream, packed)
        gap = now - self._last_publish
        quick = gap < IDLE_GAP
        self._streak = self._streak + 1 if quick else 0
        if self._batch is not None:
            self._send_batch()
        seq = stream.seq = stream.seq + 1
        if self._streak < BURST_STREAK:
            self._send(stream, seq, time.time(), [None, packed])
        else:
            deadline = now + BATCH_MAX_AGE
            self._batch = [stream, seq, time.time(), [None, packed], len(packed), deadline]
            self._joining, self._deadline = subject, deadline
            if self._house_due > deadline:
                self._house_due = now
                self._kick.set()
        self._unmarked.add(subject)
        self.published += 1
        self._last_publish = _monotonic()  # after the sends: the next gap is the caller's own
        return seq

    def _stream(self, subject, now):
        """The stream of a subject not published on in this generation (lock held)."""
        streams = self._streams
        stream = streams.revive(subject)
        if stream is None:
            stream = _Stream(validate_subject(subject), self._epoch)
            if not streams:  # the first generation begins
                streams.rotate_at = now + streams.idle
                self._next_marks = now + MARK_SECONDS
                self._kick.set()
            streams.recent[subject] = stream
        return stream

    def publish_with_headers(self, subject, data, headers):
        """One message in a batch of its own with ``headers`` (a request or a
        reply, PROTOCOL.md 4.2), after whatever batch is open; returns its seq.
        Raises Disconnected while publishes are held: a request or a reply is
        no use later."""
        with self._lock:
            if self._forked_to is not None:
                return self._forked_to(subject, data, headers)
            if self.closed:
                raise RuntimeError("client is closed")
            if self._backlog is not None:
                raise Disconnected("the node is unreachable: a request or reply cannot wait for it")
            stream = self._streams.recent.get(subject) or self._stream(subject, time.monotonic())
            packed = self._encoder.pack(data)
            if self._batch is not None:
                self._send_batch()
            seq = stream.seq = stream.seq + 1
            self._send(stream, seq, time.time(), [None, packed], headers)
            self._unmarked.add(subject)
            self.published += 1
            return seq

    def epoch_of(self, subject):
        """The epoch of this publisher's stream on ``subject`` (None if it has none now)."""
        stream = self._streams.get(subject)
        return None if stream is None else stream.epoch

    def _hold(self, subject, stream, packed):
        """Keep a publish for after the reconnect (lock held)."""
        if self._backlog_bytes + len(packed) > self.backlog_limit:
            raise Disconnected(f"the node is unreachable and the reconnect backlog is full "
                               f"({self._backlog_bytes} of {self.backlog_limit} bytes): not published")
        seq = stream.seq = stream.seq + 1
        self._backlog.append((stream, seq, packed, time.time()))
        self._backlog_bytes += len(packed)
        self._unmarked.add(subject)
        self.published += 1
        return seq

    def _send(self, stream, seq, ts, parts, headers=None):
        self._sock.send(stream.topic, zmq.SNDMORE)
        self._sock.send(self._encoder.batch(stream.epoch, seq, ts, parts, headers))
        self.batches += 1
        if not self.batches % _INTEREST_DRAIN_EVERY:  # notices queue in the socket until read
            self._drain_interest()

    def _send_batch(self):
        stream, seq, ts, parts, _, _ = self._batch
        self._batch = self._joining = None
        self._send(stream, seq, ts, parts)

    def after_fork(self, redirect):
        """In a forked child, where this publisher and its socket are the
        parent's: its lock is new (a parent thread may have held the old one
        at the fork), no publish joins its open batch, and every publish
        through it goes to ``redirect(subject, data, headers)`` (the client,
        which reopens in the child). A ``publish`` taken before the fork so
        never writes to the parent's socket."""
        self._lock = threading.Lock()
        self._joining = None
        self._forked_to = redirect

    def flush(self):
        """Send the open batch now, if there is one."""
        with self._lock:
            if self._batch is not None:
                self._send_batch()

    # -- marks and forgetting --------------------------------------------

    def _send_marks(self, now):
        """A round of marks (lock held): every remembered stream's last
        number, one message per covering subscription prefix (in chunks).
        They follow every message they count: the open batch goes first, and
        while publishes are held none are sent (they would overtake the backlog)."""
        self._next_marks = now + MARK_SECONDS
        if self._backlog is not None:
            return
        if self._batch is not None:
            self._send_batch()
        streams, marks = self._streams, self._marks
        for subject in self._unmarked:
            stream = streams.get(subject)
            if stream is not None:
                marks.set(stream.topic, subject, stream.epoch, stream.seq)
        self._unmarked.clear()
        self._drain_interest()
        room = min(self._encoder.max_payload, MARKS_MAX_BYTES) - 64
        for prefix, entries in marks.messages(self._interest, room):
            self._send_marks_message(prefix, entries)

    def _send_marks_message(self, prefix, entries):
        self._sock.send(prefix + b"\x00", zmq.SNDMORE)
        self._sock.send(self._encoder.marks(entries))
        self.mark_messages += 1

    def _rotate(self, now):
        """Forget the streams not published for a whole generation (lock held)."""
        gone = 0
        self._joining = None  # the open batch's stream is no longer in ``recent``: revive it first
        for streams in self._streams.rotate(now):
            gone += len(streams)
            for subject in streams:
                self._marks.discard(subject)
                self._unmarked.discard(subject)
        if gone:
            self._epoch += 1
            self.forgotten += gone

    def housekeep(self):
        """Do what is due: send an aged batch, marks, forget idle streams.
        Returns the seconds until the next duty, or None if none is pending.
        A publisher holding the lock is publishing: look again a little later."""
        if not self._lock.acquire(blocking=False):
            return BATCH_MAX_AGE
        try:
            delay = self._housekeep()
            self._house_due = float("inf") if delay is None else time.monotonic() + delay
            return delay
        finally:
            self._lock.release()

    def _housekeep(self):
        if self.closed:
            return None
        now = time.monotonic()
        waits = []
        if self._batch is not None:
            if now >= self._batch[5]:
                self._send_batch()
            else:
                waits.append(self._batch[5] - now)
        streams = self._streams
        if streams:
            if now >= self._next_marks:
                self._send_marks(now)
            if now >= streams.rotate_at:
                self._rotate(now)
        if streams:
            waits.append(max(0.0, min(self._next_marks, streams.rotate_at) - now))
        return min(waits) if waits else None

    @property
    def streams(self):
        return len(self._streams)

    # -- interest ---------------------------------------------------------

    def _drain_interest(self):
        """Read the subscription notices the node forwarded to us (lock held):
        readers' prefixes apart from the others (a history recorder's)."""
        read_interest(self._sock, self._interest, self._recorded)

    def _known(self, prefix):
        """The set a subscription to exactly ``prefix`` is kept in (lock held)."""
        return self._interest if is_reader_prefix(prefix) else self._recorded

    def _covered(self, topic, history):
        """True if a reader's prefix covers ``topic`` (the empty prefix wants no
        system subject, PROTOCOL.md 3.2), or with ``history`` a recorder's (lock held)."""
        system = topic[:1] == b"$"
        if any(topic.startswith(prefix) for prefix in self._interest if prefix or not system):
            return True
        return history and any(topic.startswith(prefix) for prefix in self._recorded)

    def wait_for_snapshot(self, sentinel, wait, timeout):
        """Until the node has told this socket every subscription it had when
        the socket connected. ``sentinel`` is a prefix subscribed at the node
        after our connect; an XSUB sends a new connection the subscriptions it
        has at once, and later ones after them, so the sentinel's notice
        comes last. False if it did not come within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                self._drain_interest()
                if sentinel in self._known(sentinel):
                    self._known(sentinel).discard(sentinel)
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            wait(self._sock, remaining)

    def has_prefix(self, prefix):
        """True once the node has told us of a subscription to exactly ``prefix``."""
        with self._lock:
            if not self.connected:
                return False
            self._drain_interest()
            return prefix in self._known(prefix)

    def has_interest(self, subject, history=False):
        """True if a reader somewhere in the mesh covers ``subject``; with
        ``history``, a node's history recorder covering it counts too."""
        topic = validate_subject(subject)
        with self._lock:
            if not self.connected:
                return False  # what we knew is stale
            self._drain_interest()
            return self._covered(topic, history)

    # -- losing and regaining the node --------------------------------------

    def disconnect(self):
        """The node is unreachable: what we knew of its interest is stale; hold publishes."""
        with self._lock:
            self.connected = False
            self._interest.clear()
            self._recorded.clear()
        self.hold()

    def hold(self):
        """Hold publishes (the open batch too) until ``release_backlog``."""
        with self._lock:
            if self._backlog is None:
                self._backlog, self._backlog_bytes = collections.deque(), 0
                if self._batch is not None:
                    stream, seq, ts, parts, size, _ = self._batch
                    self._batch = self._joining = None
                    self._backlog.extend((stream, seq + i, packed, ts) for i, packed in enumerate(parts[1:]))
                    self._backlog_bytes = size

    def replace_socket(self, sock, max_payload):
        """The client is attached to a node again (the same one restarted, or
        another): publish through ``sock``. Publishes keep waiting in the
        backlog (if any) until ``release_backlog``."""
        with self._lock:
            old, self._sock = self._sock, sock
            self._encoder.max_payload = max_payload
            self._batch_room = min(BATCH_MAX_BYTES, self._encoder.payload_room)
            self._interest.clear()
            self._recorded.clear()
            self.connected = True
            if self._batch is not None:
                self._send_batch()
        old.close(linger=0)

    def backlog_ready(self):
        """True when no backlog waits, or every subject in it has a subscriber
        (a reader, or a history recorder)."""
        with self._lock:
            if not self._backlog:
                return True
            self._drain_interest()
            return all(self._covered(topic, True) for topic in {item[0].topic for item in self._backlog})

    def release_backlog(self):
        """Send what waited, in order, in batches; publishes go straight out again."""
        with self._lock:
            backlog, self._backlog, self._backlog_bytes = self._backlog, None, 0
            run = None  # [stream, first seq, ts, parts, bytes]
            for stream, seq, packed, ts in backlog or ():
                if (run is not None and run[0] is stream and seq == run[1] + len(run[3]) - 1
                        and len(run[3]) <= BATCH_MAX_MESSAGES and run[4] + len(packed) <= self._batch_room):
                    run[3].append(packed)
                    run[4] += len(packed)
                    continue
                if run is not None:
                    self._send(*run[:4])
                run = [stream, seq, ts, [None, packed], len(packed)]
            if run is not None:
                self._send(*run[:4])

    @property
    def backlog(self):
        """Publishes waiting for the node (count)."""
        return len(self._backlog or ())

    # -- closing ---------------------------------------------------------

    def close(self):
        """Send the open batch and a last round of marks (LINGER delivers
        them), then close. Returns the last mark entries, ``[subject, epoch,
        seq]``, for the node to repeat (none while the node is unreachable)."""
        with self._lock:
            if self.closed:
                return []
            if self._batch is not None:
                self._send_batch()
            if self._backlog:
                self.dropped_at_close = len(self._backlog)
            final = []
            if self.connected and self._backlog is None:
                self._send_marks(time.monotonic())
                final = self._marks.entries()
            self.closed = True
            self._sock.close()
            return final
