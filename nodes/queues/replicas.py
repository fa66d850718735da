"""Job replicas (``--job-replicas R``): copies of the jobs this node holds at
R-1 other nodes, and the shadows this node keeps of the jobs other nodes hold.

**As a holder.** The job book (nodes/queues/jobs.py) tells this part each
job it takes, each new attempt and each job it lets go (acknowledged or
dead-lettered). Every BATCH_SECONDS what changed goes to each of the node's
replicas (nodes/placement.py ``replicas_of`` over its membership) as
``job_copies`` control requests (docs/PROTOCOL.md 7.7) on the node's Relay
channel to that replica, one request at a time per replica, each waiting for
its answer: copies arrive in order and the holder knows which arrived. A
replica that is new to this node, that did not answer, or that answers
``need_snapshot`` gets every held job first (``reset``), in requests of at
most CHUNK_BYTES. A job whose record alone is larger is not copied (counted
``too_large``).

**As a replica.** One shadow per (holder, instance): that holder's jobs, in
memory. When membership shows another instance of the holder that
``resumes`` this one (restarted on its ``--data-dir``: it restored these
jobs), the shadow is left to it: the successor sends it back
(``job_return``), and the holder takes the jobs its disk had not kept (the
last ones before the kill, or all since its disk was full). When membership shows another instance that
does not, or lists none for ADOPT_GRACE_SECONDS (a node restarted at once
is back within it), the holder's successor (``placement.successor`` over
the membership without it) adopts the shadow into its own job book: each job held for the member
that was doing it until its deadline (a worker whose acknowledgement finds
the holder gone sends it to every node: mesh/settle.py), or, without one,
given to a worker at the next tick; all copied on to the adopter's own
replicas. The other replicas forget the shadow.

At least once, no consensus: what changed at the holder in its last
BATCH_SECONDS (and had not reached a replica) is lost with it or comes back
(an acknowledgement not copied yet); an attempt whose worker does not
acknowledge it at the successor by its deadline is given out again.
"""

import collections
import logging

import gevent
import gevent.event
import msgpack
import zmq

from mesh.control import ControlError
from mesh.members import validate_name
from nodes.control import Feature, RequestError, flag
from nodes.placement import replicas_of, successor

from .jobs import job_settings

log = logging.getLogger("meshnode.replicas")

BATCH_SECONDS = 0.05  # how often what changed goes to the replicas: the window a holder's death loses
CHUNK_BYTES = 48 * 1024  # one request's records and ids (a control request holds at most 64 KiB)
MAX_OUTBOX = 200  # requests waiting for one replica before it is given a full copy instead
RETRY_SECONDS = 1.0  # after a replica did not take a request
ADOPT_GRACE_SECONDS = 0.5  # a holder membership lists no process of before its successor adopts its jobs
RECORD_FIELDS = ("id", "group", "pattern", "settings", "subject", "data", "origin", "epoch", "seq", "carried",
                 "attempt")


def _valid_record(record):
    if not isinstance(record, dict) or any(name not in record for name in RECORD_FIELDS):
        raise ValueError(f"each held job is a map with {', '.join(RECORD_FIELDS)}")
    for name in ("id", "group", "pattern", "subject", "origin"):
        if not isinstance(record[name], str):
            raise ValueError(f"a held job's {name} must be a string")
    for name in ("epoch", "seq", "attempt"):
        if type(record[name]) is not int or record[name] < 0:
            raise ValueError(f"a held job's {name} must be an integer, 0 or more")
    record["settings"] = job_settings(record["settings"])
    if not isinstance(record["carried"], dict):
        raise ValueError("a held job's carried headers must be a map")
    member, deadline = record.get("member"), record.get("deadline")
    if member is not None and not isinstance(member, str):
        raise ValueError("a held job's member must be a string or nil")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))):
        raise ValueError("a held job's deadline must be a number (Unix seconds) or nil")
    return record


