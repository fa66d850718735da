"""A node: its data plane, its control socket and its membership backend.

The node owns the member record it publishes about itself, answers control
commands (``hello``, ``peer``, ``bye``, ``peers``, ``stats``, ``ping``,
``revoke``, ``history``, ``queue_join``, ``queue_leave``, ``job_ack``,
``job_extend``, ``hook_add``, ``hook_rm``, ``hook_ls``, ``marks``) and keeps the data plane connected to exactly the peers its
backend reports.
Runs under gevent (bin/meshnode monkey-patches before importing it).
"""

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

import gevent
import msgpack
import zmq

from discovery.base import validate_revocation
from discovery.gateways import MAX_LISTED_CANDIDATES, MAX_LISTED_GROUPS
from mesh.curve import MESH_CERT, CurveKeys
from mesh import Client
from mesh.control import ControlChannel, ControlError
from mesh.envelope import DEFAULT_MAX_PAYLOAD, PROTOCOL_VERSION
from mesh.members import member_ports, validate_member, validate_name
from mesh.subjects import Pattern
from mesh.waiting import pick_waiter

from .closedmarks import ClosedMarks
from .control import ControlServer, RequestError, bounded_int, flag
from .dataplane import DataPlane
from .dispatcher import Dispatcher
from . import presence
from .events import Events
from .gateway import Gateway
from .history.store import HistoryStore
from .hookdelivery import HookDelivery
from .hookregistry import HookRegistry
from .hooktargets import TargetPolicy
from .jobs import MAX_EXTEND_SECONDS
from .metrics import Metrics
from .queues.jobstore import JobStore
from .recorder import DEFAULT_HISTORY_BYTES, MAX_ASKED_STREAMS, MAX_PAGE_MESSAGES, Recorder
from .revocations import Revocations
from .zap import ZapHandler

log = logging.getLogger("meshnode.node")

DEFAULT_PORT = 7400
DEFAULT_HWM = 100_000
DEFAULT_REVOCATION_SECONDS = 24 * 3600.0
MAX_RELAYS_WAITING = 8  # announcements waiting for one slow peer before more are skipped


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
    history: list = field(default_factory=list)  # HistoryRules (nodes/recorder.py)
    history_bytes: int = DEFAULT_HISTORY_BYTES
    metrics: str = ""  # HOST:PORT for /metrics on a port of its own (nodes/metrics.py)
    group: str = ""  # the node's group: it links only to the nodes of its group (docs/SCALING.md)
    gateway: bool = False  # stand as the gateway of its group (nodes/gateway.py)
    hooks_allow: list = field(default_factory=list)  # CIDRs webhooks may reach though inside (nodes/hooktargets.py)
    data_dir: str = ""  # history and held jobs on disk there (nodes/disk.py); "": in memory only
    fsync: str = "batch"  # nodes/disk.py FSYNC_POLICIES

    def __post_init__(self):
        if self.host in ("0.0.0.0", "::", "*") and not self.advertise:
            self.advertise = socket.gethostname()
        self.advertise = self.advertise or self.host
        if self.max_payload < 1:
            raise ValueError("max payload must be at least 1 byte")
        if self.gateway and not self.group:
            raise ValueError("a gateway joins its group to the others: give the node a --group")
        if self.group:
            validate_name(self.group, "group name")


def node_curve_keys(config):
    """The node's CurveKeys: its own ``<name>.key_secret`` if the directory has
    one, else the mesh keypair; None without --curve-keys."""
    if not config.curve_keys:
        return None
    name = config.name if config.name and os.path.exists(
        os.path.join(config.curve_keys, f"{config.name}.key_secret")) else MESH_CERT
    return CurveKeys.load(config.curve_keys, name)


