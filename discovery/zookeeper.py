"""ZooKeeper membership: one ephemeral znode per node, a children watch for peers.

Layout (mesh/zkmembers.py): ``/meshnode/<mesh>/nodes/<node name>``,
ephemeral, holding the node's member record as JSON (readable with zkCli);
a node of a group (``--group``) registers under
``/meshnode/<mesh>/groups/<group>/nodes`` instead and sees only its group
(gateways join groups: discovery/gateways.py). Records the mesh shares
(``share``/``follow``: token revocations, webhooks) are persistent znodes
``/meshnode/<mesh>/<kind>/<name, %-encoded>`` holding JSON; every node watches
each kind it follows. The node connects to whoever is
there and follows the children watch as nodes come and go. ZooKeeper is never
on the data path:

* SUSPENDED (connection lost, session may still live): keep the last
  membership and keep serving; kazoo reconnects by itself.
* LOST (session expired, our ephemeral znode is gone): kazoo does not recreate
  ephemeral znodes, so we re-register once a new session is CONNECTED.
* Unreachable at start-up: :class:`DiscoveryError` after the connect timeout,
  with the hosts in the message (the CLI exits with it).

``--zk-auth user:password`` adds digest auth: the znodes this node creates are
readable by anyone and writable only by that user, so other ZooKeeper users
cannot delete or rewrite the mesh's membership.
"""

import json
import logging
import time
from urllib.parse import quote, unquote

import gevent
import gevent.event
from kazoo.client import KazooState
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError, ZookeeperError
from kazoo.recipe.watchers import ChildrenWatch

from mesh.context import shared_context
from mesh.members import validate_name
from mesh.zkmembers import ROOT, DiscoveryError, connect, members_path, read_members

from .base import Discovery
from .gateways import GatewayElection
from .liveness import holder_state

log = logging.getLogger("meshnode.discovery.zookeeper")


def records_path(mesh, kind):
    return f"{ROOT}/{validate_name(mesh)}/{kind}"


class MemberCache:
    """The member records of a mesh, each read once: a membership change reads
    only the members that are new. The members' parent znode counts every
    child created or deleted (``cversion``); when it moved by more than the
    visible comings and goings, some member was replaced (a restart under
    the same name between two looks) and every record is read again. With
    128 nodes each reading every record on every change, one join took 25 s
    to be linked everywhere (bench scenario 15)."""

    def __init__(self, mesh, group=None):
        self.mesh = mesh
        self.group = group
        self.records = {}  # child znode name -> record
        self.cversion = None

    def refresh(self, client):
        """The members now, name -> record."""
        try:
            children, stat = client.get_children(members_path(self.mesh, self.group), include_data=True)
        except NoNodeError:
            self.records, self.cversion = {}, None
            return {}
        names = set(children)
        added, removed = names - set(self.records), set(self.records) - names
        whole = self.cversion is None or stat.cversion - self.cversion != len(added) + len(removed)
        for name in removed:
            del self.records[name]
        if whole:
            self.records = {}
        fresh = read_members(client, self.mesh, sorted(names if whole else added), self.group)
        self.records.update((name, record) for name, record in fresh.items() if name in names)
        self.cversion = stat.cversion
        return {record["name"]: record for record in self.records.values()}


