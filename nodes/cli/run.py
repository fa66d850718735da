"""``meshnode run``: a node, until SIGTERM or SIGINT."""

import argparse
import ipaddress
import sys

from mesh.liveness import PEER_PINGS
from mesh.publisher import DEFAULT_STREAM_IDLE  # imports no sockets: patching later is fine

from .common import EPILOG_ADDRESSES, node_address, positive_float, positive_int, readable_file, zookeeper_arguments

DEFAULT_AUTH_MAX_LIFETIME = 24 * 3600.0  # nodes/edge/auth.py imports PyJWT, which must come after patching


def _network(text):
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address or a network (CIDR, e.g. 10.1.0.0/16)") from None


def _hs256_secret(text):
    if len(text.encode()) < 32:
        raise argparse.ArgumentTypeError("must be at least 32 bytes for HS256 (RFC 7518, section 3.2)")
    return text


def run_parser(commands):
    """The ``run`` sub-command and its flags (nodes/cli/config.py reads them from a file too)."""
    run = commands.add_parser("run", help="run a node", description=(
        "Run a node until SIGTERM or SIGINT. Prints one line starting with 'meshnode ready' "
        "on stdout once it serves."), epilog=EPILOG_ADDRESSES)
    run.add_argument("--config", metavar="FILE",
                     help="read these flags from a TOML file: keys are the flag names without '--' "
                          "(name = \"a\", http = 8400, log-level = \"DEBUG\", insecure = true), a repeatable "
                          "flag takes an array (peer = [\"HOST:PORT\"]). Flags given here override the file; "
                          "a repeatable flag given here replaces the file's list (example: "
                          "contrib/meshnode.toml; docs/OPERATIONS.md)")
    run.add_argument("--name", default="", help="node name, unique in the mesh (default: HOSTNAME-PORT)")
    run.add_argument("--host", default="127.0.0.1",
                     help="interface to bind all sockets on (default: 127.0.0.1, loopback only)")
    run.add_argument("--port", type=int, default=7400,
                     help="control port; 0 picks a free one (default: 7400). Data ports are picked "
                          "by the system and announced on the control port")
    run.add_argument("--advertise", default="",
                     help="host name peers and clients should dial (default: --host)")
    run.add_argument("--peer", action="append", default=[], type=node_address, metavar="HOST:PORT",
                     help="a seed: another node's control address; repeatable. One that answers is enough "
                          "to join the whole mesh; one that does not is retried")
    zookeeper_arguments(run, "find peers through ZooKeeper instead of --peer: register there and "
                              "connect to every node of the mesh")
    run.add_argument("--group", default="", metavar="NAME",
                     help="with --zk: link only to the nodes of group NAME, a full mesh of its own; groups "
                          "exchange messages through their gateways (--gateway). For meshes past about 100 "
                          "nodes (docs/SCALING.md)")
    run.add_argument("--gateway", action="store_true",
                     help="with --group: stand as the gateway of the group. One candidate per group is "
                          "elected in ZooKeeper and forwards between its group and the others; run two or "
                          "more per group so that one takes over when the gateway dies")
    run.add_argument("--zk-timeout", type=float, default=10.0, metavar="SECONDS",
                     help="ZooKeeper session timeout: how long a node that vanished stays registered, "
                          "and how long start-up waits for ZooKeeper (default: 10; the server clamps it "
                          "to 2-20 ticks)")
    run.add_argument("--max-payload", type=positive_int, default=1024 * 1024, metavar="BYTES",
                     help="largest encoded message accepted (default: 1048576)")
    run.add_argument("--hwm", type=positive_int, default=100_000, metavar="MESSAGES",
                     help="queue limit per socket connection before messages are dropped (default: 100000)")
    run.add_argument("--heartbeat-pings", type=positive_int, default=PEER_PINGS, metavar="PER_SECOND",
                     help="ZMTP heartbeat PINGs a second this node sends its peers at most: each peer link is "
                          "pinged every second up to this many peers, less often past it, and a silent peer is "
                          "found that much later (docs/SCALING.md) (default: %(default)s)")
    run.add_argument("--stream-idle", type=positive_float, default=DEFAULT_STREAM_IDLE, metavar="SECONDS",
                     help="forget a stream (a publisher's subject) after this long without a message, "
                          "in this node's edge (the library's Client(stream_idle=) default is the same; "
                          "docs/PROTOCOL.md 4.5) (default: %(default)s)")
    run.add_argument("--history", action="append", default=[], metavar="PATTERN=COUNT/AGEs",
                     help="keep the last COUNT messages of each subject PATTERN matches, none older than AGE "
                          "seconds, of what is published at this node (e.g. 'chat.>=1000/300s'); repeatable; "
                          "read with the history control command (docs/HISTORY.md)")
    run.add_argument("--history-bytes", type=positive_int, default=64 * 1024 * 1024, metavar="BYTES",
                     help="all history together; the oldest messages go first (default: 67108864)")
    run.add_argument("--history-replicas", type=positive_int, default=1, metavar="R",
                     help="keep each node's history on R nodes: the one it was published at and R-1 others "
                          "chosen from the membership, so a message that reached them outlives that node; every "
                          "node should run the same --history rules (default: 1; docs/HISTORY.md)")
    run.add_argument("--data-dir", metavar="DIR",
                     help="keep history and held jobs on disk in DIR, across restarts and kill -9 "
                          "(default: in memory only; docs/HISTORY.md)")
    run.add_argument("--fsync", choices=["batch", "never"], default="batch",
                     help="with --data-dir: fsync every write batch (at most 50 ms of changes), or leave "
                          "it to the operating system (default: %(default)s)")
    run.add_argument("--job-replicas", type=positive_int, default=1, metavar="R",
                     help="keep each job this node holds at R-1 other nodes too, so that one of them "
                          "takes over its jobs when it dies (default: 1, this node only; docs/QUEUES.md)")
    run.add_argument("--metrics", metavar="HOST:PORT",
                     help="serve Prometheus metrics at http://HOST:PORT/metrics (an edge also serves them "
                          "at /metrics on its --http port; docs/OPERATIONS.md)")
    run.add_argument("--hooks-allow", action="append", default=[], metavar="CIDR", type=_network,
                     help="let webhooks reach addresses in this network although they are loopback, private, "
                          "link-local or otherwise inside (refused by default); repeatable; a mesh node's own "
                          "ports stay refused (docs/WEBHOOKS.md)")
    _edge_arguments(run)
    _security_arguments(run)
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _edge_arguments(run):
    edge = run.add_argument_group("edge (HTTP, WebSocket, Server-Sent Events; off without --http)")
    edge.add_argument("--http", type=int, metavar="PORT",
                      help="serve WebSocket (/ws), HTTP publish (/pub), SSE (/sub), /stats and a page at / "
                           "on this port (0 picks one)")
    edge.add_argument("--auth-secret", action="append", default=[], type=_hs256_secret, metavar="SECRET",
                      help="require JWTs; accept HS256 ones signed with this secret (at least 32 bytes); "
                           "repeatable, to rotate secrets (claims: exp, sub, subscribe, publish, admin; "
                           "docs/EDGE.md)")
    edge.add_argument("--auth-public-key", action="append", default=[], type=readable_file, metavar="FILE",
                      help="require JWTs; accept ones signed by the private half of this PEM public key "
                           "(RSA: RS256..PS512, EC: ES256/384/512, Ed25519: EdDSA); repeatable")
    edge.add_argument("--auth-jwks", action="append", default=[], type=readable_file, metavar="FILE",
                      help="require JWTs; accept ones signed by a key of this JWKS document, picked by the "
                           "token's kid; repeatable")
    edge.add_argument("--auth-audience", metavar="AUD", help="accept only tokens whose aud names this")
    edge.add_argument("--auth-issuer", metavar="ISS", help="accept only tokens whose iss is this")
    edge.add_argument("--auth-max-lifetime", type=positive_float, default=DEFAULT_AUTH_MAX_LIFETIME,
                      metavar="SECONDS",
                      help="refuse tokens that expire further ahead than this; also how long a revocation "
                           "lasts unless told (default: %(default)s)")
    edge.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                      help="accept browser requests (and answer CORS) only from this Origin; repeatable (default: any)")
    edge.add_argument("--hooks-open", action="store_true",
                      help="without --auth-*, let clients other than loopback ones register, list and remove "
                           "webhooks at /hooks (refused by default; with auth an admin token is needed)")
    edge.add_argument("--max-subscriptions", type=positive_int, default=128, metavar="N",
                      help="subscriptions per connection (default: 128)")
    edge.add_argument("--queue-bytes", type=positive_int, default=1024 * 1024, metavar="BYTES",
                      help="outgoing queue per connection; a client that lets it fill is cut off "
                           "(default: 1048576)")
    edge.add_argument("--buffer-bytes", type=positive_int, default=256 * 1024 * 1024, metavar="BYTES",
                      help="outgoing queues of all connections together; when they are full a client with "
                           "a backlog is cut off like a slow consumer (default: 268435456)")
    edge.add_argument("--max-connections", type=positive_int, default=10_000, metavar="N",
                      help="concurrent HTTP connections of every kind (WebSocket, SSE, requests); lowered, "
                           "with a warning, to what the open-file limit leaves after the node's own "
                           "reserve (docs/EDGE.md) (default: 10000)")
    edge.add_argument("--max-per-address", type=int, default=0, metavar="N",
                      help="connections one client address may hold; more get 503 (default: 0, no limit: "
                           "behind a load balancer every client has its address)")
    edge.add_argument("--header-timeout", type=positive_float, default=10.0, metavar="SECONDS",
                      help="close a connection whose request line and headers are not complete this "
                           "long after it began waiting for them (slow or idle clients) (default: 10)")
    edge.add_argument("--keepalive", type=float, default=15.0, metavar="SECONDS",
                      help="SSE keep-alive comment interval (default: 15)")
    edge.add_argument("--request-timeout", type=float, default=30.0, metavar="SECONDS",
                      help="drop an HTTP client whose request (or SSE write) stalls this long (default: 30)")


