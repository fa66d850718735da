"""A node's durable file (``--data-dir``): one SQLite database in WAL mode, written a batch at a time.

Its owner (history: nodes/history/store.py; jobs: nodes/queues/jobstore.py)
queues changes, each an SQL statement and its row, in memory. A greenlet
takes what has queued every FLUSH_SECONDS (or, when a write took longer,
everything that queued meanwhile) and writes it as one transaction from a
thread of gevent's pool: the hub, and with it the node's control and edge,
never waits for the disk. When a change is on disk:

* it is in the file (the operating system's cache) once its transaction
  commits: at most FLUSH_SECONDS plus one write after it was queued. A
  ``kill -9`` of the node loses only what had not been written yet (stats:
  ``pending``);
* ``--fsync batch`` (the default) fsyncs every transaction before the next
  one starts (SQLite ``synchronous=FULL``): a power cut loses at most the
  changes of the last FLUSH_SECONDS and the write under way;
* ``--fsync never`` leaves it to the operating system (``synchronous=NORMAL``:
  the write-ahead log is fsynced at checkpoints only): a power cut can lose
  every change since the last checkpoint (about 4 MB of log), never the
  file's consistency.

A transaction that fails (a full disk) is rolled back: its changes are not
on disk and are not written again (the owner's :meth:`DiskFile.lost` hook
is told, to keep what is on disk honest). The node goes on from memory.
A failure is logged, and then the first write that succeeds again; at most
once every FAILURE_LOG_SECONDS (a nearly full disk fails and succeeds by
turns); every failure is counted (stats: ``errors``, ``failed``,
``last_error``, ``failing``). Writes resume by themselves once space comes
back: every transaction is tried.
"""

import logging
import os
import sqlite3
import time

import gevent

log = logging.getLogger("meshnode.disk")

FLUSH_SECONDS = 0.05
FAILURE_LOG_SECONDS = 60.0
FSYNC_POLICIES = {"batch": "FULL", "never": "NORMAL"}


class DiskFile:
    def __init__(self, path, schema, fsync="batch"):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"--fsync {fsync!r}: one of {', '.join(FSYNC_POLICIES)}")
        self.path, self.fsync = path, fsync
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={FSYNC_POLICIES[fsync]}")
            self._db.executescript(schema)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise ValueError(f"--data-dir: cannot use {path}: {exc}") from None
        self._ops = []  # [sql, [rows]] in the order queued; one statement's run of rows kept together
        self.queued = self.written = self.failed = self.transactions = self.errors = 0
        self.last_error = None  # the newest failure's text
        self.failing = False  # the newest transaction failed
        self._logged_failure, self._quiet_until = False, 0.0  # whether this failing spell was logged; when the next may be
        self._loop = None

    def query(self, sql, args=()):
        """Run at start-up, before :meth:`start` (reads, and the writes of opening: autocommitted)."""
        return self._db.execute(sql, args).fetchall()

    def add_columns(self, table, columns):
        """Give a file written before them the ``columns`` ((name, SQL type), ...) of ``table``, empty."""
        present = {row[1] for row in self.query(f"PRAGMA table_info({table})")}
        for name, kind in columns:
            if name not in present:
                self.query(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def queue(self, sql, row):
        ops = self._ops
        if ops and ops[-1][0] is sql:
            ops[-1][1].append(row)
        else:
            ops.append([sql, [row]])
        self.queued += 1

    def changes(self):
        """Take what is queued: ``[[sql, [rows]], ...]``, written next as one
        transaction. An owner that keeps some changes its own way (folded
        together) extends this and :meth:`lost`."""
        ops, self._ops = self._ops, []
        return ops

    def lost(self):
        """The transaction of the last :meth:`changes` failed: none of it is on disk."""

    def start(self):
        self._loop = gevent.spawn(self._run)

    def _run(self):
        pool = gevent.get_hub().threadpool
        while True:
            gevent.sleep(FLUSH_SECONDS)
            self._flush(lambda ops: pool.apply(self._write, (ops,)))

    def _flush(self, write):
        """Write what is queued with ``write`` and count the outcome (in the hub)."""
        taken = self.queued - self.written - self.failed  # no write is under way: everything noted so far
        ops = self.changes()
        if not ops:
            return
        error = write(ops)
        if error is None:
            self.written += taken
            self.transactions += 1
            if self.failing and self._logged_failure:
                log.warning("writing to %s again; %d changes before this were not written", self.path, self.failed)
            self.failing = self._logged_failure = False
            return
        self.failed += taken
        self.errors += 1
        self.last_error = str(error)
        now = time.monotonic()
        if not self.failing and now >= self._quiet_until:  # a nearly full disk fails and succeeds by turns
            self._logged_failure, self._quiet_until = True, now + FAILURE_LOG_SECONDS
            log.error("could not write to %s: %s; what it holds stays in memory, every write is tried again, "
                      "failures are counted (stats: disk.errors, disk.failed) and logged once a minute at most",
                      self.path, error)
        self.failing = True
        self.lost()

    def _write(self, ops):
        """One transaction (in a real thread); the sqlite3.Error if it failed (rolled back)."""
        try:
            with self._db:
                self._db.execute("BEGIN")
                for sql, batch in ops:
                    self._db.executemany(sql, batch)
        except sqlite3.Error as exc:
            return exc
        return None

    def stop(self):
        """Write what is queued, then close."""
        if self._loop is not None:
            self._loop.kill()
        self._flush(self._write)
        self._db.close()

    def counters(self):
        size = sum(os.path.getsize(self.path + suffix) for suffix in ("", "-wal") if os.path.exists(self.path + suffix))
        return {"path": self.path, "fsync": self.fsync, "pending": self.queued - self.written - self.failed,
                "written": self.written, "failed": self.failed, "transactions": self.transactions,
                "errors": self.errors, "failing": self.failing, "last_error": self.last_error, "file_bytes": size}