def chunks(records, released, fields):
    """``job_copies`` requests (``fields`` in each) carrying ``records`` and the ``released`` ids,
    each at most CHUNK_BYTES of them; and the records too large for any."""
    requests, held, ids, size, too_large = [], [], [], 0, 0
    for kind, items in (("held", records), ("released", released)):
        for item in items:
            length = len(msgpack.packb(item))
            if length > CHUNK_BYTES:
                too_large += 1
                continue
            if size + length > CHUNK_BYTES:
                requests.append({**fields, "held": held, "released": ids})
                held, ids, size = [], [], 0
            (held if kind == "held" else ids).append(item)
            size += length
    if held or ids or not requests:
        requests.append({**fields, "held": held, "released": ids})
    return requests, too_large


class Replica:
    """One node keeping copies of this node's jobs: what waits to be sent to it, and its sender."""

    def __init__(self, record):
        self.record = record
        self.outbox = collections.deque()  # job_copies fields, in order
        self.snapshot_due = True  # it gets every held job before any change
        self.sending = False  # a request is on its way, not answered yet
        self.wake = gevent.event.Event()
        self.sender = None

    @property
    def unsent(self):
        """Requests that have not reached it yet (a full copy due counts one)."""
        return len(self.outbox) + self.snapshot_due + self.sending


class Shadow:
    """Another node's held jobs, as its copies told this node."""

    def __init__(self, copies):
        self.copies = copies  # the holder's --job-replicas: whose successor this node may be
        self.jobs = {}  # id -> record
        self.seen = False  # membership has listed this instance: only then can it be gone


