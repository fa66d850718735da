"""History: the messages a node's own publishers sent on subjects with history on.

``--history PATTERN=COUNT/AGEs`` turns history on for the subjects a pattern
matches: the node keeps the last COUNT messages of each such subject, none
recorded more than AGE seconds ago, and all of them together within
``--history-bytes`` (the oldest go first). Age is counted on this node's
monotonic clock from when the message was recorded, never from its ``ts``
(the publisher's wall clock, which may be off on another host); a message
read back from disk counts from its ``ts``, as the node's clock did not
survive, and a copy of another node's older history from when it was
copied.

The recorder is one SUB socket connected to the node's own ``out``,
subscribed only to what the history patterns' prefixes admit, so libzmq
filters out every other subject before Python sees it. Its prefixes end
inside a token (:func:`recording_prefixes`), so publishers tell them from
readers' and a recorder is never taken for a reader (interest,
docs/PROTOCOL.md 6). It records what was *published at this node*
(messages from peers never pass ``out``): the one its publisher used.

A replica (nodes/history/copies.py) records into the same recorder what
is published at the holders it follows, each entry marked with the holder
it came from (``at``), and the history those holders kept before it
followed them (:meth:`Recorder.record_copies`, with their evictions:
:meth:`Recorder.copy_evictions`). A ``history`` request with ``own`` reads
only what was published at this node.

Per stream (origin, subject) it also remembers the last sequence number it
evicted, so a question "everything after seq N" is answered either in full
or with ``evicted``: never a silent partial answer. ``history`` control
requests (docs/PROTOCOL.md 7.3) read it page by page.
"""

import collections
import logging
import re
import time

import msgpack

from mesh.envelope import decode_batch
from mesh.subjects import Pattern, topic_frame

from nodes.tap import Tap

log = logging.getLogger("meshnode.recorder")

DEFAULT_HISTORY_BYTES = 64 * 1024 * 1024
ENTRY_OVERHEAD = 120  # bytes an entry costs beyond its payload (tuple, deque slot, ints)
MAX_PAGE_MESSAGES = 1000
MAX_PAGE_BYTES = 1024 * 1024
MAX_ASKED_STREAMS = 1000
MAX_EVICTED_STREAMS = 100_000  # streams whose last eviction is remembered (the oldest are forgotten)
# Bytes a token can begin with: all but '.' and those no subject holds (PROTOCOL.md 3.1).
_TOKEN_STARTS = [bytes([b]) for b in range(256) if bytes([b]) not in b". \t\r\n\x00"]
_RULE = re.compile(r"^(?P<pattern>[^=\s]+)=(?P<count>\d+)/(?P<age>\d+(?:\.\d+)?)s$")


class HistoryRule:
    """One ``--history`` option: a pattern, a count per subject, an age."""

    def __init__(self, text):
        match = _RULE.match(text)
        if not match:
            raise ValueError(f"--history {text!r} is not PATTERN=COUNT/AGEs (for example 'chat.>=1000/300s')")
        self.pattern = Pattern(match["pattern"])
        self.count = int(match["count"])
        self.age = float(match["age"])
        if self.count < 1 or self.age <= 0:
            raise ValueError(f"--history {text!r}: the count and the age must be positive")
        self.text = text


def recording_prefixes(pattern):
    """The subscriptions that admit what ``pattern``'s own prefix admits, none
    of them a reader's (PROTOCOL.md 6): a literal pattern's topic frame without
    its final '.'; else the prefix followed by each byte a token can begin
    with (no '$' after an empty prefix: a leading wildcard matches no system
    subject)."""
    prefix = pattern.prefix
    if prefix == topic_frame(pattern.text):
        return {prefix[:-1]}
    return {prefix + start for start in _TOKEN_STARTS if prefix or start != b"$"}


class _Entry:
    __slots__ = ("alive", "at", "epoch", "n", "origin", "packed", "recorded_at", "seq", "subject", "ts")

    def __init__(self, subject, origin, epoch, seq, ts, packed, n, recorded_at, at=None):
        self.subject, self.origin, self.epoch, self.seq, self.ts, self.packed = subject, origin, epoch, seq, ts, packed
        self.alive = True
        self.n = n  # arrival number at this node: pages resume after one; along a subject's entries it grows
        self.recorded_at = recorded_at  # this node's monotonic clock: the age rules count from it
        self.at = at  # the holder this copy was published at (a replica's), None if published here


