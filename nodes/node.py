"""A node: its data plane, its control socket and its membership backend, and
the features wired to them.

The node owns the member record it publishes about itself, keeps the data
plane connected to exactly the peers its backend reports, and answers the
membership commands (``hello``, ``ping``, ``peer``, ``bye``, ``peers``,
``groups``, ``stats``). Every other command belongs to a feature that adds
itself to the control server (nodes/control.py): ``revoke``
(nodes/revocations.py), ``marks`` (nodes/closedmarks.py), ``history``
(nodes/history/), ``queue_join``, ``queue_leave``, ``job_ack``, ``job_extend``
(nodes/queues/), ``job_copies`` (nodes/queues/replicas.py), ``hook_add``, ``hook_rm``, ``hook_ls`` (nodes/hooks/),
``presence`` and ``channels`` (nodes/edge/roster.py). ``stats`` is the node's
own counters followed by every feature's part.
Runs under gevent (bin/meshnode monkey-patches before importing it).
"""

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

import gevent

from discovery.base import NameTaken
from discovery.gateways import MAX_LISTED_CANDIDATES, MAX_LISTED_GROUPS
from mesh.curve import MESH_CERT, CurveKeys
from mesh import Client
from mesh.addresses import join_host_port, tcp_endpoint
from mesh.context import shared_context
from mesh.control import ControlError
from mesh.envelope import DEFAULT_MAX_PAYLOAD, PROTOCOL_VERSION
from mesh.liveness import PEER_PINGS
from mesh.members import member_ports, validate_member, validate_name

from nodes.closedmarks import ClosedMarks
from nodes.control import ControlServer, Feature, RequestError
from nodes.dataplane import DataPlane
from nodes.edge.roster import Roster
from nodes.events import Events
from nodes.gateway import Gateway
from nodes.history.commands import History
from nodes.history.store import HistoryStore
from nodes.history.recorder import DEFAULT_HISTORY_BYTES
from nodes.hooks.commands import Webhooks
from nodes.hooks.targets import TargetPolicy
from nodes.metrics import Metrics
from nodes.queues.commands import QueueGroups
from nodes.queues.jobstore import JobStore
from nodes.queues.replicas import JobReplicas
from nodes.relay import Relay
from nodes.revocations import Revocations
from nodes.zap import ZapHandler

log = logging.getLogger("meshnode.node")

DEFAULT_PORT = 7400
DEFAULT_HWM = 100_000
DEFAULT_REVOCATION_SECONDS = 24 * 3600.0


@dataclass
class NodeConfig:
    name: str = ""
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    advertise: str = ""  # host peers and clients should dial; defaults to host
    max_payload: int = DEFAULT_MAX_PAYLOAD
    hwm: int = DEFAULT_HWM
    peers: list = field(default_factory=list)
    edge: object = None  # an EdgeConfig when the node serves HTTP/WebSocket (--http)
    curve_keys: str = ""  # key directory: CurveZMQ on every ZeroMQ socket (mesh/curve.py)
    revocation_seconds: float = DEFAULT_REVOCATION_SECONDS  # how long a revocation lasts unless told
    history: list = field(default_factory=list)  # HistoryRules (nodes/history/recorder.py)
    history_bytes: int = DEFAULT_HISTORY_BYTES
    history_replicas: int = 1  # nodes that keep each node's history, itself included (nodes/placement.py)
    metrics: str = ""  # HOST:PORT for /metrics on a port of its own (nodes/metrics.py)
    group: str = ""  # the node's group: it links only to the nodes of its group (docs/SCALING.md)
    gateway: bool = False  # stand as the gateway of its group (nodes/gateway.py)
    hooks_allow: list = field(default_factory=list)  # CIDRs webhooks may reach though inside (nodes/hooks/targets.py)
    data_dir: str = ""  # history and held jobs on disk there (nodes/disk.py); "": in memory only
    fsync: str = "batch"  # nodes/disk.py FSYNC_POLICIES
    heartbeat_pings: int = PEER_PINGS  # PING budget a second of a socket linked to peers (mesh/liveness.py)
    job_replicas: int = 1  # nodes keeping each held job, this one included (nodes/queues/replicas.py)

    def __post_init__(self):
        if self.host in ("0.0.0.0", "::", "*") and not self.advertise:
            self.advertise = socket.gethostname()
        self.advertise = self.advertise or self.host
        if self.max_payload < 1:
            raise ValueError("max payload must be at least 1 byte")
        if self.history_replicas < 1:
            raise ValueError("--history-replicas must be 1 (the node alone) or more")
        if self.history_replicas > 1 and not self.history:
            raise ValueError("--history-replicas needs --history rules: a node without them keeps no history, "
                             "its own or a copy")
        if self.heartbeat_pings < 1:
            raise ValueError("--heartbeat-pings must be at least 1 a second")
        if self.gateway and not self.group:
            raise ValueError("a gateway joins its group to the others: give the node a --group")
        if self.group:
            validate_name(self.group, "group name")
        if type(self.job_replicas) is not int or self.job_replicas < 1:
            raise ValueError(f"job replicas must be an integer, 1 or more (1: only the holding node keeps "
                             f"its jobs), not {self.job_replicas!r}")