class Node:
    def __init__(self, config, discovery):
        self.config = config
        self.discovery = discovery
        self.context = zmq.Context.instance()
        self.started = time.time()
        self.peers = {}
        self.edge = None
        self.zap = None
        self.curve = node_curve_keys(config)
        if self.curve is not None:
            self.zap = ZapHandler(self.context, config.curve_keys)  # before anything binds
        self.dataplane = DataPlane(self.context, config.host, hwm=config.hwm, max_payload=config.max_payload,
                                   curve=self.curve)
        self.control = ControlServer(self.context, config.host, config.port, self, self.curve)
        self.gateway = None if not config.gateway else Gateway(self.context, config.host, config.group,
                                                               hwm=config.hwm, curve=self.curve)
        self.revocations = Revocations(discovery, self.context, self.curve)
        self.recorder = None
        self.dispatcher = None  # made at the first queue-group member (nodes/dispatcher.py)
        self.own_client = None  # this node's own mesh Client, for the dispatcher and the hook deliverer
        self._own_client_wanted = False
        self.hook_targets = TargetPolicy(config.hooks_allow,
                                         own_ports={self.control.port, *(int(e.rsplit(":", 1)[1]) for e in
                                                                         self.dataplane.endpoints("127.0.0.1").values())},
                                         member_ports=self._member_ports)
        self.hooks = HookRegistry(discovery, self._relay, self.hook_targets)
        self.hook_delivery = HookDelivery(self.hooks)
        self.metrics = Metrics(lambda: self.cmd_stats({}))
        self.metrics_port = None
        self.hooks.listeners.append(lambda record, removed: self._want_own_client())
        self._peer_channels = {}  # control address -> ControlChannel, for relaying announcements
        self.name = validate_name(config.name or f"{socket.gethostname()}-{self.control.port}")
        self.events = Events(self.name)
        self.dataplane.on_link = self._link_changed
        self.member = {
            "name": self.name,
            "control": f"tcp://{config.advertise}:{self.control.port}",
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

    def _own_endpoint(self, endpoint):
        """One of this node's endpoints as this node itself dials it (loopback when bound everywhere)."""
        if self.config.host in ("0.0.0.0", "*"):
            return "tcp://127.0.0.1:" + endpoint.rsplit(":", 1)[1]
        return endpoint

    def start(self):
        # opened now, so that a bad --data-dir stops the start; the dispatcher takes it at the first member
        self._job_store = JobStore(self.config.data_dir, self.config.fsync) if self.config.data_dir else None
        self.dataplane.start()
        if self.config.history:
            store = HistoryStore(self.config.data_dir, self.config.fsync) if self.config.data_dir else None
            self.recorder = Recorder(self.context, self._own_endpoint(self.member["out"]),
                                     self.config.history, self.config.history_bytes, self.curve, store)
            self.recorder.start()
        self.control.start()
        self._want_own_client()  # it publishes events, dispatches queue groups, delivers hooks
        if self.gateway is not None:
            self.gateway.start()
            self._on_members({})  # link to its own group face, and collect what is published here
        discovering = False
        try:
            if self.config.edge is not None:  # bound before joining: the member record names its port
                from .edge import Edge

                self.edge = Edge(self._own_endpoint(self.member["control"]), self.config.edge, self.curve, self)
                self.revocations.listeners.append(self.edge.end_grants_of)
                self.hook_targets.own_ports.add(self.edge.port)
                self.member["http"] = f"http://{self.config.advertise}:{self.edge.port}"
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
                self.metrics_port = self.metrics.serve(host or self.config.host, int(port))
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
        self.events.members_changed(before, members, self.started)  # last: publishing may yield
        known = {record["control"] for record in members.values()}
        for address in [a for a in self._peer_channels if a not in known]:
            self._peer_channels.pop(address).close()

    def stop(self):
        self.metrics.stop()
        self.hook_delivery.stop()
        if self.edge is not None:
            self.edge.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.own_client is not None:
            self.own_client.close()
        for channel in self._peer_channels.values():
            channel.close()
        self.closed_marks.stop()
        if self.recorder is not None:
            self.recorder.stop()
        if self.gateway is not None:
            self.gateway.stop()  # before its candidacy ends: never two gateways of one group at once
        self.discovery.stop()
        self.control.stop()
        self.dataplane.stop()
        if self.zap is not None:
            self.zap.stop()

    # -- control commands (see docs/PROTOCOL.md) --------------------------

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
        except ValueError as exc:
            raise RequestError("bad_member", str(exc)) from None

    def cmd_bye(self, request):
        name, instance = request.get("name"), request.get("instance")
        if not isinstance(name, str) or not isinstance(instance, (str, type(None))):
            raise RequestError("bad_request", "bye needs a name (and, if given, an instance: a str)")
        self.discovery.depart(name, instance)
        return {}

    def cmd_revoke(self, request):
        """Refuse the tokens of ``sub`` on every edge of the mesh until
        ``until`` (or for ``seconds``); relayed to the peers unless ``relay`` is false."""
        seconds = request.get("seconds", self.config.revocation_seconds)
        until = request.get("until")
        relay = flag(request, "relay", True)
        try:
            if until is None:
                if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
                    raise ValueError("seconds must be a positive number")
                until = time.time() + seconds
            subject, until = validate_revocation(request.get("sub"), until)
        except ValueError as exc:
            raise RequestError("bad_request", str(exc)) from None
        if not relay:
            self.revocations.apply(subject, until)
            return {"sub": subject, "until": until}
        return self.revoke(subject, until)

    def revoke(self, subject, until):
        """A new revocation made here: applied, stored and relayed (nodes/revocations.py)."""
        return self.revocations.revoke(subject, until, list(self.peers.values()))

    def cmd_history(self, request):
        """A page of what this node recorded on a pattern (nodes/recorder.py)."""
        if self.recorder is None:
            return {"messages": [], "next": None, "streams": [], "recording": False}
        partial = flag(request, "partial", False)
        try:
            pattern = Pattern(request.get("pattern"))
            since = _number(request.get("since", 0.0), "since")
            cursor = request.get("cursor")
            if cursor is not None and (not isinstance(cursor, list) or len(cursor) != 2
                                       or not isinstance(cursor[0], str) or type(cursor[1]) is not int):
                raise ValueError("cursor is the next of the previous page: [subject, number]")
            limit = bounded_int(request.get("limit"), "limit", 1, MAX_PAGE_MESSAGES, MAX_PAGE_MESSAGES)
            after = request.get("after", [])
            if not isinstance(after, list) or len(after) > MAX_ASKED_STREAMS:
                raise ValueError(f"after is a list of at most {MAX_ASKED_STREAMS} [origin, subject, epoch, seq]")
            for item in after:
                if (not isinstance(item, list) or len(item) != 4 or not all(isinstance(x, str) for x in item[:2])
                        or not all(type(x) is int and x >= 0 for x in item[2:])):
                    raise ValueError("each after entry is [origin, subject, epoch, seq]")
        except (ValueError, TypeError) as exc:
            raise RequestError("bad_request", str(exc)) from None
        messages, next_cursor, streams = self.recorder.page(pattern, since, after, cursor, limit, partial)
        return {"messages": [[e.subject, e.origin, e.epoch, e.seq, e.ts, msgpack.unpackb(e.packed, raw=False, strict_map_key=False)]
                             for e in messages],
                "next": next_cursor, "recording": True,
                "streams": [[origin, subject, state] for (origin, subject), state in streams.items()],
                "evicted": self.recorder.newest_evicted(streams)}

    def cmd_queue_join(self, request):
        """A queue-group member's announcement (mesh/queues.py), relayed to the peers."""
        fields = {key: request[key] for key in ("group", "pattern", "member", "capacity", "pending", "jobs")
                  if request.get(key) is not None}  # absent or nil: pending 0, no jobs
        relay = flag(request, "relay", True)
        try:
            node = request.get("node")  # the member's node, from a relaying node
            new = self._dispatcher().join(fields, self.name if node is None else validate_name(node))
        except (ValueError, TypeError) as exc:
            raise RequestError("bad_request", str(exc)) from None
        if relay:
            self._relay("queue_join", {**fields, "node": self.name, "relay": False})
        return {"new": new}

    def cmd_queue_leave(self, request):
        fields = {key: request.get(key) for key in ("group", "pattern", "member")}
        if not all(isinstance(value, str) for value in fields.values()):
            raise RequestError("bad_request", "queue_leave needs group, pattern and member")
        relay = flag(request, "relay", True)
        if self.dispatcher is not None:
            self.dispatcher.leave(fields["group"], fields["pattern"], fields["member"])
        if relay:
            self._relay("queue_leave", {**fields, "relay": False})
        return {}

    def cmd_job_ack(self, request):
        """A worker finished a job this node holds (nodes/jobs.py)."""
        return self._job(request, lambda jobs, job, member: jobs.ack(job, member))

    def cmd_job_extend(self, request):
        """A worker needs longer for a job this node holds."""
        seconds = request.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_EXTEND_SECONDS:
            raise RequestError("bad_request", f"seconds must be a number, more than 0 and at most {MAX_EXTEND_SECONDS:,.0f}")
        return self._job(request, lambda jobs, job, member: jobs.extend(job, member, seconds))

    def _job(self, request, action):
        job, member = request.get("job"), request.get("member")
        if not isinstance(job, str) or not isinstance(member, str):
            raise RequestError("bad_request", "job and member must be strings")
        if self.dispatcher is None:
            raise RequestError("unknown_job", f"job {job!r} is not held here: this node holds no jobs")
        try:
            action(self.dispatcher.jobs, job, member)
        except ValueError as exc:
            raise RequestError("unknown_job", str(exc)) from None
        return {}

    def cmd_marks(self, request):
        """A closing publisher's last marks, repeated on its behalf (nodes/closedmarks.py)."""
        try:
            kept = self.closed_marks.keep(request.get("origin"), request.get("streams"), request.get("seconds"))
        except (ValueError, TypeError) as exc:
            raise RequestError("bad_request", str(exc)) from None
        return {"kept": kept}

    def _dispatcher(self):
        """The dispatcher, made at the first queue-group member; its client comes later."""
        if self.dispatcher is None:
            self.dispatcher = Dispatcher(self.context, self._own_endpoint(self.member["out"]), self.name, self.curve,
                                         self._job_store)
            self.dispatcher.client = self.own_client
            self.dispatcher.start()
            self._want_own_client()
        return self.dispatcher

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
        if self.dispatcher is not None:
            self.dispatcher.client = self.own_client
        self.events.client = self.own_client
        self.hook_delivery.attach(self.own_client)

    def cmd_hook_add(self, request):
        """Register (or update) a webhook (nodes/hookregistry.py); the reply has its secrets."""
        fields = {key: request.get(key) for key in ("key", "url", "pattern", "secrets", "max_age", "created")}
        fields = {key: value for key, value in fields.items() if value is not None}
        relay = flag(request, "relay", True)
        try:
            record = self.hooks.add(fields, relay=relay)
        except (ValueError, TypeError) as exc:
            raise RequestError("bad_request", str(exc)) from None
        return {"hook": record}

    def cmd_hook_rm(self, request):
        key, url = request.get("key"), request.get("url")
        if not isinstance(key, str) or not isinstance(url, str):
            raise RequestError("bad_request", "hook_rm needs a key and a url")
        relay = flag(request, "relay", True)
        known = self.hooks.remove(key, url, relay=relay)
        if not known and relay:
            raise RequestError("unknown_hook", f"no hook for {url!r} under key {key!r}")
        return {}

    def cmd_hook_ls(self, request):
        key = request.get("key")
        if key is not None and not isinstance(key, str):
            raise RequestError("bad_request", "key must be a string")
        return {"hooks": self.hook_delivery.listing(key)}

    def peer_channel(self, record):
        """A lasting control channel to a peer (1 s timeout), closed when it leaves."""
        channel = self._peer_channels.get(record["control"])
        if channel is None:
            channel = self._peer_channels[record["control"]] = ControlChannel(
                self.context, record["control"], pick_waiter(), timeout=1.0, curve=self.curve)
            channel.relaying = 0
        return channel

    def _relay(self, cmd, fields):
        """Send a request to every peer without waiting for the answers."""
        for record in list(self.peers.values()):
            channel = self.peer_channel(record)
            if channel.relaying < MAX_RELAYS_WAITING:  # a slow peer gets the next announcement instead
                gevent.spawn(_relay_one, channel, cmd, fields)

    def cmd_presence(self, request):
        """This node's edge connections in a channel (nodes/presence.py)."""
        channel = request.get("channel")
        try:
            if not isinstance(channel, str):
                raise ValueError("presence needs a channel: a subject or a pattern")
            limit = presence.limit_from(request.get("limit"))
            return {"node": self.name, **presence.presence(self.edge, channel, limit)}
        except ValueError as exc:
            raise RequestError("bad_request", str(exc)) from None

    def cmd_channels(self, request):
        """Per pattern this node's edge clients subscribe to: subscribers, messages, delivered."""
        try:
            return {"node": self.name, **presence.channels(self.edge, presence.limit_from(request.get("limit")))}
        except ValueError as exc:
            raise RequestError("bad_request", str(exc)) from None

    def cmd_groups(self, request):
        """The other groups and their gateway candidates, oldest (the gateway) first: what a
        client needs to reach every node of a mesh of groups (mesh/meshwide.py)."""
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

    def cmd_stats(self, request):
        counters = self.dataplane.counters()
        local, mesh = counters["local"], counters["mesh"]
        return {
            "name": self.name,
            "uptime": time.time() - self.started,
            "peers": len(self.peers),
            "links": {"up": sum(state == "up" for state in self.dataplane.links.values()),
                      "down": sum(state == "down" for state in self.dataplane.links.values()),
                      "failures": self.dataplane.link_failures, "proxy_restarts": self.dataplane.proxy_restarts},
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
            "control": {"requests": self.control.requests, "malformed": self.control.malformed,
                        "rejected": self.control.rejected, "unknown_commands": self.control.unknown_commands},
            "proxies": counters,
            "revocations": len(self.revocations.current()),
            "events": self.events.counters(),
            "marks": self.closed_marks.counters(),
            **({"history": self.recorder.counters()} if self.recorder is not None else {}),
            **({"queues": self.dispatcher.counters()} if self.dispatcher is not None else {}),
            **({"hooks": self.hook_delivery.listing()} if self.hooks.hooks else {}),
            **({"hook_totals": self.hook_delivery.totals} if self.hooks.hooks or any(self.hook_delivery.totals.values())
               else {}),
            **({"edge": self.edge.counters()} if self.edge is not None else {}),
            **({"group": self.config.group} if self.config.group else {}),
            **({"gateway": self.gateway.counters()} if self.gateway is not None else {}),
            **({"curve": self.zap.counters()} if self.zap is not None else {}),
        }


def _number(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a number, 0 or more")
    return value


def _relay_one(channel, cmd, fields):
    channel.relaying += 1
    try:
        channel.request(cmd, **fields)
    except (TimeoutError, ControlError, zmq.ZMQError) as exc:  # the next announcement tries again
        log.debug("relaying %s failed: %s", cmd, exc)
    finally:
        channel.relaying -= 1
