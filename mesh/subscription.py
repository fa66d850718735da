"""One subscription: its bounded queue of messages, its stream positions and its counters.

The client's receiver (mesh/receiver.py) puts each batch that matches the
pattern into the queue; ``get()`` takes from it, and when it is empty asks
the receiver to read on its behalf. Per stream (publisher, subject) the
subscription keeps the epoch and last sequence number it saw, counts what is
missing as ``gaps``, and forgets a stream it has not heard from for
``stream_idle`` seconds (at most twice that). It keeps the last position of
the MAX_FORGOTTEN_STREAMS streams it forgot most recently, so a stream that
comes back in the same epoch after a long silence (a cut longer than
``stream_idle``, its publisher publishing all along) has what was lost
meanwhile counted. ``position`` says how far the reader got, for
recovering from history later (mesh/recovery.py).

While a recovery replays history, live messages are held back; the hold,
what arrives meanwhile and the hand-over to live delivery happen under one
lock, so no live message can pass the replay and every position is counted
from where the reader was.
"""

import collections
import itertools
import threading
import time

from .generations import Generations
from .recovery import Position

DEFAULT_PENDING_LIMIT = 100_000
MAX_FORGOTTEN_STREAMS = 10_000  # forgotten streams whose last position a subscription keeps (the newest)


