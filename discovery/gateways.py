"""Gateway election and the directory of gateways, in ZooKeeper.

Layout: ``/meshnode/<mesh>/gateways/<group>/c-<instance>-<sequence>``,
ephemeral and sequential, one per candidate (a node run with ``--gateway``;
``instance`` is random per process start), holding ``{"name", "group",
"control", "gateway_out"}`` as JSON. In each group the candidate with the
lowest sequence number whose record is valid is the gateway; when it dies
its znode goes with its session and the next in line takes over. Sequence
numbers never repeat, so a record never changes once written: each is read
once. A candidate that stands again (after its session was lost, or after a
create whose answer was lost with the connection) first deletes any znode
its own instance left, so no orphan of a live session can hold the head of
the line; a node that took its name over from its own dead process deletes
that process's candidacy too.

A gateway steps down the moment its ZooKeeper connection is SUSPENDED (its
session may be expiring and a successor about to be elected) and stands
again once CONNECTED: two gateways of one group at once would deliver every
message that crosses twice. So a gateway cut off from ZooKeeper stops
forwarding between groups, while traffic inside each group goes on. This
rests on the gateway's gevent hub running: a process frozen longer than its
session (SIGSTOP, a paused VM) and then resumed forwards for the few
milliseconds before it learns that its session ended, and messages in that
window may reach other groups twice.
"""

import json
import logging
from functools import partial

import gevent
import gevent.event
import gevent.lock
from kazoo.client import KazooState
from kazoo.exceptions import KazooException, NoNodeError, ZookeeperError
from kazoo.recipe.watchers import ChildrenWatch

from mesh.members import validate_endpoint, validate_name
from mesh.zkmembers import ROOT

log = logging.getLogger("meshnode.discovery.gateways")

CANDIDATE_PREFIX = "c-"
MAX_LISTED_GROUPS = 1000  # the directory a candidate answers ``groups`` with
MAX_LISTED_CANDIDATES = 8  # per group, oldest (the gateway) first


def _sequence(child):
    """The sequence number of a candidate znode's name, or None for a name that is not one."""
    head, _, number = child.rpartition("-")
    return int(number) if head.startswith(CANDIDATE_PREFIX) and len(number) == 10 and number.isdigit() else None


def gateways_path(mesh):
    return f"{ROOT}/{validate_name(mesh)}/gateways"


def validate_candidate(record, group):
    """A clean candidate record of ``group``; ValueError naming what is wrong."""
    if not isinstance(record, dict):
        raise ValueError("candidate record is not a map")
    name = validate_name(record.get("name"))
    if record.get("group") != group:
        raise ValueError(f"candidate {name} is registered under group {group} but names {record.get('group')!r}")
    return {"name": name, "group": group,
            "control": validate_endpoint(record.get("control"), f"candidate {name}: control"),
            "gateway_out": validate_endpoint(record.get("gateway_out"), f"candidate {name}: gateway_out")}


