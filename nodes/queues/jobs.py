"""Jobs: at-least-once work on top of queue groups, held by the node where each job was published.

A queue group whose members joined with an acknowledgement deadline is a job
group (mesh/queues.py). Its messages become jobs: the dispatcher of the node
where a job was published (nodes/queues/dispatcher.py) gives it to one member, as
for any queue group, and this book keeps it until that member acknowledges
it. A job whose deadline passes (the worker may extend it while it works), or
whose member is gone (its lease ran out: the worker's process or node died),
goes to another member with its attempt number raised; after the group's
maximum attempts it is published on the dead-letter subject
``$dead.<group>.<subject>`` instead, with its id, attempts and the reason in
its headers.

Each job keeps one id for all its attempts (``<group>:<origin>/<epoch>/<seq>``
of the publish), so workers can be idempotent. The book is in this node's
memory: if this node dies, the jobs it held and that were not acknowledged
are lost (docs/QUEUES.md), unless a store keeps them on disk (--data-dir):
then the restarted node holds them again; or other nodes keep copies
(--job-replicas, nodes/queues/replicas.py): then one of them adopts them.
Both keep each attempt's member and deadline, so a restored or adopted job
stays with the worker that was doing it until its deadline
(``Job.from_record``), and that worker's acknowledgement settles it here.
At most MAX_JOBS wait per group per node; a job beyond that goes straight
to the dead-letter subject, reason ``full``.
"""

import time

from mesh.queues import LEASE_SECONDS

DEAD_LETTER_TOPIC = "$dead"
MAX_JOBS = 10_000
MAX_EXTEND_SECONDS = 3600.0


def job_settings(value):
    """A job group's settings (``queue_join``'s ``jobs``) checked: ``{"deadline": float, "attempts": int}``;
    ValueError otherwise."""
    if (not isinstance(value, dict) or isinstance(value.get("deadline"), bool)
            or not isinstance(value.get("deadline"), (int, float)) or not value["deadline"] > 0
            or type(value.get("attempts")) is not int or value["attempts"] < 1):
        raise ValueError("jobs is {\"deadline\": seconds > 0, \"attempts\": n >= 1}")
    return {"deadline": float(value["deadline"]), "attempts": value["attempts"]}


class Job:
    __slots__ = ("id", "key", "settings", "subject", "data", "origin", "carried", "attempt", "member", "deadline",
                 "grace")

    def __init__(self, key, settings, subject, data, origin, epoch, seq, carried):
        self.id = f"{key[0]}:{origin}/{epoch}/{seq}"  # a message can be a job of several groups
        self.key, self.settings, self.subject, self.data, self.origin = key, settings, subject, data, (origin, epoch, seq)
        self.carried = carried  # the publish's headers every delivery carries on (mesh/envelope.py CARRIED_HEADERS)
        self.attempt = 0
        self.member = None
        self.deadline = 0.0  # time.monotonic() when the member's attempt runs out
        self.grace = 0.0  # until then a member not (yet) heard from keeps a restored or adopted job

    @classmethod
    def from_record(cls, record, now):
        """A job kept outside this process (a job record, docs/PROTOCOL.md 7.7: the store's
        or a replica's copy), with its attempts so far. With the ``member`` that was doing it
        and its ``deadline`` (Unix seconds) it stays that member's until the deadline, at
        most the group's deadline from ``now``; a member not heard from within LEASE_SECONDS
        counts as gone. Without them it has no member: it goes to one at the next tick."""
        job = cls((record["group"], record["pattern"]), dict(record["settings"]), record["subject"],
                  record["data"], record["origin"], record["epoch"], record["seq"], record["carried"])
        job.attempt = record["attempt"]
        if record.get("member") is not None and record.get("deadline") is not None:
            job.member = record["member"]
            job.deadline = now + min(max(record["deadline"] - time.time(), 0.0), job.settings["deadline"])
            job.grace = now + LEASE_SECONDS
        return job

    def record(self):
        """This job as a job record (docs/PROTOCOL.md 7.7), its deadline in Unix seconds."""
        origin, epoch, seq = self.origin
        return {"id": self.id, "group": self.key[0], "pattern": self.key[1], "settings": self.settings,
                "subject": self.subject, "data": self.data, "origin": origin, "epoch": epoch, "seq": seq,
                "carried": self.carried, "attempt": self.attempt, "member": self.member, "deadline": self.until()}

    def until(self):
        """The member's deadline in Unix seconds (what outlives this process), None without a member."""
        return None if self.member is None else time.time() + self.deadline - time.monotonic()


