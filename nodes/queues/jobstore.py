"""Held jobs on disk (``--data-dir``): what the job book holds, kept across restarts.

The job book (nodes/jobs.py) tells this store each job it takes, each new
attempt and each job it lets go (acknowledged or dead-lettered); the store
writes them to ``DIR/jobs.sqlite`` (nodes/disk.py: a batch per transaction,
from a thread). When the node starts again, the book holds every job still
there with its attempts so far and no member: each goes to a member of its
group once one announces itself, its attempt number raised. A worker that
was doing it when the node died may finish it too: at least once, the job's
id tells the two apart.
"""

import os

import msgpack

from nodes.disk import DiskFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, grp TEXT NOT NULL, pattern TEXT NOT NULL,
    settings BLOB NOT NULL, subject TEXT NOT NULL, data BLOB NOT NULL, origin TEXT NOT NULL,
    epoch INTEGER NOT NULL, seq INTEGER NOT NULL, carried BLOB NOT NULL, attempt INTEGER NOT NULL);
"""
_HOLD = "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_ATTEMPT = "UPDATE jobs SET attempt = ? WHERE id = ?"
_RELEASE = "DELETE FROM jobs WHERE id = ?"


class JobStore(DiskFile):
    def __init__(self, directory, fsync="batch"):
        super().__init__(os.path.join(directory, "jobs.sqlite"), SCHEMA, fsync)

    def jobs(self):
        """((group, pattern), settings, subject, data, origin, epoch, seq, carried, attempt) of every job kept."""
        rows = self.query("SELECT grp, pattern, settings, subject, data, origin, epoch, seq, carried, attempt "
                          "FROM jobs ORDER BY rowid")
        return [((grp, pattern), msgpack.unpackb(settings), subject, msgpack.unpackb(data, raw=False), origin,
                 epoch, seq, msgpack.unpackb(carried), attempt)
                for grp, pattern, settings, subject, data, origin, epoch, seq, carried, attempt in rows]

    def held(self, job):
        origin, epoch, seq = job.origin
        self.queue(_HOLD, (job.id, job.key[0], job.key[1], msgpack.packb(job.settings), job.subject,
                           msgpack.packb(job.data), origin, epoch, seq, msgpack.packb(job.carried), job.attempt))

    def attempted(self, job):
        self.queue(_ATTEMPT, (job.attempt, job.id))

    def released(self, job):
        self.queue(_RELEASE, (job.id,))