class Subscription:
    """Messages matching one pattern, read with ``get()``, ``take()`` or by iterating.

    Counters: ``received`` (handed to you), ``gaps`` (messages known to be
    missing: sequence numbers a publisher sent that never arrived),
    ``dropped`` (arrived while this subscription's queue held
    ``pending_limit`` messages: a slow reader loses, the others do not),
    ``malformed`` (frames dropped because they did not follow docs/PROTOCOL.md).
    """

    def __init__(self, receiver, pattern, pending_limit, stream_idle, maybe_yield):
        self.pattern = pattern
        self.pending_limit = pending_limit
        self.received = 0
        self.gaps = 0
        self.dropped = 0
        self.malformed = 0
        self.closed = False
        self._receiver = receiver
        self._yield = maybe_yield
        self.inbox = collections.deque()
        self._streams = Generations(stream_idle, time.monotonic())  # (origin, subject) -> [epoch, last seq]
        self._forgotten = {}  # the same, for streams forgotten since: the oldest first
        self.wait_event = None  # made the first time a reader has to wait
        self.waiter = None  # the Event, while a reader waits for the receiver
        self._held = None  # live messages held back while a recovery replays (a list), else None
        self._lock = threading.Lock()  # the receiver's batches and marks against a recovery's hold and hand-over
        self.recovery = None  # mesh.recovery.Recovery, for a subscription made with since=
        self.on_unsubscribe = None  # called once unsubscribed (a queue-group membership leaves)
        self._replayed_to = None  # {stream: (epoch, seq)} a recovery replayed up to, until live passes it

    # -- reading ----------------------------------------------------------

    def get(self, timeout=None):
        """The next message; raises TimeoutError if none came within ``timeout``
        seconds, RuntimeError if the subscription is closed."""
        queue = self.inbox
        if queue:  # the hot path: _pop written out (a call less per message)
            self.received = count = self.received + 1
            if self._yield is not None and not count & 1023:
                self._yield()
            return queue.popleft()
        return self._receiver.wait(self, timeout)

    def pop_waiting(self):
        self.received = count = self.received + 1
        if self._yield is not None and not count & 1023:
            self._yield()
        return self.inbox.popleft()

    def poll(self):
        """The next message if one is waiting, else None; never waits or reads
        (for a reader that waits elsewhere: mesh/aio.py)."""
        return self.pop_waiting() if self.inbox else None

    def take(self, limit=1024, timeout=None):
        """Every message waiting (at most ``limit``), at least one: waits like ``get``."""
        batch = [self.get(timeout)]
        batch.extend(self.take_waiting(limit - 1))
        return batch

    def take_waiting(self, limit):
        """The messages waiting (at most ``limit``, maybe none); never waits or reads."""
        queue = self.inbox
        batch = [queue.popleft() for _ in range(min(limit, len(queue)))]
        self.received += len(batch)
        return batch

    def __iter__(self):
        while True:
            try:
                yield self.get()
            except RuntimeError:
                if self.closed:
                    return
                raise

    @property
    def pending(self):
        """Messages received and not yet taken."""
        return len(self.inbox)

    @property
    def position(self):
        """How far the reader got: for every stream this subscription
        remembers, the (epoch, seq) of the last message handed out (messages
        still queued do not count), and the time now. Give it to
        ``Client.subscribe(pattern, since=position)`` after a reconnect.
        Take it between two reads, in the thread that reads: a message
        another thread is being handed meanwhile may not count."""
        with self._lock:
            return self._position(queued_count=False)

    def _position(self, queued_count):
        """The position; ``queued_count``: queued messages count as had (a
        recovery into this same subscription, which keeps its queue)."""
        now = time.time()
        delivered = {key: (epoch, seq) for key, (epoch, seq) in self._streams.merged().items()}
        if not queued_count:
            rolled_back = set()
            for message in list(self.inbox) + list(self._held or ()):
                key = (message.origin, message.subject)
                if key not in rolled_back:
                    rolled_back.add(key)
                    delivered[key] = (message.epoch, message.seq - 1)
        return Position(delivered, now)

    @property
    def streams(self):
        """Streams (publisher, subject) whose position this subscription remembers."""
        return len(self._streams)

    # -- filled by the receiver ------------------------------------------

    def accept(self, key, epoch, seq, messages, now):
        """A batch of ``messages`` (sequence numbers from ``seq``) of stream ``key``."""
        with self._lock:
            if self.closed:
                return
            if self._held is not None:
                self._held.extend(messages)
                return
            if now >= self._streams.rotate_at:
                self._rotate(now)
            end = seq + len(messages) - 1
            self._advance(key, epoch, seq, end)
            if self._replayed_to:  # live copies of what a recovery replayed may still come: never twice
                reached = self._replayed_to.get(key)
                if reached is not None:
                    if reached[0] == epoch and seq <= reached[1]:
                        if end <= reached[1]:
                            return
                        messages = messages[reached[1] - seq + 1:]
                    del self._replayed_to[key]  # live delivery has passed the replay
            queue = self.inbox
            room = self.pending_limit - len(queue)
            if room >= len(messages):
                queue.extend(messages)
            else:
                if room > 0:
                    queue.extend(messages[:room])
                self.dropped += len(messages) - max(room, 0)
        if self.waiter is not None:
            self.waiter.set()

    def _rotate(self, now):
        """Forget the streams idle for a generation, keeping their last positions (lock held)."""
        forgotten = self._forgotten
        for generation in self._streams.rotate(now):
            for key, position in generation.items():
                forgotten.pop(key, None)  # re-inserted: the newest last
                forgotten[key] = position
        for key in list(itertools.islice(forgotten, max(0, len(forgotten) - MAX_FORGOTTEN_STREAMS))):
            del forgotten[key]

    def _recall(self, key):
        """The position of a stream not in use (lock held): remembered, forgotten but kept, or None."""
        position = self._streams.revive(key)
        if position is None:
            position = self._forgotten.pop(key, None)
            if position is not None:
                self._streams.recent[key] = position
        return position

    def _advance(self, key, epoch, seq, end):
        """Stream ``key`` got ``seq`` to ``end`` of ``epoch``: count what was skipped."""
        streams = self._streams
        position = streams.recent.get(key)
        if position is None:
            position = self._recall(key)
            if position is None:
                position = streams.recent[key] = [epoch, seq - 1]  # a stream we never saw: its first batch sets the baseline
        if position[0] != epoch:  # the publisher forgot the stream and began it again
            self.gaps += seq - 1
            position[0], position[1] = epoch, end
        else:
            last = position[1]
            if seq > last + 1:
                self.gaps += seq - last - 1
            if end > last:
                position[1] = end

    # -- recovery: live messages wait while history is replayed ---------

    def begin_hold(self):
        """From now on live messages are held; returns the position to recover
        from (queued messages count as had: they stay queued)."""
        with self._lock:
            self._held = []
            return self._position(queued_count=True)

    @property
    def holding(self):
        """True while a recovery holds live messages back."""
        return self._held is not None

    def held(self):
        """The live messages held so far (a copy)."""
        with self._lock:
            return list(self._held or ())

    def end_hold_if_held(self):
        """End a hold that a failed recovery left: deliver what was held."""
        if self._held is not None:
            self.end_hold([], lambda message: True)

    def end_hold(self, replayed, keep_live, start=None, lost_to=None):
        """Queue the ``replayed`` messages, then the held live ones for which
        ``keep_live(message)`` is true (not already replayed), and go on live,
        in one step. ``start``: {stream: (epoch, seq)} where the reader was (a
        position): what is queued is counted from there, so a stream that was
        not recovered counts what it misses in ``gaps`` (now, or when its next
        live message or mark comes). ``lost_to``: {stream: (epoch, seq)} the
        newest message history evicted, for streams of ``start``: counted as
        missing if nothing of the stream is queued (live copies of them are
        then not delivered). Returns how many missing messages this counted."""
        with self._lock:
            gaps = self.gaps
            for key, (epoch, seq) in (start or {}).items():
                if key not in self._streams:
                    self._streams.recent[key] = [epoch, seq]
            queued = list(replayed)
            queued.extend(message for message in self._held or () if keep_live(message))
            settled = {}
            for message in replayed:
                settled[(message.origin, message.subject)] = (message.epoch, message.seq)
            for message in queued:
                self._advance((message.origin, message.subject), message.epoch, message.seq, message.seq)
            had = {(message.origin, message.subject) for message in queued}
            for key, (epoch, seq) in (lost_to or {}).items():
                if key not in had:
                    self._count_to(key, epoch, seq)
                    settled[key] = (epoch, seq)
            self._replayed_to = settled or None
            self.inbox.extend(queued)
            self._held = None  # last: live messages wait on the lock until all of this is done
            counted = self.gaps - gaps
        if self.waiter is not None:
            self.waiter.set()
        return counted

    def apply_mark(self, key, epoch, seq, now):
        """The publisher's last sequence number on a stream: count what never came."""
        with self._lock:
            if not self.closed and self._held is None:  # (a stream a recovery fills in is counted by it)
                self._count_to(key, epoch, seq)

    def _count_to(self, key, epoch, seq):
        """Stream ``key`` was sent up to (``epoch``, ``seq``): count what never came."""
        position = self._streams.recent.get(key) or self._recall(key)
        if position is None:
            return  # a stream we never saw: nothing to count
        if position[0] != epoch:
            self.gaps += seq  # a new epoch of which nothing arrived
            position[0], position[1] = epoch, seq
        elif seq > position[1]:
            self.gaps += seq - position[1]
            position[1] = seq

    def wake(self):
        if self.waiter is not None:
            self.waiter.set()

    # -- ending -----------------------------------------------------------

    def unsubscribe(self):
        """Stop receiving; a reader waiting in ``get`` gets RuntimeError at once.
        Safe to call from any thread."""
        if self.closed:
            return
        self.closed = True
        self.inbox.clear()
        self._receiver.remove(self)
        if self.on_unsubscribe is not None:
            self.on_unsubscribe()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.unsubscribe()
