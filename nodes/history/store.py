"""History on disk (``--data-dir``): the recorder's messages and evictions, kept across restarts.

The recorder (nodes/history/recorder.py) keeps its history in memory and
tells this store each batch it records (a publisher's consecutive messages
on one subject, as they came: one envelope) and each message it evicts; the
store writes them to ``DIR/history.sqlite`` (nodes/disk.py: a batch per
transaction, from a thread). A batch is one row holding the envelope's body
as it came, with the arrival number of its first message, its count and
the arrival number of its first message still held: a subject's messages
are evicted oldest first, so what is evicted of a subject is everything
before one arrival number, written once per subject and transaction however
many it evicted. Each stream's newest eviction is one row too.

At start-up the recorder reads back every message still held, in arrival
order, with its (origin, epoch, seq) and time, and the newest eviction of
every stream, so a restarted node answers ``history`` with what it held,
and ``evicted`` wherever it had evicted: continuity stays honest.

A transaction that fails (a full disk) leaves its batches off the disk. The
store then counts each such stream as evicted up to the last message it
could not write, and writes that with the next transaction that succeeds:
after a restart the stream is reported ``evicted`` from there back, never
silently short. Its other changes (evictions) are written again with the
next transaction.
"""

import os

import msgpack

from mesh.envelope import decode_batch

from nodes.disk import DiskFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (n INTEGER PRIMARY KEY, subject TEXT NOT NULL, count INTEGER NOT NULL,
    live INTEGER NOT NULL, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS batches_of_subject ON batches (subject, n);
CREATE TABLE IF NOT EXISTS evicted (origin TEXT NOT NULL, subject TEXT NOT NULL, epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL, ts REAL NOT NULL, PRIMARY KEY (origin, subject));
"""
_RECORD = "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?)"
_EVICT_WHOLE = "DELETE FROM batches WHERE subject = ?1 AND n < ?2 AND n + count <= ?2"
_EVICT_PART = "UPDATE batches SET live = ?2 WHERE subject = ?1 AND n < ?2 AND live < ?2"
_NEWEST_EVICTED = "INSERT OR REPLACE INTO evicted VALUES (?, ?, ?, ?, ?)"  # re-inserted: rowid order is eviction order
_FORGET = "DELETE FROM evicted WHERE origin = ? AND subject = ?"


class HistoryStore(DiskFile):
    def __init__(self, directory, fsync="batch"):
        super().__init__(os.path.join(directory, "history.sqlite"), SCHEMA, fsync)
        self._live = {}  # subject -> arrival number of its first message still held, since the last changes()
        self._newest = {}  # (origin, subject) -> (epoch, seq, ts) newest evicted, in eviction order, likewise
        self._forgotten = set()  # (origin, subject) whose eviction is forgotten, likewise
        self._streams = {}  # (origin, subject) -> (epoch, seq, ts) of the last message of the batches queued
        self._taken = ({}, {}, set(), {})  # what the last changes() took: the four above
        self._holes = {}  # (origin, subject) -> (epoch, seq, ts): the newest message a failed write left off

    def messages(self):
        """(n, subject, origin, epoch, seq, ts, packed data) of every message held, in arrival order."""
        newest = {(origin, subject): (epoch, seq) for origin, subject, epoch, seq, _ in self.evictions()}
        held = []
        for first, subject, _, live, body in self.query("SELECT n, subject, count, live, body FROM batches ORDER BY n"):
            origin, epoch, seq, ts, payloads = decode_batch(body)
            evicted_to = newest.get((origin, subject), (-1, -1))
            for i in range(max(0, live - first), len(payloads)):
                if (epoch, seq + i) > evicted_to:  # not before a stream's hole (a failed write)
                    held.append((first + i, subject, origin, epoch, seq + i, ts, msgpack.packb(payloads[i])))
        return held

    def evictions(self):
        """(origin, subject, epoch, seq, ts) of each stream's newest eviction, oldest first."""
        return self.query("SELECT origin, subject, epoch, seq, ts FROM evicted ORDER BY rowid")

    def recorded(self, first, count, body):
        """A batch recorded: ``first`` its first entry, ``count`` its messages, ``body`` its envelope's body."""
        self.queue(_RECORD, (first.n, first.subject, count, first.n, body))
        self._streams[(first.origin, first.subject)] = (first.epoch, first.seq + count - 1, first.ts)

    def evicted(self, entry, newest):
        self.queued += 1
        self._live[entry.subject] = entry.n + 1
        key = (entry.origin, entry.subject)
        hole = self._holes.get(key)
        self._newest.pop(key, None)
        self._newest[key] = max(newest, hole) if hole else newest
        self._forgotten.discard(key)

    def forgot(self, origin, subject):
        key = (origin, subject)
        if key in self._holes:
            return  # still needed: what was before the hole is not all on disk
        self.queued += 1
        self._newest.pop(key, None)
        self._forgotten.add(key)

    def changes(self):
        ops = super().changes()
        live, newest, forgotten = self._live, self._newest, self._forgotten
        self._taken = (live, newest, forgotten, self._streams)
        self._live, self._newest, self._forgotten, self._streams = {}, {}, set(), {}
        for sql, rows in ((_EVICT_WHOLE, list(live.items())), (_EVICT_PART, list(live.items())),
                          (_FORGET, list(forgotten)),
                          (_NEWEST_EVICTED, [(*key, *position) for key, position in newest.items()])):
            if rows:
                ops.append([sql, rows])
        return ops

    def lost(self):
        """Queue again what the failed transaction took, but its batches: in their place, each
        of their streams counts as evicted up to the last message not written."""
        live, newest, forgotten, streams = self._taken
        for subject, n in live.items():
            self._live[subject] = max(n, self._live.get(subject, 0))
        for key, position in streams.items():
            self._holes[key] = max(position, self._holes.get(key, position))
            newest[key] = max(self._holes[key], newest.get(key, self._holes[key]))
            forgotten.discard(key)
        for key, position in self._newest.items():  # noted since: newer, so after (rowid order is eviction order)
            newest[key] = max(position, newest.pop(key, position))
        self._newest = newest
        self._forgotten |= forgotten - set(newest)
        self.queued += len(live) + len(newest) + len(forgotten)  # to be written again
