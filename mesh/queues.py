"""Queue-group membership, the member's side: joining a group and saying how busy it is.

``client.subscribe(pattern, queue=GROUP)`` makes this client a member of
(GROUP, pattern): among all members in the mesh, each message on the
pattern goes to exactly one (nodes/queues/dispatcher.py picks it, at the node where
the message was published). The member does not subscribe to the pattern
itself: it subscribes to its own inbox topic ``$Q.<member id>.``, so only
what the dispatcher chose for it reaches it, in one hop.

Every HEARTBEAT_SECONDS the member tells its node (``queue_join``, relayed to
every peer) that it is alive and how many messages wait in its queue: the
dispatchers give more to members with room. A member not heard from for
LEASE_SECONDS is dropped by every node; unsubscribing sends ``queue_leave``.
"""

import logging
import threading
import uuid

from .control import ControlError
from .settle import Settler
from .concurrency import start_background

log = logging.getLogger("mesh.queues")

HEARTBEAT_SECONDS = 0.5
LEASE_SECONDS = 3.0
INBOX_TOPIC = "$Q"


def valid_group(name):
    if not isinstance(name, str) or not name or len(name) > 128 or any(c in name for c in " \t\r\n\x00."):
        raise ValueError(f"queue group {name!r}: 1-128 characters, no whitespace, NUL or '.'")
    return name


class Membership:
    """One queue-group subscription of this client."""

    def __init__(self, group, pattern_text, capacity, jobs=None):
        self.group = valid_group(group)
        self.pattern = pattern_text
        self.member = uuid.uuid4().hex
        self.capacity = capacity
        self.jobs = jobs  # {"deadline": s, "attempts": n}: the group's messages are jobs to acknowledge
        self.subscription = None

    @property
    def inbox_pattern(self):
        return f"{INBOX_TOPIC}.{self.member}.>"

    def record(self):
        sub = self.subscription
        return {"group": self.group, "pattern": self.pattern, "member": self.member, "capacity": self.capacity,
                "pending": sub.pending if sub is not None else 0, **({"jobs": self.jobs} if self.jobs else {})}


class Memberships:
    """This client's memberships and the heartbeat that keeps them alive."""

    def __init__(self, client):
        self._client = client
        self._members = {}  # member id -> Membership
        self.settler = Settler(client)  # acknowledgements, sent without waiting
        self._wake = threading.Event()
        self._started = False

    def join(self, membership, subscription):
        membership.subscription = subscription
        subscription.on_unsubscribe = lambda: self.leave(membership)
        self._members[membership.member] = membership
        self._send("queue_join", membership.record())
        if not self._started:
            self._started = True
            start_background(self._heartbeat, f"mesh-queues-{self._client.origin}")

    def leave(self, membership):
        if self._members.pop(membership.member, None) is not None:
            self._send("queue_leave", {"group": membership.group, "pattern": membership.pattern,
                                       "member": membership.member})

    def _send(self, cmd, fields):
        try:
            self._client.control.request(cmd, **fields)
        except (TimeoutError, ControlError) as exc:  # the node is away: the next heartbeat tries again
            log.debug("%s for group %s not answered: %s", cmd, fields.get("group"), exc)

    def _heartbeat(self):
        while not self._client.closed:
            self._wake.wait(HEARTBEAT_SECONDS)
            for membership in list(self._members.values()):
                if membership.subscription.closed:
                    self.leave(membership)
                else:
                    self._send("queue_join", membership.record())

    def stop(self):
        self.settler.stop()  # the last acknowledgements reach their holders before the member leaves
        for membership in list(self._members.values()):
            self.leave(membership)
        self._wake.set()

    def settle(self, message, cmd, **fields):
        """Acknowledge (``job_ack``) or extend (``job_extend``) a job at the
        node that holds it, without waiting: a Settlement (mesh/settle.py)."""
        holder, job = (message.headers or {}).get("h"), message.job
        group = (message.headers or {}).get("q")
        membership = next((m for m in self._members.values() if m.group == group and m.jobs), None)
        if job is None or holder is None or membership is None:
            raise ValueError("the message is not a job of one of this client's job groups")
        return self.settler.submit(holder, cmd, {"job": job, "member": membership.member, **fields},
                                   retry_for=membership.jobs["deadline"])  # as long as a holder keeps it for us
