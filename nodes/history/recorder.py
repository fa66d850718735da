"""History: the messages a node's own publishers sent on subjects with history on.

``--history PATTERN=COUNT/AGEs`` turns history on for the subjects a pattern
matches: the node keeps the last COUNT messages of each such subject, none
recorded more than AGE seconds ago, and all of them together within
``--history-bytes`` (the oldest go first). Age is counted on this node's
monotonic clock from when the message was recorded, never from its ``ts``
(the publisher's wall clock, which may be off on another host).

The recorder is one SUB socket connected to the node's own ``out``,
subscribed only to what the history patterns' prefixes admit, so libzmq
filters out every other subject before Python sees it. Its prefixes end
inside a token (:func:`recording_prefixes`), so publishers tell them from
readers' and a recorder is never taken for a reader (interest,
docs/PROTOCOL.md 6). It records what was *published at this node*
(messages from peers never pass ``out``), so each message is held by
exactly one node: the one its publisher used.

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
    __slots__ = ("alive", "epoch", "n", "origin", "packed", "recorded_at", "seq", "subject", "ts")

    def __init__(self, subject, origin, epoch, seq, ts, packed, n, recorded_at):
        self.subject, self.origin, self.epoch, self.seq, self.ts, self.packed = subject, origin, epoch, seq, ts, packed
        self.alive = True
        self.n = n  # arrival number at this node: pages resume after one
        self.recorded_at = recorded_at  # this node's monotonic clock: the age rules count from it


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
        self._subjects = {}  # subject -> deque of live _Entry, oldest first
        self._arrivals = collections.deque()  # every _Entry, oldest first (dead ones skipped)
        self._evicted_to = {}  # (origin, subject) -> (epoch, seq, ts) of the newest entry evicted
        self._rule_of = {}  # subject -> HistoryRule (first matching rule wins)
        super().__init__(context, out_endpoint, curve,
                         set().union(*(recording_prefixes(rule.pattern) for rule in self.rules)))
        if store is not None:
            self._restore(store)

    def _restore(self, store):
        """Hold again what the store kept (a restart), then apply the rules to it. A restored
        message's age counts from its publish time (the node's own clock did not survive)."""
        for key_origin, key_subject, epoch, seq, ts in store.evictions():
            self._evicted_to[(key_origin, key_subject)] = (epoch, seq, ts)
        now, wall = time.monotonic(), time.time()
        for n, subject, origin, epoch, seq, ts, packed in store.messages():
            entry = _Entry(subject, origin, epoch, seq, ts, packed, n, now - max(0.0, wall - ts))
            self._subjects.setdefault(subject, collections.deque()).append(entry)
            self._arrivals.append(entry)
            self.bytes += len(packed) + ENTRY_OVERHEAD
            self.recorded = n + 1
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
        rule = self._rule(subject)
        if not rule:
            return  # a prefix subscription also lets neighbours of the pattern in
        origin, epoch, seq, ts, payloads = decode_batch(frames[1])
        entries = self._subjects.get(subject)
        if entries is None:
            entries = self._subjects[subject] = collections.deque()
        now = time.monotonic()
        for i, data in enumerate(payloads):
            entry = _Entry(subject, origin, epoch, seq + i, ts, msgpack.packb(data), self.recorded, now)
            entries.append(entry)
            self._arrivals.append(entry)
            self.bytes += len(entry.packed) + ENTRY_OVERHEAD
            self.recorded += 1
        if self.store is not None:
            self.store.recorded(entries[-len(payloads)], len(payloads), frames[1])
        while len(entries) > rule.count:
            self._evict(entries.popleft())
        self._trim()

    def _evict(self, entry):
        entry.alive = False
        self.bytes -= len(entry.packed) + ENTRY_OVERHEAD
        self.evicted += 1
        key = (entry.origin, entry.subject)
        newest = self._evicted_to.pop(key, None)  # re-inserted: the dict's order is the eviction order
        self._evicted_to[key] = max(newest or (0, 0, 0.0), (entry.epoch, entry.seq, entry.ts))
        if self.store is not None:
            self.store.evicted(entry, self._evicted_to[key])
        if len(self._evicted_to) > MAX_EVICTED_STREAMS:
            forgotten = next(iter(self._evicted_to))
            del self._evicted_to[forgotten]
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

    def page(self, pattern, since=0.0, after=(), cursor=None, limit=MAX_PAGE_MESSAGES, partial=False):
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
        node evicts: a page never skips or repeats a message it still holds."""
        self._trim()
        asked = {(origin, subject): (epoch, seq) for origin, subject, epoch, seq in after}
        streams = {}
        for key, position in asked.items():
            evicted = self._evicted_to.get(key)
            if evicted is not None:  # a stream this node recorded, all of whose messages may be gone
                streams[key] = "evicted" if evicted[:2] > position else "complete"  # epochs only grow
        for key, evicted in self._evicted_to.items():  # streams gone whole since the asked time
            if key not in asked and evicted[2] >= since and pattern.matches(key[1]):
                streams[key] = "evicted"
        after_subject, after_n = cursor if cursor is not None else ("", -1)
        messages, size, next_cursor = [], 0, None
        for subject in sorted(s for s in self._subjects if pattern.matches(s) and s >= after_subject):
            for entry in self._subjects[subject]:
                if subject == after_subject and entry.n <= after_n:
                    continue  # on an earlier page
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
                "malformed": self.malformed, **({"disk": self.store.counters()} if self.store is not None else {})}
