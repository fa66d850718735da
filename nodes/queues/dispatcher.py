"""Queue groups, the node's side: each message published here goes to one member of each group.

Members (mesh/queues.py) announce themselves to their node every half
second with ``queue_join`` (group, pattern, member id, capacity, messages
waiting); the node relays each announcement to its peers, so every node
knows every member of the mesh, and forgets one not heard from for
LEASE_SECONDS.

Each node dispatches the messages **published at it**: a SUB socket on its
own ``out``, subscribed only to the prefixes of the groups' patterns (libzmq
filters the rest; subjects with no group never reach Python). For each such
message and each group whose pattern matches, it picks the member with the
most room (capacity minus what waits there, counting what this node sent
since the member's last announcement; ties at random) and republishes the
message to that member's inbox topic ``$Q.<member>.<subject>``, with the
original subject, origin and sequence in its headers. The mesh delivers it
in one hop to that member only. A message that finds no member in its group
is counted (``no_member``) and dropped: queue groups are at most once.
"""

import logging
import random
import time

from mesh.envelope import CARRIED_HEADERS, MalformedMessage, decode_batch
from mesh.queues import INBOX_TOPIC, LEASE_SECONDS, valid_group
from mesh.subjects import Pattern

from nodes.tap import Tap

from .jobs import JobBook, job_settings

log = logging.getLogger("meshnode.dispatcher")

MAX_MEMBERS = 10_000
EXPIRY_SECONDS = 0.25  # how often leases and reachability are looked at


class Member:
    __slots__ = ("member", "node", "capacity", "pending", "sent", "expires", "reachable")

    def __init__(self, member, node):
        self.member, self.node = member, node
        self.capacity = self.pending = self.sent = 0
        self.expires = 0.0
        self.reachable = False  # its inbox subscription has reached this node

    def room(self):
        return self.capacity - self.pending - self.sent


class Group:
    def __init__(self, name, pattern):
        self.name = name
        self.pattern = Pattern(pattern)
        self.members = {}  # member id -> Member
        self.jobs = None  # {"deadline": s, "attempts": n} when its members asked for jobs (nodes/queues/jobs.py)