class GatewayElection:
    """Stands this node as a gateway of ``group`` and reports
    ``on_role(active, gateways)``: whether it is the group's gateway now, and
    every candidate of the other groups (``gateway_out`` -> group).
    ``directory`` lists the other groups' candidates, for the ``groups``
    control command."""

    def __init__(self, client, mesh, group, record, on_role, instance, replaced=()):
        """``replaced``: instances of this node's name that it took over (dead
        processes, discovery/zookeeper.py): their candidacies are removed too."""
        self._client = client
        self.root = gateways_path(mesh)
        self.group = validate_name(group, "group name")
        self.record = {**record, "group": self.group}
        self._on_role = on_role
        self._prefix = f"{CANDIDATE_PREFIX}{instance}-"  # our znodes' names, before the sequence
        self._stale = tuple(f"{CANDIDATE_PREFIX}{old}-" for old in replaced)
        self._standing = gevent.lock.Semaphore()  # one stand at a time
        self._mine = None  # our candidate znode's name
        self._children = {}  # group -> its candidates' znode names
        self._watched = set()
        self._records = {}  # (group, znode) -> clean record, or None if unreadable
        self._connected = True
        self._lost = False
        self._stopping = False
        self._published = None
        self.directory = {}  # other group -> [{"name", "control"}, ...], the gateway first
        self._dirty = gevent.event.Event()
        self._loop = None

    def start(self):
        self._client.ensure_path(f"{self.root}/{self.group}")
        self._stand()
        self._client.add_listener(self._on_state)
        ChildrenWatch(self._client, self.root, self._on_groups)
        self._loop = gevent.spawn(self._refresh_loop)

    def _stand(self):
        with self._standing:
            directory = f"{self.root}/{self.group}"
            for child in self._client.get_children(directory):
                # ours, from a create whose answer was lost, or a dead process's of this name
                if child.startswith((self._prefix, *self._stale)):
                    try:
                        self._client.delete(f"{directory}/{child}")
                    except NoNodeError:
                        pass
            self._mine = None
            path = self._client.create(f"{directory}/{self._prefix}",
                                       json.dumps(self.record, sort_keys=True).encode(), ephemeral=True,
                                       sequence=True)
            self._mine = path.rsplit("/", 1)[1]
            log.info("standing as a gateway of group %s (%s)", self.group, path)

    def _on_groups(self, groups):
        for gone in self._watched - set(groups):  # a deleted directory's watch has ended: watch it anew if it comes back
            self._watched.discard(gone)
            self._children.pop(gone, None)
            self._dirty.set()
        for group in groups:
            if group not in self._watched:
                try:
                    validate_name(group)
                except ValueError:
                    continue
                self._watched.add(group)
                ChildrenWatch(self._client, f"{self.root}/{group}", partial(self._on_candidates, group))
        return not self._stopping

    def _on_candidates(self, group, children):
        if group not in self._watched:
            return False
        self._children[group] = sorted((c for c in children if _sequence(c) is not None), key=_sequence)
        self._dirty.set()
        return not self._stopping

    def _on_state(self, state):
        """kazoo's connection listener: must not block."""
        if state in (KazooState.SUSPENDED, KazooState.LOST):
            self._connected = False
            self._lost = self._lost or state == KazooState.LOST
            self._client.handler.spawn(self._publish, self._role_known())
        elif state == KazooState.CONNECTED:
            self._client.handler.spawn(self._after_reconnect)

    def _after_reconnect(self):
        if self._lost and not self._stopping:
            try:
                self._stand()  # the old candidate znode went with the old session
                self._lost = False
            except (KazooException, ZookeeperError) as exc:
                log.error("standing again as a gateway failed, retrying on the next connect: %s", exc)
                return
        self._connected = True
        self._dirty.set()

    def _role_known(self):
        """(active, gateways) from what is known, reading records not yet read."""
        gateways, directory = {}, {}
        for group, children in list(self._children.items()):
            if group == self.group:
                continue
            for child in children:
                record = self._record(group, child)
                if record is not None:
                    gateways[record["gateway_out"]] = group
                    directory.setdefault(group, []).append({"name": record["name"], "control": record["control"]})
        self.directory = directory
        head = next((child for child in self._children.get(self.group, [])
                     if child == self._mine or self._record(self.group, child) is not None), None)
        active = self._connected and not self._lost and self._mine is not None and head == self._mine
        return active, gateways

    def _record(self, group, child):
        key = (group, child)
        if key not in self._records:
            if not self._connected:
                return None
            try:
                data, _ = self._client.get(f"{self.root}/{group}/{child}")
                self._records[key] = validate_candidate(json.loads(data.decode()), group)
            except NoNodeError:
                return None  # gone since the listing; the watch will say so
            except ValueError as exc:
                log.warning("ignoring gateway candidate %s/%s: %s", group, child, exc)
                self._records[key] = None
        return self._records[key]

    def _publish(self, role):
        if role != self._published and not self._stopping:
            self._published = role
            self._on_role(*role)

    def _refresh_loop(self):
        while True:
            self._dirty.wait()
            self._dirty.clear()
            try:
                role = self._role_known()
            except (KazooException, ZookeeperError) as exc:
                log.warning("cannot read the gateways now (%s); keeping the last view", exc)
                gevent.sleep(1.0)
                self._dirty.set()
                continue
            live = {(group, child) for group, children in self._children.items() for child in children}
            for key in [key for key in self._records if key not in live]:
                del self._records[key]
            self._publish(role)

    def stop(self):
        """Stop standing: delete our candidate znode, so the next takes over at once."""
        self._stopping = True
        if self._loop is not None:
            self._loop.kill()
        if self._mine is not None:
            with gevent.Timeout(3, False):
                try:
                    self._client.delete(f"{self.root}/{self.group}/{self._mine}")
                except (KazooException, ZookeeperError):
                    pass