def _security_arguments(run):
    security = run.add_argument_group("security")
    security.add_argument("--curve-keys", metavar="DIR",
                          help="CurveZMQ on every ZeroMQ socket: serve with DIR/mesh.key_secret, connect to "
                               "peers as DIR/NAME.key_secret (or the mesh key), and let in only the public "
                               "keys (*.key) in DIR. Make keys with 'meshnode keygen'")
    security.add_argument("--insecure", action="store_true",
                          help="allow binding a non-loopback --host without --curve-keys")


def cmd_run(args):
    import logging

    import signal

    import gevent
    import gevent.event

    from discovery import StaticDiscovery, ZooKeeperDiscovery
    from mesh.addresses import join_host_port
    from mesh.context import shared_context
    from mesh.control import is_loopback
    from nodes.node import Node, NodeConfig, node_curve_keys
    from nodes.history.recorder import HistoryRule

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ws4py").setLevel(max(logging.WARNING, logging.getLevelName(args.log_level)))
    open_files = _raise_open_file_limit()
    edge = None
    if args.http is not None:
        edge = _edge_config(args, open_files)
    config = NodeConfig(name=args.name, host=args.host, port=args.port, advertise=args.advertise,
                        max_payload=args.max_payload, hwm=args.hwm, peers=args.peer, edge=edge,
                        curve_keys=args.curve_keys or "", revocation_seconds=args.auth_max_lifetime,
                        history=[HistoryRule(text) for text in args.history], history_bytes=args.history_bytes,
                        history_replicas=args.history_replicas,
                        metrics=args.metrics or "", group=args.group, gateway=args.gateway,
                        hooks_allow=args.hooks_allow, data_dir=args.data_dir or "", fsync=args.fsync,
                        heartbeat_pings=args.heartbeat_pings, job_replicas=args.job_replicas)
    import zmq

    if args.zk and args.peer:
        raise ValueError("use either --zk or --peer, not both")
    if not args.curve_keys and not args.insecure and not is_loopback(args.host):
        raise ValueError(f"binding {args.host} without --curve-keys lets anyone who can reach it join and "
                         f"read the mesh; pass --curve-keys DIR, or --insecure to do it anyway")
    curve = node_curve_keys(config)
    if args.group and not args.zk:
        raise ValueError("--group needs --zk: groups and their gateways are found in ZooKeeper")
    if args.zk:
        discovery = ZooKeeperDiscovery(args.zk, args.mesh, session_timeout=args.zk_timeout, auth=args.zk_auth,
                                       group=args.group or None, curve=curve)
    else:
        discovery = StaticDiscovery(shared_context(config.host, config.advertise, *config.peers), config.peers,
                                    curve=curve)
    try:
        node = Node(config, discovery)
    except zmq.ZMQError as exc:
        raise RuntimeError(f"cannot bind on {join_host_port(args.host, args.port)}: {exc}") from None
    node.start()
    stop = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    member = node.member
    http = "" if node.edge is None else (f" http={join_host_port(config.advertise, node.edge.port)} "
                                         f"max_connections={node.edge.config.max_connections}")
    if node.metrics_port is not None:
        http += f" metrics={join_host_port(config.metrics.rpartition(':')[0] or config.host, node.metrics_port)}"
    print(f"meshnode ready name={node.name} control={member['control'].removeprefix('tcp://')} "
          f"ingress={member['ingress']} out={member['out']} remote={member['remote']}{http}", flush=True)
    stop.wait()
    node.stop()
    print(f"meshnode stopped name={node.name}", flush=True)
    return 0


def _edge_config(args, open_files):
    """The edge's settings from the flags (imported only when the node serves HTTP)."""
    from nodes.edge.auth import Authenticator
    from nodes.edge.edge import EdgeConfig

    from nodes.edge.server import connection_budget

    return EdgeConfig(host=args.host, port=args.http, max_payload=args.max_payload,
                      max_subscriptions=args.max_subscriptions, queue_bytes=args.queue_bytes,
                      buffer_bytes=args.buffer_bytes, max_per_address=max(0, args.max_per_address),
                      max_connections=connection_budget(args.max_connections, open_files),
                      header_timeout=args.header_timeout,
                      auth=Authenticator(args.auth_secret, args.auth_public_key, args.auth_jwks,
                                         audience=args.auth_audience, issuer=args.auth_issuer,
                                         max_lifetime=args.auth_max_lifetime),
                      allowed_origins=args.allowed_origin, keepalive_seconds=args.keepalive,
                      request_timeout=args.request_timeout, stream_idle=args.stream_idle,
                      hooks_open=args.hooks_open)


def _raise_open_file_limit():
    """Every edge connection and peer link is a file descriptor: use the hard
    limit. Returns the limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