def node_curve_keys(config):
    """The node's CurveKeys: its own ``<name>.key_secret`` if the directory has
    one, else the mesh keypair; None without --curve-keys."""
    if not config.curve_keys:
        return None
    name = config.name if config.name and os.path.exists(
        os.path.join(config.curve_keys, f"{config.name}.key_secret")) else MESH_CERT
    return CurveKeys.load(config.curve_keys, name)


class Node(Feature):
    def __init__(self, config, discovery):
        self.config = config
        self.discovery = discovery
        self.context = shared_context(config.host, config.advertise, *config.peers)
        self.started = time.time()
        self.peers = {}
        self.edge = None
        self.zap = None
        self.curve = node_curve_keys(config)
        if self.curve is not None:
            self.zap = ZapHandler(self.context, config.curve_keys)  # before anything binds
        self.dataplane = DataPlane(self.context, config.host, hwm=config.hwm, max_payload=config.max_payload,
                                   curve=self.curve, pings=config.heartbeat_pings)
        self.control = ControlServer(self.context, config.host, config.port, self.curve)
        self.gateway = None if not config.gateway else Gateway(self.context, config.host, config.group,
                                                               hwm=config.hwm, curve=self.curve,
                                                               pings=config.heartbeat_pings)
        self.relay = Relay(self.context, lambda: self.peers.values(), self.curve)
        self.revocations = Revocations(discovery, self.relay, config.revocation_seconds)
        self.own_client = None  # this node's own mesh Client: events, queue groups, hook deliveries
        self._own_client_wanted = False
        self.hook_targets = TargetPolicy(config.hooks_allow,
                                         own_ports={self.control.port, *(int(e.rsplit(":", 1)[1]) for e in
                                                                         self.dataplane.endpoints("127.0.0.1").values())},
                                         member_ports=self._member_ports)
        self.hooks = Webhooks(discovery, self.relay.tell, self.hook_targets)
        self.hooks.registry.listeners.append(lambda record, removed: self._want_own_client())
        self.metrics = Metrics(self.stats_reply)
        self.metrics_port = None
        self.name = validate_name(config.name or f"{socket.gethostname()}-{self.control.port}")
        self.events = Events(self.name)
        self.dataplane.on_link = self._link_changed
        self.member = {
            "name": self.name,
            "control": tcp_endpoint(config.advertise, self.control.port),
            **self.dataplane.endpoints(config.advertise),
            "instance": uuid.uuid4().hex,
            "started": self.started,
            "protocol": PROTOCOL_VERSION,
            "max_payload": config.max_payload,
            **({"group": config.group} if config.group else {}),
            **({"gateway": self.gateway.endpoints(config.advertise)["gateway"]} if self.gateway else {}),
        }
        self.closed_marks = ClosedMarks(self.context, self._own_endpoint(self.member["ingress"]), config.hwm,
                                        config.max_payload, self.curve)
        self.history = History(config.history, self.name, config.history_replicas, self.relay.channel)
        self.queues = QueueGroups(self.context, self._own_endpoint(self.member["out"]), self.name, self.relay,
                                  self.curve, on_first=self._want_own_client)
        self.job_replicas = JobReplicas(self.name, self.member["instance"], config.job_replicas,
                                        self.relay.channel, self.queues.job_book)
        if config.job_replicas > 1:
            self.queues.job_copies = self.job_replicas
        self.roster = Roster(self.name)
        for feature in (self, self.revocations, self.events, self.closed_marks, self.history, self.queues,
                        self.job_replicas, self.hooks, self.roster, *(f for f in (self.gateway, self.zap) if f is not None)):
            self.control.add(feature)

    def _own_endpoint(self, endpoint):
        """One of this node's endpoints as this node itself dials it (loopback when bound everywhere)."""
        if self.config.host in ("0.0.0.0", "::", "*"):
            return "tcp://127.0.0.1:" + endpoint.rsplit(":", 1)[1]
        return endpoint

    def start(self):
        data_dir, fsync = self.config.data_dir, self.config.fsync
        # opened now, so that a bad --data-dir stops the start; the dispatcher takes it at the first member
        self.queues.job_store = JobStore(data_dir, fsync) if data_dir else None
        if self.queues.job_store is not None:
            resumed = self.queues.job_store.succeed(self.member["instance"])
            if resumed is not None:  # the replicas of its jobs leave them to it (nodes/queues/replicas.py)
                self.member["resumes"] = self.job_replicas.resumes = resumed
        self.dataplane.start()
        self.history.start(self.context, self._own_endpoint(self.member["out"]), self.config.history_bytes,
                           self.curve, HistoryStore(data_dir, fsync) if data_dir and self.config.history else None)
        self.control.start()
        self.job_replicas.start()
        self._want_own_client()  # it publishes events, dispatches queue groups, delivers hooks
        if self.queues.job_store is not None and self.queues.job_store.holds_jobs():
            self.queues.job_book(True)  # restored now, and copied to the replicas, not at the first worker
        if self.gateway is not None:
            self.gateway.start()
            self._on_members({})  # link to its own group face, and collect what is published here
        discovering = False
        try:
            if self.config.edge is not None:  # bound before joining: the member record names its port
                self._make_edge()
            self.discovery.start(self.member, self._on_members)
            discovering = True
            if self.gateway is not None:
                self.discovery.elect_gateway(
                    {"name": self.name, "control": self.member["control"],
                     "gateway_out": self.gateway.endpoints(self.config.advertise)["gateway_out"]},
                    self.gateway.set_role)
            if self.edge is not None:
                self.edge.start()
            self.revocations.start()
            self.hooks.start()
            if self.config.metrics:
                host, _, port = self.config.metrics.rpartition(":")
                self.metrics_port = self.metrics.serve(host.strip("[]") or self.config.host, int(port))
                self.hook_targets.own_ports.add(self.metrics_port)
        except BaseException:
            if self.edge is not None:
                self.edge.stop()
            if self.gateway is not None:
                self.gateway.stop()
            if discovering:  # leave ZooKeeper too: a dead candidate must not hold its group's line
                self.discovery.stop()
            self.control.stop()
            self.dataplane.stop()
            raise

    def _make_edge(self):
        """The edge, handed the parts of this node it uses (not the node)."""
        from nodes.edge.edge import Edge, NodeParts

        parts = NodeParts(name=self.name, events=self.events, revocations=self.revocations, hooks=self.hooks,
                          metrics=self.metrics, members=lambda: list(self.peers.values()),
                          channel=self.relay.channel,
                          own_view=lambda: (self.stats_reply(), self.cmd_peers({})["peers"]))
        self.edge = Edge(self._own_endpoint(self.member["control"]), self.config.edge, self.curve, parts)
        self.revocations.listeners.append(self.edge.end_grants_of)
        self.hook_targets.own_ports.add(self.edge.port)
        self.member["http"] = "http://" + join_host_port(self.config.advertise, self.edge.port)
        self.roster.edge = self.edge
        self.control.add(self.edge)

    def _link_changed(self, endpoint, state):
        for record in self.peers.values():
            if record["out"] == endpoint:
                self.events.link_changed(record["name"], state)

    def _names_own_endpoints(self, record):
        """A record that points at this node under another name would make it
        its own peer and deliver every local message twice."""
        return any(record[k] == self.member[k] for k in ("control", "ingress", "out", "remote"))

    def _member_ports(self):
        """(host, port) of every port the known members publish: webhooks may not point there."""
        return [pair for record in list(self.peers.values()) for pair in member_ports(record)]

    def _on_members(self, members):
        for name, record in list(members.items()):
            if self._names_own_endpoints(record):
                log.warning("ignoring member %s: it names this node's own endpoints", name)
                del members[name]
        for record in members.values():
            if record["max_payload"] != self.config.max_payload and record["name"] not in self.peers:
                log.warning("peer %s has --max-payload %d, this node %d: messages between the two limits "
                            "reach only one side's subscribers", record["name"], record["max_payload"],
                            self.config.max_payload)
        before, self.peers = self.peers, members
        faces = [record["gateway"] for record in members.values() if "gateway" in record]
        if self.gateway is not None:
            faces.append(self._own_endpoint(self.member["gateway"]))
            self.gateway.set_group([self._own_endpoint(self.member["out"]),
                                    *(record["out"] for record in members.values())])
        self.dataplane.set_peers([*(record["out"] for record in members.values()), *faces])
        self.relay.keep_only({record["control"] for record in members.values()})
        self.history.members_changed(members)
        self.job_replicas.members_changed(members)
        for name, record in members.items():  # a node that joined, or came back as a new instance
            if before.get(name, {}).get("instance") != record["instance"]:
                self.hooks.introduce(lambda cmd, fields, record=record: self.relay.tell_one(record, cmd, fields))
        self.events.members_changed(before, members, self.started)  # last: publishing may yield

    def stop(self):
        self.metrics.stop()
        self.hooks.stop()
        if self.edge is not None:
            self.edge.stop()
        self.queues.stop()
        self.job_replicas.stop()
        if self.own_client is not None:
            self.own_client.close()
        self.history.stop()  # before the relay: a catch-up asks through it
        self.relay.close()
        self.closed_marks.stop()
        if self.gateway is not None:
            self.gateway.stop()  # before its candidacy ends: never two gateways of one group at once
        self.discovery.stop()
        self.control.stop()
        self.dataplane.stop()
        if self.zap is not None:
            self.zap.stop()

    def _want_own_client(self):
        """This node's own mesh Client, made once in a greenlet: it connects to
        this node's control socket, which may be busy answering the request
        that asked for it. The dispatcher counts members unreachable, and the
        hook deliverer waits, until it exists."""
        if not self._own_client_wanted:
            self._own_client_wanted = True
            gevent.spawn(self._connect_own_client)

    def _connect_own_client(self):
        address = self._own_endpoint(self.member["control"])
        while self.own_client is None:
            try:
                self.own_client = Client(address, curve=self.curve)
            except (TimeoutError, ControlError) as exc:
                log.warning("this node's own client cannot connect yet: %s", exc)
                gevent.sleep(1.0)
        self.queues.attach(self.own_client)
        self.events.client = self.own_client
        self.hooks.attach(self.own_client)

    # -- membership commands (see docs/PROTOCOL.md) -----------------------

    def commands(self):
        return {"hello": self.cmd_hello, "ping": self.cmd_ping, "peer": self.cmd_peer, "bye": self.cmd_bye,
                "peers": self.cmd_peers, "groups": self.cmd_groups, "stats": lambda request: self.stats_reply()}

    def cmd_hello(self, request):
        return {"name": self.name, "protocol": PROTOCOL_VERSION, "max_payload": self.config.max_payload,
                "endpoints": {k: self.member[k] for k in ("ingress", "out", "remote")},
                "member": self.member}

    def cmd_ping(self, request):
        return {"pong": True}

    def cmd_peer(self, request):
        try:
            member = validate_member(request.get("member"))
        except ValueError as exc:
            raise RequestError("bad_member", str(exc)) from None
        if member["instance"] != self.member["instance"] and self._names_own_endpoints(member):
            raise RequestError("bad_member", f"member {member['name']} names this node's own endpoints")
        try:
            return {**self.discovery.announce(member, request), "member": self.member}
        except NameTaken as exc:
            raise RequestError("name_taken", str(exc)) from None
        except ValueError as exc:
            raise RequestError("bad_member", str(exc)) from None

    def cmd_bye(self, request):
        name, instance = request.get("name"), request.get("instance")
        if not isinstance(name, str) or not isinstance(instance, (str, type(None))):
            raise RequestError("bad_request", "bye needs a name (and, if given, an instance: a str)")
        self.discovery.depart(name, instance)
        return {}

    def cmd_groups(self, request):
        """The other groups and their gateway candidates, oldest (the gateway) first: what a
        client needs to reach every node of a mesh of groups (mesh/everynode.py)."""
        if not self.config.group:
            return {"group": None, "groups": {}}
        directory = self.discovery.gateway_directory()
        if directory is None:
            raise RequestError("not_a_gateway", f"node {self.name} is not a gateway candidate: ask one of its "
                                                f"group's candidates (peers whose record has 'gateway')")
        listed = sorted(directory)[:MAX_LISTED_GROUPS]
        return {"group": self.config.group, "truncated": len(directory) > len(listed),
                "groups": {group: directory[group][:MAX_LISTED_CANDIDATES] for group in listed}}

    def cmd_peers(self, request):
        """Peer records, each with ``link``: "up" or "down" (the data link to its ``out``)."""
        links = self.dataplane.links
        return {"peers": [{**record, "link": links.get(record["out"], "down")}
                          for record in sorted(self.peers.values(), key=lambda r: r["name"])]}

    def stats_reply(self):
        """The ``stats`` reply: the node's own counters (it is the first feature added), then every
        other feature's part."""
        return self.control.feature_stats()

    def stats(self):
        counters = self.dataplane.counters()
        local, mesh = counters["local"], counters["mesh"]
        return {
            "name": self.name,
            "uptime": time.time() - self.started,
            "peers": len(self.peers),
            "links": {"up": sum(state == "up" for state in self.dataplane.links.values()),
                      "down": sum(state == "down" for state in self.dataplane.links.values()),
                      "failures": self.dataplane.link_failures, "proxy_restarts": self.dataplane.proxy_restarts,
                      "heartbeats": self.dataplane.heartbeats()},
            "messages": {
                # Every data message is two frames: [topic, envelope].
                "published_here": local["frontend_frames_in"] // 2,
                "sent_out": local["backend_frames_out"] // 2,
                "from_peers": mesh["frontend_frames_in"] // 2,
                "delivered_from_peers": mesh["backend_frames_out"] // 2,
            },
            "bytes": {
                "published_here": local["frontend_bytes_in"],
                "from_peers": mesh["frontend_bytes_in"],
            },
            "control": self.control.counters(),
            "proxies": counters,
            **({"group": self.config.group} if self.config.group else {}),
        }