class Dispatcher(Tap):
    """A tap (nodes/tap.py) on the groups' prefixes; every EXPIRY_SECONDS it
    expires leases and lets the jobs time out."""

    tick_seconds = EXPIRY_SECONDS

    def __init__(self, context, out_endpoint, node_name, curve=None, store=None, copies=None):
        """``store``: a JobStore keeping the held jobs on disk (nodes/queues/jobstore.py), or None;
        ``copies``: the JobReplicas sending them to other nodes (nodes/queues/replicas.py), or None."""
        super().__init__(context, out_endpoint, curve)
        self.client = None  # a mesh Client of this node, set once connected: it publishes to the inboxes
        self.groups = {}  # (name, pattern text) -> Group
        self.dispatched = 0
        self.no_member = 0
        self.failed = 0
        self._prefixes = {}  # prefix -> number of groups using it
        self.jobs = JobBook(self.groups, self._send, self._pick, self._publish, node_name, store, copies)

    def start(self):
        super().start()
        if self.jobs.store is not None:
            self.jobs.store.start()

    def stop(self):
        super().stop()
        if self.jobs.store is not None:
            self.jobs.store.stop()

    # -- membership ------------------------------------------------------

    def join(self, record, node):
        """A member's announcement (validated here); True if it is new."""
        name, pattern_text, member_id = valid_group(record.get("group")), record.get("pattern"), record.get("member")
        pattern = Pattern(pattern_text)
        if not isinstance(member_id, str) or not member_id.isalnum() or len(member_id) > 64:
            raise ValueError("member must be 1-64 letters and digits")
        capacity, pending = record.get("capacity"), record.get("pending", 0)
        for value, what in ((capacity, "capacity"), (pending, "pending")):
            if type(value) is not int or value < 0:
                raise ValueError(f"{what} must be an integer, 0 or more")
        jobs = record.get("jobs")
        if jobs is not None:
            jobs = job_settings(jobs)
        key = (name, pattern.text)
        group = self.groups.get(key)
        member = group.members.get(member_id) if group is not None else None
        new = member is None
        if new and sum(len(g.members) for g in self.groups.values()) >= MAX_MEMBERS:
            raise ValueError(f"this node knows {MAX_MEMBERS} queue-group members already")
        if group is None:
            group = self.groups[key] = Group(name, pattern.text)
            self._subscribe(pattern.prefix)
        if new:
            member = group.members[member_id] = Member(member_id, node)
        member.capacity, member.pending, member.sent = capacity, pending, 0
        member.expires = time.monotonic() + LEASE_SECONDS
        group.jobs = jobs  # the latest announcement says how the group's work is acknowledged
        return new

    def leave(self, name, pattern_text, member_id):
        group = self.groups.get((name, pattern_text))
        if group is not None and group.members.pop(member_id, None) is not None and not group.members:
            self._drop(group)

    def _drop(self, group):
        del self.groups[(group.name, group.pattern.text)]
        self._unsubscribe(group.pattern.prefix)

    def _subscribe(self, prefix):
        self._prefixes[prefix] = self._prefixes.get(prefix, 0) + 1
        if self._prefixes[prefix] == 1:
            self.subscribe(prefix)

    def _unsubscribe(self, prefix):
        self._prefixes[prefix] -= 1
        if not self._prefixes[prefix]:
            del self._prefixes[prefix]
            self.unsubscribe(prefix)

    def expire(self, now=None):
        """Forget members whose lease ran out; look again whether the others' inboxes reached us."""
        now = time.monotonic() if now is None else now
        for group in list(self.groups.values()):
            for member_id, member in list(group.members.items()):
                if member.expires < now:
                    del group.members[member_id]
                else:  # gained, or lost (its client went away): look again
                    member.reachable = self._reaches(member)
            if not group.members:
                self._drop(group)

    # -- dispatching -----------------------------------------------------

    def tick(self, now):
        self.expire(now)
        if self.client is not None:
            self.jobs.tick(now)

    def take(self, subject, frames):
        try:
            self._dispatch(subject, frames)
        except MalformedMessage:
            raise
        except Exception as exc:  # one message must not stop every group of this node
            self.failed += 1
            log.warning("could not dispatch a message on %r: %s", frames[0][:80], exc)

    def _dispatch(self, subject, frames):
        if subject.startswith(INBOX_TOPIC + "."):
            return  # our own deliveries
        groups = [group for group in self.groups.values() if group.pattern.matches(subject)]
        if not groups:
            return
        origin, epoch, seq, ts, payloads, headers = decode_batch(frames[1], with_headers=True)
        headers = headers or {}
        reply = headers.get("reply")
        carried = {name: headers[name] for name in CARRIED_HEADERS if name in headers}
        if headers and not isinstance(reply, str) and not carried:
            return  # a reply, or headers we do not know: not queue work
        for i, data in enumerate(payloads):
            for group in groups:
                if group.jobs is not None and reply is None:
                    self.jobs.submit(group, subject, data, origin, epoch, seq + i, carried)
                    continue
                member = self._pick(group)
                if member is None:
                    self.no_member += 1
                    continue
                forwarded = {**carried, "o": origin, "e": epoch, "n": seq + i}
                if reply is not None:  # a request: one member of the group answers it
                    forwarded["reply"] = reply
                self._send(member, group, subject, data, forwarded)

    def _send(self, member, group, subject, data, headers):
        """Deliver to a member's inbox topic, the original subject in the headers."""
        member.sent += 1
        self.dispatched += 1
        self._publish(f"{INBOX_TOPIC}.{member.member}.{subject}", data,
                      {"q": group.name, "s": subject, "o": "", "e": 0, "n": 0, **headers})

    def _publish(self, subject, data, headers):
        self.client.publish(subject, data, headers)

    def _pick(self, group, exclude=None):
        """The reachable member with the most room (not ``exclude`` if another will do)."""
        best, best_room = None, None
        for member in group.members.values():
            if member.member == exclude and len(group.members) > 1:
                continue
            if not member.reachable:  # a message sent before its inbox reached us would be lost
                member.reachable = self._reaches(member)
                if not member.reachable:
                    continue
            room = member.room()
            if best is None or room > best_room or (room == best_room and random.random() < 0.5):
                best, best_room = member, room
        return best

    def _reaches(self, member):
        return self.client is not None and self.client.has_interest(f"{INBOX_TOPIC}.{member.member}.x")

    def counters(self):
        members = [m for g in self.groups.values() for m in g.members.values()]
        return {"groups": len(self.groups), "members": len(members),
                "reachable": sum(m.reachable for m in members),
                "dispatched": self.dispatched, "no_member": self.no_member, "malformed": self.malformed,
                "failed": self.failed, "jobs": self.jobs.counters()}
