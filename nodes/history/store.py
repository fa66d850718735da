"""History on disk (``--data-dir``): the recorder's messages and evictions, kept across restarts.

The recorder (nodes/recorder.py) keeps its history in memory and tells this
store each message it records and each it evicts; the store writes them to
``DIR/history.sqlite`` (nodes/disk.py: a batch per transaction, from a
thread). At start-up the recorder reads back every message still held, in
arrival order, with its (origin, epoch, seq) and time, and the newest
eviction of every stream, so a restarted node answers ``history`` with what
it held, and ``evicted`` wherever it had evicted: continuity stays honest.
"""

import os

from nodes.disk import DiskFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (n INTEGER PRIMARY KEY, subject TEXT NOT NULL, origin TEXT NOT NULL,
    epoch INTEGER NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS evicted (origin TEXT NOT NULL, subject TEXT NOT NULL, epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL, ts REAL NOT NULL, PRIMARY KEY (origin, subject));
"""
_RECORD = "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)"
_EVICT = "DELETE FROM messages WHERE n = ?"
_NEWEST_EVICTED = "INSERT OR REPLACE INTO evicted VALUES (?, ?, ?, ?, ?)"  # re-inserted: rowid order is eviction order
_FORGET = "DELETE FROM evicted WHERE origin = ? AND subject = ?"


class HistoryStore(DiskFile):
    def __init__(self, directory, fsync="batch"):
        super().__init__(os.path.join(directory, "history.sqlite"), SCHEMA, fsync)

    def messages(self):
        """(n, subject, origin, epoch, seq, ts, packed data) of every message held, in arrival order."""
        return self.query("SELECT n, subject, origin, epoch, seq, ts, data FROM messages ORDER BY n")

    def evictions(self):
        """(origin, subject, epoch, seq, ts) of each stream's newest eviction, oldest first."""
        return self.query("SELECT origin, subject, epoch, seq, ts FROM evicted ORDER BY rowid")

    def recorded(self, entry):
        self.queue(_RECORD, (entry.n, entry.subject, entry.origin, entry.epoch, entry.seq, entry.ts, entry.packed))

    def evicted(self, entry, newest):
        self.queue(_EVICT, (entry.n,))
        self.queue(_NEWEST_EVICTED, (entry.origin, entry.subject, *newest))

    def forgot(self, origin, subject):
        self.queue(_FORGET, (origin, subject))