class JobReplicas(Feature):
    def __init__(self, me, instance, copies, channel, book):
        """``channel(record)``: the Relay's control channel to a peer (nodes/relay.py);
        ``book(create)``: this node's JobBook (made if ``create``, else None if there is none yet)."""
        self.me, self.instance, self.copies = me, instance, copies
        self._channel = channel
        self._book = book
        self._members = {}  # name -> member record, this node not among them
        self._replicas = {}  # name -> Replica
        self._changed = {}  # id -> Job taken or attempted since the last batch
        self._released = []  # ids let go since the last batch
        self._flusher = None
        self.shadows = {}  # (holder, instance) -> Shadow
        self._waiting = {}  # (holder, instance) -> the greenlet settling it once ADOPT_GRACE_SECONDS have passed
        self.sent = self.failed = self.snapshots = self.too_large = self.adopted = self.need_snapshot = 0
        self.left_to_holder = 0  # shadows left to their holder, restarted on its own disk
        self.given_back = 0  # jobs such a holder took back from this node's copies (its disk lacked them)
        self.taken_back = 0  # jobs this node, restarted, took back from its successor's copies
        self.resumes = None  # the instance whose jobs this process restored from its disk (nodes/node.py)

    # -- the job book's side (nodes/queues/jobs.py keepers) ----------------

    def held(self, job):
        self._changed[job.id] = job

    attempted = extended = held

    def released(self, job):
        self._changed.pop(job.id, None)
        self._released.append(job.id)

    # -- running -----------------------------------------------------------

    def start(self):
        if self.copies > 1:
            self._flusher = gevent.spawn(self._flush_loop)

    def stop(self):
        for greenlet in [self._flusher, *(replica.sender for replica in self._replicas.values()),
                         *self._waiting.values()]:
            if greenlet is not None:
                greenlet.kill(block=False)

    def members_changed(self, members):
        """The membership now (name -> record, this node not among them): who keeps copies of this
        node's jobs, and what becomes of the shadows of holders that are gone."""
        self._members = dict(members)
        names = {*members, self.me}
        if self.copies > 1:
            wanted = {name: members[name] for name in replicas_of(self.me, names, self.copies)}
            for name in list(self._replicas):
                replica = self._replicas[name]
                if wanted.get(name, {}).get("instance") != replica.record["instance"]:
                    replica.sender.kill(block=False)
                    del self._replicas[name]
            for name, record in wanted.items():
                if name not in self._replicas:
                    replica = self._replicas[name] = Replica(record)
                    replica.sender = gevent.spawn(self._send_loop, replica)
                    replica.wake.set()
        for key in list(self.shadows):
            self._settle(key)

    def _settle(self, key, waited=False):
        """What becomes of the shadow ``key`` with the membership now (PROTOCOL.md 7.7)."""
        shadow = self.shadows.get(key)
        if shadow is None:
            return
        holder, instance = key
        record, names = self._members.get(holder), {*self._members, self.me}
        if record is not None and record.get("instance") == instance:
            shadow.seen = True
            waiting = self._waiting.pop(key, None)
            if waiting is not None:  # back within the grace: a later absence waits a whole grace again
                waiting.kill(block=False)
            if self.me not in replicas_of(holder, names, shadow.copies):
                del self.shadows[key]  # another node keeps its copies now
        elif record is not None and record.get("resumes") == instance:
            del self.shadows[key]  # restarted on its own disk: it holds these jobs again
            if successor(holder, names - {holder}, shadow.copies) == self.me and shadow.jobs:
                gevent.spawn(self._give_back, key, record, shadow)  # what its disk had not kept, it takes
            else:
                self.left_to_holder += 1
        elif not shadow.seen:
            return  # copies of an instance membership has not listed yet: it cannot be gone
        elif record is None and not waited:
            if key not in self._waiting:  # a node restarted at once is back within the grace
                self._waiting[key] = gevent.spawn_later(ADOPT_GRACE_SECONDS, self._settle_late, key)
        else:  # gone, or back as another process without these jobs
            del self.shadows[key]
            if successor(holder, names - {holder}, shadow.copies) == self.me:
                self._adopt(holder, shadow)

    def _give_back(self, key, record, shadow):
        """Send the restarted holder its killed instance's jobs as copied here (``job_return``):
        it takes those its disk did not keep. If it does not take them, the copies are kept
        and settled again."""
        requests, _ = chunks(list(shadow.jobs.values()), [], {"instance": key[1]})
        taken = 0
        try:
            for fields in requests:
                del fields["released"]
                taken += self._channel(record).request("job_return", **fields)["taken"]
        except (ControlError, TimeoutError, zmq.ZMQError, KeyError, TypeError) as exc:
            log.info("%s did not take back its jobs (%s): copies kept", key[0], exc)
            self.shadows.setdefault(key, shadow)
            return
        self.left_to_holder += 1
        self.given_back += taken
        log.info("%s restarted on its disk and holds its jobs again, %d of them from the copies here", key[0],
                 taken)

    def _settle_late(self, key):
        self._waiting.pop(key, None)
        self._settle(key, waited=True)

    def _adopt(self, holder, shadow):
        adopted = self._book(True).adopt(shadow.jobs.values())
        self.adopted += adopted
        log.info("took over %d jobs of %s, which left the mesh", adopted, holder)

    # -- holder: sending copies ------------------------------------------

    def _flush_loop(self):
        while True:
            gevent.sleep(BATCH_SECONDS)
            if not self._replicas:
                self._changed, self._released = {}, []
            if not (self._changed or self._released):
                continue
            records = [job.record() for job in self._changed.values()]
            requests, too_large = chunks(records, self._released, self._fields(False))
            self.too_large += too_large
            self._changed, self._released = {}, []
            for replica in self._replicas.values():
                if replica.snapshot_due:
                    continue  # the full copy it gets next has all this
                replica.outbox.extend(requests)
                if len(replica.outbox) > MAX_OUTBOX:
                    replica.snapshot_due = True
                replica.wake.set()

    def _fields(self, reset):
        return {"holder": self.me, "instance": self.instance, "copies": self.copies, "reset": reset}

    def _snapshot(self):
        """Every job held now, the first request with ``reset``."""
        book = self._book(False)
        jobs = book.jobs.values() if book is not None else ()
        requests, too_large = chunks([job.record() for job in jobs], [], self._fields(False))
        requests[0]["reset"] = True
        self.too_large += too_large
        self.snapshots += 1
        return requests

    def _send_loop(self, replica):
        while True:
            replica.wake.wait()
            replica.wake.clear()
            while replica.snapshot_due or replica.outbox:
                if replica.snapshot_due:
                    replica.snapshot_due = False
                    replica.outbox.clear()
                    replica.outbox.extend(self._snapshot())
                fields = replica.outbox.popleft()
                replica.sending = True
                try:
                    self._channel(replica.record).request("job_copies", **fields)
                    self.sent += 1
                except ControlError as exc:
                    if exc.code == "need_snapshot":
                        self.need_snapshot += 1
                    else:
                        self._failed(replica, exc)
                    replica.snapshot_due = True
                except (TimeoutError, zmq.ZMQError) as exc:
                    self._failed(replica, exc)
                    replica.snapshot_due = True
                finally:
                    replica.sending = False

    def _failed(self, replica, exc):
        self.failed += 1
        log.info("job copies to %s not taken (%s): a full copy follows", replica.record["name"], exc)
        gevent.sleep(RETRY_SECONDS)

    # -- replica: the command --------------------------------------------

    def commands(self):
        return {"job_copies": self.cmd_job_copies, "job_return": self.cmd_job_return}

    def cmd_job_return(self, request):
        """The jobs of the instance this process resumes, as its successor copied them
        (docs/PROTOCOL.md 7.7): held here too if not held already."""
        instance, held = request.get("instance"), request.get("held", [])
        try:
            if not isinstance(instance, str) or instance != self.resumes:
                raise ValueError(f"this node resumes instance {self.resumes!r}, not {instance!r}")
            if not isinstance(held, list):
                raise ValueError("held must be a list")
            held = [_valid_record(record) for record in held]
        except ValueError as exc:
            raise RequestError("bad_request", str(exc)) from None
        taken = self._book(True).take_back(held)
        self.taken_back += taken
        if taken:
            log.info("took back %d jobs its disk had not kept, from its successor's copies", taken)
        return {"taken": taken}

    def cmd_job_copies(self, request):
        """Another node's held jobs (docs/PROTOCOL.md 7.7)."""
        holder, instance, copies = request.get("holder"), request.get("instance"), request.get("copies")
        reset = flag(request, "reset", False)
        held, released = request.get("held", []), request.get("released", [])
        try:
            validate_name(holder, "holder")
            if not isinstance(instance, str) or not instance:
                raise ValueError("instance must be the holder's member-record instance")
            if type(copies) is not int or copies < 2:
                raise ValueError("copies must be the holder's --job-replicas, an integer of 2 or more")
            if not isinstance(held, list) or not isinstance(released, list):
                raise ValueError("held and released must be lists")
            held = [_valid_record(record) for record in held]
            if not all(isinstance(job_id, str) for job_id in released):
                raise ValueError("released must be a list of job ids")
        except ValueError as exc:
            raise RequestError("bad_request", str(exc)) from None
        key = (holder, instance)
        shadow = self.shadows.get(key)
        if reset:
            seen = (shadow is not None and shadow.seen) or self._members.get(holder, {}).get("instance") == instance
            shadow = self.shadows[key] = Shadow(copies)
            shadow.seen = seen
        elif shadow is None:
            raise RequestError("need_snapshot", f"this node keeps no copies of {holder}'s jobs: send them all")
        for record in held:
            shadow.jobs[record["id"]] = record
        for job_id in released:
            shadow.jobs.pop(job_id, None)
        return {}

    def stats(self):
        if self.copies == 1 and not self.shadows and not self.adopted and not self.taken_back:
            return {}
        return {"job_replicas": {
            "copies": self.copies, "replicas": sorted(self._replicas), "sent": self.sent, "failed": self.failed,
            "snapshots": self.snapshots, "need_snapshot": self.need_snapshot, "too_large": self.too_large,
            "shadows": {f"{holder}/{instance}": len(shadow.jobs) for (holder, instance), shadow in
                        self.shadows.items()},
            "unsent": bool(self._changed or self._released) + sum(r.unsent for r in self._replicas.values()),
            "adopted": self.adopted, "left_to_holder": self.left_to_holder, "given_back": self.given_back,
            "taken_back": self.taken_back}}
