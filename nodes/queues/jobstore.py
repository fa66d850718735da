"""Held jobs on disk (``--data-dir``): what the job book holds, kept across restarts.

The job book (nodes/queues/jobs.py) tells this store each job it takes,
each new attempt (with the member it went to and its deadline), each
deadline extended and each job let go (acknowledged or dead-lettered); the
store writes them to ``DIR/jobs.sqlite`` (nodes/disk.py: a batch per
transaction, from a thread), the deadline as Unix seconds, and the
member-record instance of the process whose file it is. When the node
starts again, the book holds every job still there with its attempts so
far, for the member that was doing it until its deadline (Job.from_record):
that member's acknowledgement, sent again once the node is back
(mesh/settle.py), settles it; it goes to a member again only if none comes
by then. A file written before member and deadline were kept gets the two
columns, empty: such jobs go to a member at once.
"""

import os

import msgpack

from nodes.disk import DiskFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, grp TEXT NOT NULL, pattern TEXT NOT NULL,
    settings BLOB NOT NULL, subject TEXT NOT NULL, data BLOB NOT NULL, origin TEXT NOT NULL,
    epoch INTEGER NOT NULL, seq INTEGER NOT NULL, carried BLOB NOT NULL, attempt INTEGER NOT NULL,
    member TEXT, deadline REAL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_ADDED = (("member", "TEXT"), ("deadline", "REAL"))  # columns a file from before them lacks
_HOLD = "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_ATTEMPT = "UPDATE jobs SET attempt = ?, member = ?, deadline = ? WHERE id = ?"
_RELEASE = "DELETE FROM jobs WHERE id = ?"


class JobStore(DiskFile):
    def __init__(self, directory, fsync="batch"):
        super().__init__(os.path.join(directory, "jobs.sqlite"), SCHEMA, fsync)
        self.add_columns("jobs", _ADDED)

    def succeed(self, instance):
        """This file is now ``instance``'s (a member record's); returns the instance whose it
        was, whose held jobs this process restores (None for a new file)."""
        rows = self.query("SELECT value FROM meta WHERE key = 'instance'")
        self.query("INSERT OR REPLACE INTO meta VALUES ('instance', ?)", (instance,))
        return rows[0][0] if rows else None

    def holds_jobs(self):
        return bool(self.query("SELECT 1 FROM jobs LIMIT 1"))

    def jobs(self):
        """A job record (docs/PROTOCOL.md 7.7) of every job kept, in the order taken."""
        rows = self.query("SELECT id, grp, pattern, settings, subject, data, origin, epoch, seq, carried, attempt, "
                          "member, deadline FROM jobs ORDER BY rowid")
        return [{"id": job_id, "group": grp, "pattern": pattern, "settings": msgpack.unpackb(settings),
                 "subject": subject, "data": msgpack.unpackb(data, raw=False, strict_map_key=False),  # any keys
                 "origin": origin, "epoch": epoch, "seq": seq, "carried": msgpack.unpackb(carried),
                 "attempt": attempt, "member": member, "deadline": deadline}
                for (job_id, grp, pattern, settings, subject, data, origin, epoch, seq, carried, attempt, member,
                     deadline) in rows]

    def held(self, job):
        origin, epoch, seq = job.origin
        self.queue(_HOLD, (job.id, job.key[0], job.key[1], msgpack.packb(job.settings), job.subject,
                           msgpack.packb(job.data), origin, epoch, seq, msgpack.packb(job.carried), job.attempt,
                           job.member, job.until()))

    def attempted(self, job):
        self.queue(_ATTEMPT, (job.attempt, job.member, job.until(), job.id))

    extended = attempted

    def released(self, job):
        self.queue(_RELEASE, (job.id,))