class ZooKeeperDiscovery(Discovery):
    keeps_records = True
    def __init__(self, hosts, mesh, session_timeout=10.0, auth=None, group=None, context=None, curve=None):
        """``context``, ``curve``: how to ask a live holder of this node's name (discovery/liveness.py)."""
        self._context = context or shared_context()
        self._curve = curve
        self.hosts = hosts
        self.mesh = mesh
        self.group = group
        self.path = members_path(mesh, group)
        self.session_timeout = session_timeout
        self.auth = auth
        self._client = None
        self._me = None
        self._on_change = None
        self._published = None
        self._session_lost = False
        self._stopping = False
        self._members = MemberCache(mesh, group)
        self._election = None
        self._replaced = set()  # instances of this name whose registrations this node took over

    @property
    def my_path(self):
        return f"{self.path}/{self._me['name']}"

    @property
    def name_path(self):
        return f"{records_path(self.mesh, 'names')}/{self._me['name']}"

    def start(self, me, on_change):
        self._me = me
        self._on_change = on_change
        self._client = connect(self.hosts, self.session_timeout, auth=self.auth)
        try:
            self._client.ensure_path(self.path)
            self._register()
        except BaseException:
            self._client.stop()
            self._client.close()
            raise
        self._dirty = gevent.event.Event()
        self._client.add_listener(self._on_state)
        ChildrenWatch(self._client, self.path, self._on_children)
        self._refresher = gevent.spawn(self._refresh_loop)

    def _register(self):
        """Claim the node's name, unique in the whole mesh whatever the group
        (``/meshnode/<mesh>/names/<name>``), then create the member znode; both
        ephemeral, both refused while another live node holds them."""
        data = json.dumps(self._me, sort_keys=True).encode("utf-8")
        for path in (self.name_path, self.my_path):
            self._claim(path, data)
        log.info("registered %s in ZooKeeper at %s", self.my_path, self.hosts)

    def _claim(self, path, data):
        """Create ``path``; if a dead process of this node's name still holds it
        (its session not lapsed yet: discovery/liveness.py), take it over."""
        try:
            self._client.create(path, data, ephemeral=True, makepath=True)
        except NodeExistsError:
            try:
                raw, stat = self._client.get(path)
                holder = json.loads(raw.decode("utf-8"))
            except NoNodeError:
                return self._claim(path, data)  # it expired just now
            except ValueError:
                holder = {}
            if not isinstance(holder, dict):
                holder = {}
            if holder.get("instance") == self._me["instance"]:
                return None
            state = holder_state(self._context, holder, self._curve)
            if state == "gone":
                log.warning("taking over %s from instance %s of this name, which no longer runs at %s",
                            path, holder.get("instance"), holder.get("control"))
                if isinstance(holder.get("instance"), str):
                    self._replaced.add(holder["instance"])
                try:
                    self._client.delete(path, version=stat.version)
                except NoNodeError:
                    pass
                return self._claim(path, data)
            group = f" in group {holder['group']!r}" if holder.get("group") else ""
            answer = "is alive" if state == "alive" else "did not answer: if it is dead, its registration " \
                                                         "lapses within its --zk-timeout"
            raise DiscoveryError(
                f"node name {self._me['name']!r} is already taken in mesh {self.mesh!r} by the node "
                f"at {holder.get('control')}{group} (started {time.time() - holder.get('started', 0):.0f} s "
                f"ago; it {answer}); choose another --name") from None

    def _on_state(self, state):
        """kazoo's connection listener: must not block, so it only schedules."""
        if state == KazooState.SUSPENDED:
            log.warning("ZooKeeper connection suspended: serving with the last known membership")
        elif state == KazooState.LOST:
            self._session_lost = True
            log.warning("ZooKeeper session lost: will re-register when a new session starts")
        elif state == KazooState.CONNECTED:
            log.info("ZooKeeper connected")
            self._client.handler.spawn(self._after_reconnect)

    def _after_reconnect(self):
        if self._session_lost and not self._stopping:
            try:
                self._register()
                self._session_lost = False
            except (KazooException, ZookeeperError, DiscoveryError) as exc:
                log.error("re-registration failed, retrying on the next connect: %s", exc)
        self._dirty.set()

    def _on_children(self, children):
        self._dirty.set()
        return not self._stopping

    def _refresh_loop(self):
        while True:
            self._dirty.wait()
            self._dirty.clear()
            try:
                members = self._members.refresh(self._client)
            except (KazooException, ZookeeperError) as exc:
                log.warning("cannot read membership now (%s); keeping the last one", exc)
                gevent.sleep(1.0)
                self._dirty.set()
                continue
            members.pop(self._me["name"], None)
            if members != self._published:
                self._published = members
                self._on_change(dict(members))

    # -- shared records (token revocations, webhooks) ----------------------

    def share(self, kind, name, record):
        path = f"{records_path(self.mesh, kind)}/{quote(name, safe='')}"
        data = json.dumps(record, sort_keys=True).encode()
        try:
            try:
                self._client.create(path, data, makepath=True)
            except NodeExistsError:
                self._client.set(path, data)
            return True
        except (KazooException, ZookeeperError) as exc:
            log.warning("cannot store %s/%s in ZooKeeper (%s)", kind, name, exc)
            return False

    def unshare(self, kind, name):
        try:
            self._client.delete(f"{records_path(self.mesh, kind)}/{quote(name, safe='')}")
            return True
        except NoNodeError:
            return True
        except (KazooException, ZookeeperError) as exc:
            log.warning("cannot delete %s/%s in ZooKeeper (%s)", kind, name, exc)
            return False

    def follow(self, kind, on_record):
        path = records_path(self.mesh, kind)
        self._client.ensure_path(path)
        known = set()

        def on_children(children):
            self._client.handler.spawn(self._read_records, path, children, known, on_record)
            return not self._stopping

        ChildrenWatch(self._client, path, on_children)

    def _read_records(self, path, children, known, on_record):
        for child in known - set(children):
            known.discard(child)
            on_record(unquote(child), None)
        for child in children:
            try:
                data, _ = self._client.get(f"{path}/{child}")
                record = json.loads(data.decode())
            except NoNodeError:
                continue
            except (KazooException, ZookeeperError, ValueError) as exc:
                log.warning("ignoring znode %s/%s: %s", path, child, exc)
                continue
            known.add(child)
            on_record(unquote(child), record)

    def elect_gateway(self, record, on_role):
        """Stand as a gateway of this node's group (discovery/gateways.py)."""
        self._election = GatewayElection(self._client, self.mesh, self.group, record, on_role, self._me["instance"],
                                         self._replaced)
        self._election.start()

    def gateway_directory(self):
        """The other groups' gateway candidates, if this node is a candidate, else None."""
        return None if self._election is None else self._election.directory

    def stop(self):
        """Delete our znode (peers drop us at once) and close the session."""
        self._stopping = True
        self._refresher.kill()
        if self._election is not None:
            self._election.stop()
        with gevent.Timeout(3, False):
            for path in (self.my_path, self.name_path):
                try:
                    self._client.delete(path)
                except (KazooException, ZookeeperError):
                    pass
        with gevent.Timeout(3, False):
            self._client.stop()
        self._client.close()
