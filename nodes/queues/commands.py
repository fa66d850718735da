"""Queue groups' control commands: ``queue_join`` and ``queue_leave`` (members'
announcements, relayed to the peers), ``job_ack`` and ``job_extend`` (workers
on the jobs this node holds). The dispatcher is made at the first member."""

from mesh.members import validate_name

from nodes.control import Feature, RequestError, flag

from .dispatcher import Dispatcher
from .jobs import MAX_EXTEND_SECONDS


class QueueGroups(Feature):
    def __init__(self, context, out_endpoint, node_name, relay, curve=None, on_first=None):
        """``relay``: the node's Relay (nodes/relay.py); ``on_first()``: called
        when the dispatcher is made (the node then makes its own client)."""
        self._context = context
        self._out = out_endpoint
        self.node_name = node_name
        self._relay = relay
        self._curve = curve
        self._on_first = on_first
        self.client = None
        self.dispatcher = None
        self.job_store = None  # a JobStore (nodes/queues/jobstore.py) the dispatcher keeps jobs in, or None
        self.job_copies = None  # a JobReplicas (nodes/queues/replicas.py) the dispatcher copies jobs to, or None

    def attach(self, client):
        """This node's own mesh Client, once connected: the dispatcher publishes with it."""
        self.client = client
        if self.dispatcher is not None:
            self.dispatcher.client = client

    def _dispatcher(self):
        """The dispatcher, made at the first queue-group member; its client may come later."""
        if self.dispatcher is None:
            self.dispatcher = Dispatcher(self._context, self._out, self.node_name, self._curve, self.job_store,
                                         self.job_copies)
            self.dispatcher.client = self.client
            self.dispatcher.start()
            if self._on_first is not None:
                self._on_first()
        return self.dispatcher

    def job_book(self, create):
        """This node's JobBook (nodes/queues/jobs.py): made with the dispatcher if ``create``,
        else None while there is none."""
        if self.dispatcher is None and not create:
            return None
        return self._dispatcher().jobs

    def stop(self):
        if self.dispatcher is not None:
            self.dispatcher.stop()

    def commands(self):
        return {"queue_join": self.cmd_queue_join, "queue_leave": self.cmd_queue_leave,
                "job_ack": self.cmd_job_ack, "job_extend": self.cmd_job_extend}

    def stats(self):
        return {"queues": self.dispatcher.counters()} if self.dispatcher is not None else {}

    def cmd_queue_join(self, request):
        """A queue-group member's announcement (mesh/queues.py), relayed to the peers."""
        fields = {key: request[key] for key in ("group", "pattern", "member", "capacity", "pending", "jobs")
                  if request.get(key) is not None}  # absent or nil: pending 0, no jobs
        relay = flag(request, "relay", True)
        try:
            node = request.get("node")  # the member's node, from a relaying node
            new = self._dispatcher().join(fields, self.node_name if node is None else validate_name(node))
        except (ValueError, TypeError) as exc:
            raise RequestError("bad_request", str(exc)) from None
        if relay:
            self._relay.tell("queue_join", {**fields, "node": self.node_name, "relay": False})
        return {"new": new}

    def cmd_queue_leave(self, request):
        fields = {key: request.get(key) for key in ("group", "pattern", "member")}
        if not all(isinstance(value, str) for value in fields.values()):
            raise RequestError("bad_request", "queue_leave needs group, pattern and member")
        relay = flag(request, "relay", True)
        if self.dispatcher is not None:
            self.dispatcher.leave(fields["group"], fields["pattern"], fields["member"])
        if relay:
            self._relay.tell("queue_leave", {**fields, "relay": False})
        return {}

    def cmd_job_ack(self, request):
        """A worker finished a job this node holds (nodes/queues/jobs.py)."""
        return self._job(request, lambda jobs, job, member: jobs.ack(job, member))

    def cmd_job_extend(self, request):
        """A worker needs longer for a job this node holds."""
        seconds = request.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_EXTEND_SECONDS:
            raise RequestError("bad_request",
                               f"seconds must be a number, more than 0 and at most {MAX_EXTEND_SECONDS:,.0f}")
        return self._job(request, lambda jobs, job, member: jobs.extend(job, member, seconds))

    def _job(self, request, action):
        job, member = request.get("job"), request.get("member")
        if not isinstance(job, str) or not isinstance(member, str):
            raise RequestError("bad_request", "job and member must be strings")
        jobs = self.job_book(self.job_store is not None)  # restored from the disk before any member came back
        if jobs is None:
            raise RequestError("unknown_job", f"job {job!r} is not held here: this node holds no jobs")
        try:
            action(jobs, job, member)
        except ValueError as exc:
            raise RequestError("unknown_job", str(exc)) from None
        return {}
