"""Keeping a Client on a live node of a mesh, through ZooKeeper membership.

``Client.from_zookeeper`` lands here: pick a random registered node, watch
its znode, and when the znode goes (clean stop: at once; crash: after the
node's session timeout) move the client to another registered node. The
client keeps its origin and sequence numbers, so subscribers elsewhere see
messages lost in the move as gaps, and its own subscriptions count the gap
when the next message from each publisher arrives, unless they were made
with ``recover=True`` and the publishers' nodes keep history: then what was
missed is replayed (mesh/recovery.py).
"""

import logging
import random

from kazoo.exceptions import KazooException, ZookeeperError
from kazoo.recipe.watchers import DataWatch

from .control import ControlError
from .zkmembers import connect, members_path, read_members, some_members

log = logging.getLogger("mesh.failover")

RETRY_SECONDS = 1.0


class ZooKeeperFailover:
    def __init__(self, client, zk, mesh, group, on_failover):
        self.client = client
        self.zk = zk
        self.mesh = mesh
        self.group = group
        self.on_failover = on_failover
        self.closed = False

    @classmethod
    def connect(cls, client_class, hosts, mesh, group, auth, session_timeout, on_failover, options):
        zk = connect(hosts, session_timeout=session_timeout, auth=auth)
        try:
            failover = cls(None, zk, mesh, group, on_failover)
            members = failover._members()
            client = _first_that_answers(client_class, members.values(), options)
            if client is None:
                where = f"mesh {mesh!r}" + (f", group {group!r}," if group else "")
                raise RuntimeError(f"no node of {where} registered at {hosts} answered "
                                   f"({len(members)} registered)")
        except BaseException:
            zk.stop()
            zk.close()
            raise
        client.failover = failover
        failover.client = client
        failover._watch(client.node, members[client.node].get("group"))
        return client

    def _members(self):
        if self.group is not None:
            return read_members(self.zk, self.mesh, group=self.group)
        return some_members(self.zk, self.mesh)

    def _watch(self, node, group):
        def on_data(data, stat):
            if self.closed:
                return False
            if data is None:
                self.zk.handler.spawn(self._move, node)
                return False
            return True

        DataWatch(self.zk, f"{members_path(self.mesh, group)}/{node}", on_data)

    def _move(self, gone):
        log.warning("node %s left mesh %s: moving", gone, self.mesh)
        while not self.closed:
            try:
                members = self._members()
            except (KazooException, ZookeeperError) as exc:
                log.warning("cannot read the membership now (%s); retrying", exc)
                members = {}
            candidates = [r for name, r in members.items() if name != gone]
            random.shuffle(candidates)
            for record in candidates:
                try:
                    self.client.move_to(record["control"])
                except (TimeoutError, ControlError, RuntimeError) as exc:
                    log.warning("node %s did not take us: %s", record["name"], exc)
                    continue
                self.client.failovers += 1
                log.warning("moved from %s to %s", gone, self.client.node)
                if self.on_failover is not None:
                    self.on_failover(gone, self.client.node)
                self._watch(self.client.node, record.get("group"))
                return
            self.zk.handler.sleep_func(RETRY_SECONDS)

    def close(self):
        self.closed = True
        self.zk.stop()
        self.zk.close()


def _first_that_answers(client_class, records, options):
    records = list(records)
    random.shuffle(records)
    for record in records:
        try:
            return client_class(record["control"], **options)
        except (TimeoutError, ControlError, RuntimeError) as exc:
            log.warning("node %s did not answer: %s", record["name"], exc)
    return None