class JobBook:
    def __init__(self, groups, send, pick, publish_dead, node_name, store=None, copies=None):
        """``groups``: the dispatcher's (name, pattern) -> Group; ``send(member,
        group, subject, data, headers)`` delivers to a member's inbox;
        ``pick(group, exclude)`` chooses a member; ``publish_dead(subject, data,
        headers)`` publishes a dead letter; ``store``: a JobStore
        (nodes/queues/jobstore.py) keeping the jobs on disk, or None;
        ``copies``: the JobReplicas (nodes/queues/replicas.py) sending them to
        other nodes, or None. Both are told each job taken (``held``), each
        new attempt (``attempted``: its member and deadline), each deadline
        extended (``extended``) and each job let go (``released``)."""
        self.store = store
        self._keepers = [keeper for keeper in (store, copies) if keeper is not None]
        self._groups = groups
        self._send, self._pick, self._publish_dead = send, pick, publish_dead
        self.node = node_name
        self.jobs = {}  # id -> Job
        self.per_group = {}  # group key -> number of jobs held
        self.acked = self.redelivered = self.dead = self.refused_acks = 0
        self.restored = self.adopted = self.resumed = 0
        self._restored_ids = set()  # every job read back from the disk, held still or let go since
        if store is not None:
            now = time.monotonic()
            for record in store.jobs():
                job = self._resume(Job.from_record(record, now))
                self._restored_ids.add(job.id)
                self.jobs[job.id] = job
                self.per_group[job.key] = self.per_group.get(job.key, 0) + 1
                self.restored += 1
                if copies is not None:
                    copies.held(job)  # on disk already; its replicas get it with the next batch

    def submit(self, group, subject, data, origin, epoch, seq, carried=None):
        key = (group.name, group.pattern.text)
        job = Job(key, dict(group.jobs), subject, data, origin, epoch, seq, carried or {})
        if self._take(job):
            self._deliver(job)

    def adopt(self, records):
        """Hold the jobs of a node that left the mesh (records as nodes/queues/replicas.py
        copies them), each with its attempts so far and, until its deadline, the member
        that was doing it (Job.from_record). Returns how many were taken (not those held
        here already)."""
        taken, now = 0, time.monotonic()
        for record in records:
            if record["id"] in self.jobs:
                continue
            if self._take(self._resume(Job.from_record(record, now))):
                taken += 1
        self.adopted += taken
        return taken

    def take_back(self, records):
        """Jobs of the process this one resumes, as a replica copied them: those the disk did
        not keep (read back, held still or let go since, they are skipped) are adopted.
        Returns how many."""
        return self.adopt([record for record in records if record["id"] not in self._restored_ids])

    def _resume(self, job):
        if job.member is not None:
            self.resumed += 1
        return job

    def _take(self, job):
        """Hold a job, or dead-letter it (``full``); True if held."""
        if self.per_group.get(job.key, 0) >= MAX_JOBS:
            self._dead_letter(job, "full")
            return False
        self.jobs[job.id] = job
        self.per_group[job.key] = self.per_group.get(job.key, 0) + 1
        self._keep("held", job)
        return True

    def _keep(self, change, job):
        for keeper in self._keepers:
            getattr(keeper, change)(job)

    def _deliver(self, job, exclude=None):
        if job.attempt >= job.settings["attempts"]:
            self._forget(job)
            self._dead_letter(job, "attempts")
            return
        group = self._groups.get(job.key)
        member = None if group is None else self._pick(group, exclude)
        if member is None:  # nobody to take it now: try again at the next tick
            job.member, job.deadline = None, 0.0
            return
        job.attempt += 1
        job.member = member.member
        job.deadline = time.monotonic() + job.settings["deadline"]
        self._keep("attempted", job)
        origin, epoch, seq = job.origin
        self._send(member, group, job.subject, job.data,
                   {**job.carried, "o": origin, "e": epoch, "n": seq, "j": job.id, "a": job.attempt, "h": self.node})

    def _dead_letter(self, job, reason):
        self.dead += 1
        self._publish_dead(f"{DEAD_LETTER_TOPIC}.{job.key[0]}.{job.subject}", job.data,
                           {"j": job.id, "a": job.attempt, "reason": reason, "s": job.subject})

    def _forget(self, job):
        if self.jobs.pop(job.id, None) is not None:
            self.per_group[job.key] -= 1
            self._keep("released", job)

    def ack(self, job_id, member):
        """The member finished the job; ValueError if it holds no such job."""
        job = self._held_by(job_id, member)
        self._forget(job)
        self.acked += 1

    def extend(self, job_id, member, seconds):
        job = self._held_by(job_id, member)
        job.deadline = time.monotonic() + min(seconds, MAX_EXTEND_SECONDS)
        self._keep("extended", job)

    def _held_by(self, job_id, member):
        job = self.jobs.get(job_id)
        if job is None or job.member != member:
            self.refused_acks += 1
            raise ValueError(f"job {job_id!r} is not held for member {member!r} here "
                             f"(unknown, already acknowledged, or given to another member after its deadline)")
        return job

    def tick(self, now=None):
        """Redeliver what missed its deadline, lost its member (past its grace), or found no member."""
        now = time.monotonic() if now is None else now
        for job in list(self.jobs.values()):
            group = self._groups.get(job.key)
            gone = group is None or job.member not in group.members
            if job.member is None or job.deadline < now or (gone and now >= job.grace):
                previous = job.member
                if previous is not None:
                    self.redelivered += 1
                self._deliver(job, exclude=previous)

    def counters(self):
        return {"held": len(self.jobs), "acked": self.acked, "redelivered": self.redelivered, "dead": self.dead,
                "refused_acks": self.refused_acks, "restored": self.restored,
                "adopted": self.adopted, "resumed": self.resumed,
                **({"disk": self.store.counters()} if self.store is not None else {})}