class Recorder(Tap):
    """A tap (nodes/tap.py) that records what its rules admit."""

    def __init__(self, context, out_endpoint, rules, budget=DEFAULT_HISTORY_BYTES, curve=None, store=None):
        """``store``: a HistoryStore (nodes/history/store.py) to keep history on disk, or None."""
        self.rules = list(rules)
        self.store = store
        self.budget = budget
        self.bytes = 0
        self.recorded = 0
        self.evicted = 0
        self.copies = 0  # entries held that were published at another node (a replica's)
        self._subjects = {}  # subject -> deque of live _Entry, oldest first
        self._arrivals = collections.deque()  # every _Entry, oldest first (dead ones skipped)
        self._evicted_to = {}  # (origin, subject) -> (epoch, seq, ts) of the newest entry evicted
        self._evicted_copy = set()  # the streams of _evicted_to whose newest eviction was of a copy (in memory only)
        self._rule_of = {}  # subject -> HistoryRule (first matching rule wins)
        self.prefixes = set().union(*(recording_prefixes(rule.pattern) for rule in self.rules))
        super().__init__(context, out_endpoint, curve, self.prefixes)
        if store is not None:
            self._restore(store)

    def _restore(self, store):
        """Hold again what the store kept (a restart), then apply the rules to it. A restored
        message's age counts from its publish time (the node's own clock did not survive)."""
        for key_origin, key_subject, epoch, seq, ts in store.evictions():
            self._evicted_to[(key_origin, key_subject)] = (epoch, seq, ts)
        now, wall = time.monotonic(), time.time()
        for n, subject, origin, epoch, seq, ts, packed, at in store.messages():
            entry = _Entry(subject, origin, epoch, seq, ts, packed, n, now - max(0.0, wall - ts), at)
            self._subjects.setdefault(subject, collections.deque()).append(entry)
            self._arrivals.append(entry)
            self.bytes += len(packed) + ENTRY_OVERHEAD
            self.recorded = n + 1
            self.copies += at is not None
        for subject, entries in list(self._subjects.items()):
            rule = self._rule(subject)
            while entries and (not rule or len(entries) > rule.count):  # the rules may have changed
                self._evict(entries.popleft())
            if not entries:
                del self._subjects[subject]
        self._trim()

    def start(self):
        super().start()
        if self.store is not None:
            self.store.start()

    def stop(self):
        super().stop()
        if self.store is not None:
            self.store.stop()

    # -- recording -------------------------------------------------------

    def _rule(self, subject):
        rule = self._rule_of.get(subject)
        if rule is None:
            rule = next((r for r in self.rules if r.pattern.matches(subject)), False)
            if len(self._rule_of) < 100_000:
                self._rule_of[subject] = rule
        return rule

    def take(self, subject, frames):
        self.record(subject, frames[1])

    def record(self, subject, body, at=None, held_to=None):
        """One batch (its envelope ``body``) published at this node, or with ``at`` at that
        holder; ``held_to``: {stream: (epoch, seq)} held already (a catch-up's), not kept again."""
        rule = self._rule(subject)
        if not rule:
            return  # a prefix subscription also lets neighbours of the pattern in
        origin, epoch, seq, ts, payloads = decode_batch(body)
        skip = 0
        if held_to:
            reached = held_to.get((origin, subject))
            if reached is not None and reached[0] >= epoch:
                skip = len(payloads) if reached[0] > epoch else max(0, min(len(payloads), reached[1] - seq + 1))
                if skip == len(payloads):
                    return
        entries = self._subjects.get(subject)
        if entries is None:
            entries = self._subjects[subject] = collections.deque()
        now, first = time.monotonic(), self.recorded  # a number for each message, the skipped too
        for i in range(skip, len(payloads)):
            entry = _Entry(subject, origin, epoch, seq + i, ts, msgpack.packb(payloads[i]), first + i, now, at)
            entries.append(entry)
            self._arrivals.append(entry)
            self.bytes += len(entry.packed) + ENTRY_OVERHEAD
        self.recorded = first + len(payloads)
        if at is not None:
            self.copies += len(payloads) - skip
        if self.store is not None:
            self.store.recorded(entries[skip - len(payloads)], len(payloads), body, skip)
        while len(entries) > rule.count:
            self._evict(entries.popleft())
        self._trim()

    def record_copies(self, at, messages):
        """Messages holder ``at`` kept before this node followed it (``[subject, origin,
        epoch, seq, ts, packed data]``, in the holder's order per subject), recorded as
        they come now, but those held or evicted here already; returns how many."""
        held, fresh, now = {}, [], time.monotonic()
        for subject, origin, epoch, seq, ts, packed in messages:
            rule = self._rule(subject)
            if not rule:
                continue
            if subject not in held:
                held[subject] = {(e.origin, e.epoch, e.seq) for e in self._subjects.get(subject, ())}
            evicted = self._evicted_to.get((origin, subject))
            if (origin, epoch, seq) in held[subject] or (evicted is not None and (epoch, seq) <= evicted[:2]):
                continue
            held[subject].add((origin, epoch, seq))
            entry = _Entry(subject, origin, epoch, seq, ts, packed, self.recorded, now, at)
            self.recorded += 1
            self._subjects.setdefault(subject, collections.deque()).append(entry)
            self._arrivals.append(entry)
            self.bytes += len(packed) + ENTRY_OVERHEAD
            fresh.append(entry)
        self.copies += len(fresh)
        if self.store is not None and fresh:
            self.store.recorded_copies(fresh)
        for subject in held:
            entries, rule = self._subjects.get(subject), self._rule(subject)
            while entries and len(entries) > rule.count:
                self._evict(entries.popleft())
        self._trim()
        return len(fresh)

    def copy_evictions(self, at, evicted):
        """What holder ``at`` evicted of its streams (``[origin, subject, epoch, seq]``: the
        newest of each), for the streams this node holds nothing of but from ``at``: counted as
        evicted here too, up to the message before the oldest one held here at most, dated by
        the oldest message held of the stream (or now)."""
        for origin, subject, epoch, seq in evicted:
            if not self._rule(subject):
                continue
            mine = [entry for entry in self._subjects.get(subject, ()) if entry.origin == origin]
            if any(entry.at != at for entry in mine):
                continue  # also published here, or copied from another holder: its own evictions count
            if mine:  # what this copy holds of it was not lost here: only what is before its oldest message
                oldest = min(mine, key=lambda entry: (entry.epoch, entry.seq))
                if (epoch, seq) >= (oldest.epoch, oldest.seq):
                    if oldest.seq == 1:
                        continue  # an epoch's first message: nothing of the stream before it is missing here
                    epoch, seq = oldest.epoch, oldest.seq - 1
            newest = self._evicted_to.get((origin, subject))
            if newest is None or newest[:2] < (epoch, seq):
                self._note_evicted((origin, subject), (epoch, seq, min((e.ts for e in mine), default=time.time())),
                                   at)

    def _evict(self, entry):
        entry.alive = False
        self.bytes -= len(entry.packed) + ENTRY_OVERHEAD
        self.evicted += 1
        self.copies -= entry.at is not None
        if self.store is not None:
            self.store.evicted(entry)
        self._note_evicted((entry.origin, entry.subject), (entry.epoch, entry.seq, entry.ts), entry.at)

    def _note_evicted(self, key, position, at):
        """Stream ``key``'s newest evicted message is now at least ``position`` (epoch, seq, ts),
        evicted from a copy of holder ``at``'s (or None: published here)."""
        newest = self._evicted_to.pop(key, None)  # re-inserted: the dict's order is the eviction order
        self._evicted_to[key] = max(newest or (0, 0, 0.0), position)
        if self._evicted_to[key] == position:
            if at is None:
                self._evicted_copy.discard(key)
            else:
                self._evicted_copy.add(key)
        if self.store is not None:
            self.store.newest_evicted(key, self._evicted_to[key])
        if len(self._evicted_to) > MAX_EVICTED_STREAMS:
            forgotten = next(iter(self._evicted_to))
            del self._evicted_to[forgotten]
            self._evicted_copy.discard(forgotten)
            if self.store is not None:
                self.store.forgot(*forgotten)

    def _trim(self):
        """Evict what is past its age, then the oldest while over the byte budget."""
        now = time.monotonic()
        arrivals = self._arrivals
        while arrivals:
            entry = arrivals[0]
            if entry.alive:
                rule = self._rule(entry.subject)
                if self.bytes <= self.budget and entry.recorded_at >= now - rule.age:
                    break
                self._evict(entry)
                subject_entries = self._subjects[entry.subject]
                subject_entries.popleft()  # the oldest of its subject too
                if not subject_entries:
                    del self._subjects[entry.subject]
            arrivals.popleft()

    # -- reading ---------------------------------------------------------

    def page(self, pattern, since=0.0, after=(), cursor=None, limit=MAX_PAGE_MESSAGES, partial=False, own=False):
        """Messages on subjects ``pattern`` matches, by subject and then in
        the order they arrived, after ``cursor`` ([subject, arrival number]
        of the last message of the previous page; None for the first page):
        those of a stream named in ``after`` that come after its (epoch, seq)
        (a publisher's epochs only grow), those of other streams published at
        ``since`` or later. At most ``limit`` messages and MAX_PAGE_BYTES of
        payload. Returns ``(messages, next_cursor or None, streams)``;
        ``streams`` maps each asked stream this node recorded (it holds
        messages of it, or evicted some), and each other stream with messages
        (held or evicted) since ``since``, to "complete" or "evicted" (a wanted
        message is gone: then none of the stream's messages are sent, unless
        ``partial``: then what is left is). A cursor stays valid while the
        node evicts: a page never skips or repeats a message it still holds.
        ``own``: only messages published at this node, and only evictions of
        them, none of a replica's copies (a copy's eviction is known until
        the node restarts; read back, every eviction counts as its own)."""
        self._trim()
        asked = {(origin, subject): (epoch, seq) for origin, subject, epoch, seq in after}
        streams = {}
        evictions = self._evicted_to
        if own and self._evicted_copy:
            evictions = {key: newest for key, newest in evictions.items() if key not in self._evicted_copy}
        for key, position in asked.items():
            evicted = evictions.get(key)
            if evicted is not None:  # a stream this node recorded, all of whose messages may be gone
                streams[key] = "evicted" if evicted[:2] > position else "complete"  # epochs only grow
        for key, evicted in evictions.items():  # streams gone whole since the asked time
            if key not in asked and evicted[2] >= since and pattern.matches(key[1]):
                streams[key] = "evicted"
        after_subject, after_n = cursor if cursor is not None else ("", -1)
        messages, size, next_cursor = [], 0, None
        for subject in sorted(s for s in self._subjects if pattern.matches(s) and s >= after_subject):
            for entry in self._subjects[subject]:
                if subject == after_subject and entry.n <= after_n:
                    continue  # on an earlier page
                if own and entry.at is not None:
                    continue
                key = (entry.origin, entry.subject)
                position = asked.get(key)
                if position is not None:
                    if streams.setdefault(key, "complete") == "evicted" and not partial:
                        continue  # all or nothing per stream
                    if (entry.epoch, entry.seq) <= position:
                        continue
                else:
                    if entry.ts < since:
                        continue
                    if streams.setdefault(key, "complete") == "evicted" and not partial:
                        continue
                if len(messages) >= limit or (messages and size + len(entry.packed) > MAX_PAGE_BYTES):
                    last = messages[-1]
                    next_cursor = [last.subject, last.n]
                    break
                messages.append(entry)
                size += len(entry.packed)
            if next_cursor is not None:
                break
        return messages, next_cursor, streams

    def newest_evicted(self, streams):
        """``[[origin, subject, epoch, seq], ...]``: for each stream ``page``
        reported evicted, the newest message of it this node evicted."""
        return [[origin, subject, *self._evicted_to[(origin, subject)][:2]]
                for (origin, subject), state in streams.items()
                if state == "evicted" and (origin, subject) in self._evicted_to]

    def counters(self):
        return {"rules": [rule.text for rule in self.rules], "subjects": len(self._subjects), "bytes": self.bytes,
                "budget": self.budget, "recorded": self.recorded, "evicted": self.evicted,
                "copies": self.copies,
                "malformed": self.malformed, **({"disk": self.store.counters()} if self.store is not None else {})}
