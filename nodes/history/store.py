"""History on disk (``--data-dir``): the recorder's messages and evictions, kept across restarts.

The recorder (nodes/history/recorder.py) keeps its history in memory and
tells this store each batch it records (a publisher's consecutive messages
on one subject, as they came: one envelope) and each message it evicts; the
store writes them to ``DIR/history.sqlite`` (nodes/disk.py: a batch per
transaction, from a thread). A batch is one row holding the envelope's body
as it came, with the arrival number of its first message, its count, the
arrival number of its first message still held and, for a replica's copy,
the holder it was published at (messages copied from a holder's older
history, :meth:`HistoryStore.recorded_copies`, are batched here the same
way): a subject's messages
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

from mesh.envelope import BatchEncoder, decode_batch

from nodes.disk import DiskFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (n INTEGER PRIMARY KEY, subject TEXT NOT NULL, count INTEGER NOT NULL,
    live INTEGER NOT NULL, body BLOB NOT NULL, at TEXT);
CREATE INDEX IF NOT EXISTS batches_of_subject ON batches (subject, n);
CREATE TABLE IF NOT EXISTS evicted (origin TEXT NOT NULL, subject TEXT NOT NULL, epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL, ts REAL NOT NULL, PRIMARY KEY (origin, subject));
"""
_RECORD = "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?, ?)"
_EVICT_WHOLE = "DELETE FROM batches WHERE subject = ?1 AND n < ?2 AND n + count <= ?2"
_EVICT_PART = "UPDATE batches SET live = ?2 WHERE subject = ?1 AND n < ?2 AND live < ?2"
_NEWEST_EVICTED = "INSERT OR REPLACE INTO evicted VALUES (?, ?, ?, ?, ?)"  # re-inserted: rowid order is eviction order
_FORGET = "DELETE FROM evicted WHERE origin = ? AND subject = ?"


class HistoryStore(DiskFile):
    def __init__(self, directory, fsync="batch"):
        super().__init__(os.path.join(directory, "history.sqlite"), SCHEMA, fsync)
        self.add_columns("batches", [("at", "TEXT")])  # a file written before copies were marked: all its own
        self._live = {}  # subject -> arrival number of its first message still held, since the last changes()
        self._newest = {}  # (origin, subject) -> (epoch, seq, ts) newest evicted, in eviction order, likewise
        self._forgotten = set()  # (origin, subject) whose eviction is forgotten, likewise
        self._streams = {}  # (origin, subject) -> (epoch, seq, ts) of the last message of the batches queued
        self._taken = ({}, {}, set(), {})  # what the last changes() took: the four above
        self._holes = {}  # (origin, subject) -> (epoch, seq, ts): the newest message a failed write left off

    def messages(self):
        """(n, subject, origin, epoch, seq, ts, packed data, at) of every message held, in arrival order."""
        newest = {(origin, subject): (epoch, seq) for origin, subject, epoch, seq, _ in self.evictions()}
        held = []
        for first, subject, _, live, body, at in self.query(
                "SELECT n, subject, count, live, body, at FROM batches ORDER BY n"):
            origin, epoch, seq, ts, payloads = decode_batch(body)
            evicted_to = newest.get((origin, subject), (-1, -1))
            for i in range(max(0, live - first), len(payloads)):
                if (epoch, seq + i) > evicted_to:  # not before a stream's hole (a failed write)
                    held.append((first + i, subject, origin, epoch, seq + i, ts, msgpack.packb(payloads[i]), at))
        return held

    def evictions(self):
        """(origin, subject, epoch, seq, ts) of each stream's newest eviction, oldest first."""
        return self.query("SELECT origin, subject, epoch, seq, ts FROM evicted ORDER BY rowid")

    def recorded(self, first, count, body, skip=0):
        """A batch recorded: ``first`` its first entry held, ``count`` its messages, ``body`` its
        envelope's body; ``skip``: messages before ``first`` in it, numbered but held already."""
        self.queue(_RECORD, (first.n - skip, first.subject, count, first.n, body, first.at))
        key, last = (first.origin, first.subject), (first.epoch, first.seq + count - skip - 1, first.ts)
        self._streams[key] = max(last, self._streams.get(key, last))

    def recorded_copies(self, entries):
        """Entries copied from a holder's older history (recorder.record_copies), in arrival
        order: a batch per run of one stream's consecutive messages of one publish time."""
        run = []
        for entry in [*entries, None]:
            if run and (entry is None or (entry.subject, entry.origin, entry.epoch, entry.ts, entry.at, entry.n)
                        != (run[0].subject, run[0].origin, run[0].epoch, run[0].ts, run[0].at, run[-1].n + 1)
                        or entry.seq != run[-1].seq + 1):
                first = run[0]
                parts = [None, *(entry.packed for entry in run)]
                self.recorded(first, len(run), BatchEncoder(first.origin).batch(first.epoch, first.seq, first.ts, parts))
                run = []
            if entry is not None:
                run.append(entry)

    def evicted(self, entry):
        """``entry`` evicted: its subject's messages before it are gone too (arrival order)."""
        self.queued += 1
        self._live[entry.subject] = entry.n + 1

    def newest_evicted(self, key, newest):
        """Stream ``key``'s newest evicted message is now ``newest`` (epoch, seq, ts)."""
        self.queued += 1
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
