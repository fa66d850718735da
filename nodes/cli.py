"""The ``meshnode`` command: run a node, publish, subscribe, inspect, demo.

``main`` monkey-patches with gevent before importing anything that uses
sockets; library code never patches on import.
"""

import argparse
import ipaddress
import json
import os
import sys
import time

from mesh.publisher import DEFAULT_STREAM_IDLE  # imports no sockets: patching later is fine

DEFAULT_AUTH_MAX_LIFETIME = 24 * 3600.0  # nodes/auth.py imports PyJWT, which must come after patching

EPILOG_ADDRESSES = "Addresses are a node's control address, HOST:PORT (default port 7400)."


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _network(text):
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address or a network (CIDR, e.g. 10.1.0.0/16)") from None


def build_parser():
    parser = argparse.ArgumentParser(
        prog="meshnode",
        description="A broker-less publish/subscribe mesh over ZeroMQ. Run one node per host; "
                    "nodes forward subscriptions to each other so a message travels at most one hop.",
        epilog=EPILOG_ADDRESSES)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
    run.add_argument("--peer", action="append", default=[], metavar="HOST:PORT",
                     help="a seed: another node's control address; repeatable. One that answers is enough "
                          "to join the whole mesh; one that does not is retried")
    _zookeeper_arguments(run, "find peers through ZooKeeper instead of --peer: register there and "
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
    run.add_argument("--max-payload", type=_positive_int, default=1024 * 1024, metavar="BYTES",
                     help="largest encoded message accepted (default: 1048576)")
    run.add_argument("--hwm", type=_positive_int, default=100_000, metavar="MESSAGES",
                     help="queue limit per socket connection before messages are dropped (default: 100000)")
    run.add_argument("--stream-idle", type=_positive_float, default=DEFAULT_STREAM_IDLE, metavar="SECONDS",
                     help="forget a stream (a publisher's subject) after this long without a message, "
                          "in this node's edge (the library's Client(stream_idle=) default is the same; "
                          "docs/PROTOCOL.md 4.5) (default: %(default)s)")
    run.add_argument("--history", action="append", default=[], metavar="PATTERN=COUNT/AGEs",
                     help="keep the last COUNT messages of each subject PATTERN matches, none older than AGE "
                          "seconds, of what is published at this node (e.g. 'chat.>=1000/300s'); repeatable; "
                          "read with the history control command (docs/HISTORY.md)")
    run.add_argument("--history-bytes", type=_positive_int, default=64 * 1024 * 1024, metavar="BYTES",
                     help="all history together; the oldest messages go first (default: 67108864)")
    run.add_argument("--data-dir", metavar="DIR",
                     help="keep history and held jobs on disk in DIR, across restarts and kill -9 "
                          "(default: in memory only; docs/HISTORY.md)")
    run.add_argument("--fsync", choices=["batch", "never"], default="batch",
                     help="with --data-dir: fsync every write batch (at most 50 ms of changes), or leave "
                          "it to the operating system (default: %(default)s)")
    run.add_argument("--metrics", metavar="HOST:PORT",
                     help="serve Prometheus metrics at http://HOST:PORT/metrics (an edge also serves them "
                          "at /metrics on its --http port; docs/OPERATIONS.md)")
    run.add_argument("--hooks-allow", action="append", default=[], metavar="CIDR", type=_network,
                     help="let webhooks reach addresses in this network although they are loopback, private, "
                          "link-local or otherwise inside (refused by default); repeatable; a mesh node's own "
                          "ports stay refused (docs/WEBHOOKS.md)")
    edge = run.add_argument_group("edge (HTTP, WebSocket, Server-Sent Events; off without --http)")
    edge.add_argument("--http", type=int, metavar="PORT",
                      help="serve WebSocket (/ws), HTTP publish (/pub), SSE (/sub), /stats and a page at / "
                           "on this port (0 picks one)")
    edge.add_argument("--auth-secret", action="append", default=[], metavar="SECRET",
                      help="require JWTs; accept HS256 ones signed with this secret (at least 32 bytes); "
                           "repeatable, to rotate secrets (claims: exp, sub, subscribe, publish, admin; "
                           "docs/EDGE.md)")
    edge.add_argument("--auth-public-key", action="append", default=[], metavar="FILE",
                      help="require JWTs; accept ones signed by the private half of this PEM public key "
                           "(RSA: RS256..PS512, EC: ES256/384/512, Ed25519: EdDSA); repeatable")
    edge.add_argument("--auth-jwks", action="append", default=[], metavar="FILE",
                      help="require JWTs; accept ones signed by a key of this JWKS document, picked by the "
                           "token's kid; repeatable")
    edge.add_argument("--auth-audience", metavar="AUD", help="accept only tokens whose aud names this")
    edge.add_argument("--auth-issuer", metavar="ISS", help="accept only tokens whose iss is this")
    edge.add_argument("--auth-max-lifetime", type=_positive_float, default=DEFAULT_AUTH_MAX_LIFETIME,
                      metavar="SECONDS",
                      help="refuse tokens that expire further ahead than this; also how long a revocation "
                           "lasts unless told (default: %(default)s)")
    edge.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                      help="accept browser requests only from this Origin; repeatable (default: any)")
    edge.add_argument("--hooks-open", action="store_true",
                      help="without --auth-*, let clients other than loopback ones register, list and remove "
                           "webhooks at /hooks (refused by default; with auth an admin token is needed)")
    edge.add_argument("--max-subscriptions", type=_positive_int, default=128, metavar="N",
                      help="subscriptions per connection (default: 128)")
    edge.add_argument("--queue-bytes", type=_positive_int, default=1024 * 1024, metavar="BYTES",
                      help="outgoing queue per connection; a client that lets it fill is cut off "
                           "(default: 1048576)")
    edge.add_argument("--buffer-bytes", type=_positive_int, default=256 * 1024 * 1024, metavar="BYTES",
                      help="outgoing queues of all connections together; when they are full a client with "
                           "a backlog is cut off like a slow consumer (default: 268435456)")
    edge.add_argument("--max-connections", type=_positive_int, default=10_000, metavar="N",
                      help="concurrent HTTP connections of every kind (WebSocket, SSE, requests); lowered, "
                           "with a warning, to what the open-file limit leaves after the node's own "
                           "reserve (docs/EDGE.md) (default: 10000)")
    edge.add_argument("--max-per-address", type=int, default=0, metavar="N",
                      help="connections one client address may hold; more get 503 (default: 0, no limit: "
                           "behind a load balancer every client has its address)")
    edge.add_argument("--header-timeout", type=_positive_float, default=10.0, metavar="SECONDS",
                      help="close a connection whose request line and headers are not complete this "
                           "long after it began waiting for them (slow or idle clients) (default: 10)")
    edge.add_argument("--keepalive", type=float, default=15.0, metavar="SECONDS",
                      help="SSE keep-alive comment interval (default: 15)")
    edge.add_argument("--request-timeout", type=float, default=30.0, metavar="SECONDS",
                      help="drop an HTTP client whose request (or SSE write) stalls this long (default: 30)")
    security = run.add_argument_group("security")
    security.add_argument("--curve-keys", metavar="DIR",
                          help="CurveZMQ on every ZeroMQ socket: serve with DIR/mesh.key_secret, connect to "
                               "peers as DIR/NAME.key_secret (or the mesh key), and let in only the public "
                               "keys (*.key) in DIR. Make keys with 'meshnode keygen'")
    security.add_argument("--insecure", action="store_true",
                          help="allow binding a non-loopback --host without --curve-keys")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    pub = commands.add_parser("pub", help="publish a message", description=(
        "Publish DATA on SUBJECT. DATA is parsed as JSON when it is valid JSON, else sent as a "
        "string. With DATA '-', publish each line of stdin. Prints one JSON line per message."),
        epilog=EPILOG_ADDRESSES)
    pub.add_argument("subject")
    pub.add_argument("data")
    _node_arguments(pub)
    pub.add_argument("--string", action="store_true", help="send DATA as a string even if it is JSON")
    pub.add_argument("--wait", type=float, default=2.0, metavar="SECONDS",
                     help="wait up to this long for the node to answer (it may be restarting) and for "
                          "a subscriber to exist before publishing, since messages with no subscriber "
                          "are dropped (default: 2)")

    sub = commands.add_parser("sub", help="subscribe and print messages", description=(
        "Subscribe to PATTERN ('*' matches one token, '>' the rest) and print one JSON line per "
        "message: subject, data, origin, seq, ts. Bytes are shown as {\"$base64\": ...}. If the node "
        "stops or restarts, it says so on stderr and keeps going when the node is back. On exit it "
        "reports on stderr how many messages it knows it missed (sequence gaps)."),
        epilog=EPILOG_ADDRESSES)
    sub.add_argument("pattern")
    _node_arguments(sub)
    sub.add_argument("--count", type=_positive_int, help="exit after this many messages")
    sub.add_argument("--timeout", type=float, help="exit with status 1 if no message comes for this long")
    sub.add_argument("--since", metavar="POSITION",
                     help="first recover what was published after this position (JSON, as written by "
                          "--position-file, an SSE event id or POST /pub's reply)")
    sub.add_argument("--position-file", metavar="FILE",
                     help="on exit, write how far this got (a position, JSON) to FILE; if FILE exists at start, "
                          "first recover what was published after it from the mesh's history (nodes with "
                          "--history; docs/HISTORY.md) and say on stderr whether every stream was recovered")

    request = commands.add_parser("request", help="send a request and print the reply", description=(
        "Publish DATA (JSON when it parses, else a string) as a request on SUBJECT and print the reply "
        "as one JSON line. Exits 1 at once when no subscriber in the mesh covers SUBJECT, 1 after "
        "--timeout when none answers, 1 when the responder reports a failure."), epilog=EPILOG_ADDRESSES)
    request.add_argument("subject")
    request.add_argument("data")
    request.add_argument("--timeout", type=_positive_float, default=5.0, metavar="SECONDS",
                         help="how long to wait for the reply (default: 5)")
    _node_arguments(request)

    reply = commands.add_parser("reply", help="answer requests on a pattern", description=(
        "Answer every request on PATTERN until interrupted: with the request's data (the default), or "
        "with what COMMAND prints when given the request's data (JSON) on stdin; its output is sent as "
        "JSON when it parses, else as a string. A command that exits non-zero sends its stderr back as "
        "the failure. Prints one JSON line per request answered."), epilog=EPILOG_ADDRESSES)
    reply.add_argument("pattern")
    reply.add_argument("--command", dest="shell_command", metavar="COMMAND",
                       help="a shell command that computes each reply")
    reply.add_argument("--count", type=_positive_int, help="exit after answering this many requests")
    _node_arguments(reply)

    hooks = commands.add_parser("hooks", help="register, remove and list webhooks", description=(
        "Webhooks: every message on a hook's pattern (default hooks.KEY.>) is POSTed to its URL once, "
        "signed as the Standard Webhooks spec says, with retries (docs/QUEUES.md)."), epilog=EPILOG_ADDRESSES)
    hook_commands = hooks.add_subparsers(dest="hooks_command", required=True)
    hook_add = hook_commands.add_parser("add", help="register URL under KEY (prints the hook with its secret)")
    hook_add.add_argument("key")
    hook_add.add_argument("url")
    hook_add.add_argument("--pattern", help="the subjects it follows (default: hooks.KEY.>)")
    hook_add.add_argument("--secret", action="append", metavar="whsec_...",
                          help="signing secret; repeat during a rotation (default: a new one)")
    hook_add.add_argument("--max-age", type=_positive_float, metavar="SECONDS",
                          help="give up on a message this long after it was published (default: 3600)")
    _node_arguments(hook_add)
    hook_rm = hook_commands.add_parser("rm", help="unregister URL from KEY")
    hook_rm.add_argument("key")
    hook_rm.add_argument("url")
    _node_arguments(hook_rm)
    hook_ls = hook_commands.add_parser("ls", help="list hooks (of KEY) with this node's delivery counters")
    hook_ls.add_argument("key", nargs="?")
    _node_arguments(hook_ls)

    stats = commands.add_parser("stats", help="print a node's counters as JSON", epilog=EPILOG_ADDRESSES)
    _node_arguments(stats)

    revoke = commands.add_parser("revoke", help="close and refuse a token subject's connections mesh-wide",
                                 description=(
        "Make every edge of the mesh close the connections whose token 'sub' is SUB (an error frame "
        "token_revoked, then close code 4003) and refuse that sub's tokens until the revocation lapses. "
        "The node relays it to every peer it knows and, with --zk, stores it in ZooKeeper for nodes "
        "that start later. Prints which peers confirmed."), epilog=EPILOG_ADDRESSES)
    revoke.add_argument("sub", metavar="SUB")
    revoke.add_argument("--for", dest="seconds", type=_positive_float, metavar="SECONDS",
                        help="how long it lasts (default: the node's --auth-max-lifetime, so that every token "
                             "that could name SUB has expired when it lapses)")
    _node_arguments(revoke)

    present = commands.add_parser("presence", help="who is in a channel, across the mesh", description=(
        "Print as JSON the edge connections (WebSocket, SSE) in CHANNEL on every node, with their token's "
        "sub (user), transport, address and node, and the mesh-wide counts. CHANNEL is a subject (the "
        "connections that would receive a message on it) or a pattern (those subscribed within it). "
        "Nodes that do not answer within a second are listed under 'unreachable'; exit code 1 then."),
        epilog=EPILOG_ADDRESSES)
    present.add_argument("channel", metavar="CHANNEL")
    present.add_argument("--limit", type=_positive_int, default=1000, help="most connections and users listed")
    _node_arguments(present)
    channel_stats = commands.add_parser("channels", help="subscribers and messages per channel, across the mesh",
                                        description=(
        "Print as JSON, per pattern edge clients subscribe to: subscribers (summed over nodes), messages "
        "(that reached an edge on it), delivered (copies sent to clients), last_message (Unix time) and "
        "the nodes where it has subscribers. Exit code 1 if a node did not answer."), epilog=EPILOG_ADDRESSES)
    channel_stats.add_argument("--limit", type=_positive_int, default=1000, help="most channels listed")
    _node_arguments(channel_stats)

    peers = commands.add_parser("peers", help="print the peers a node is linked to", epilog=EPILOG_ADDRESSES)
    _node_arguments(peers)

    keygen = commands.add_parser("keygen", help="create a CurveZMQ keypair in a key directory",
                                 description="Create DIR/NAME.key (public) and DIR/NAME.key_secret. Make 'mesh' "
                                             "first (the key every node serves with), then one per node and "
                                             "client. A node lets in every *.key in its directory.")
    keygen.add_argument("directory", metavar="DIR")
    keygen.add_argument("name", metavar="NAME")

    nodes = commands.add_parser("nodes", help="list the members of a mesh registered in ZooKeeper",
                                description="List the nodes registered in ZooKeeper for a mesh: name, "
                                            "endpoints, uptime.")
    _zookeeper_arguments(nodes, "ZooKeeper to read the membership from", required=True)
    nodes.add_argument("--json", action="store_true", help="one JSON object per node per line")

    demo = commands.add_parser("demo", help="start a local mesh and show messages flowing", description=(
        "Start a local mesh of nodes on loopback, subscribe at every node but the first, publish "
        "at the first and print what arrives. Stops on Ctrl-C or after --seconds."))
    demo.add_argument("--nodes", type=_positive_int, default=3)
    demo.add_argument("--base-port", type=int, default=7401, help="control port of the first node")
    demo.add_argument("--seconds", type=float, help="stop after this long (default: run until Ctrl-C)")
    demo.add_argument("--http", type=int, default=8400, metavar="PORT",
                      help="HTTP port of the last node, which serves the built-in page (default: 8400; 0 picks one)")
    return parser


def _node_arguments(parser):
    parser.add_argument("--node", default="127.0.0.1:7400", metavar="HOST:PORT", help="the node to talk to")
    parser.add_argument("--curve-keys", metavar="DIR", help="key directory of a mesh that uses CurveZMQ")
    parser.add_argument("--curve-name", default="mesh", metavar="NAME",
                        help="use DIR/NAME.key_secret as this client's identity (default: mesh)")


def _client_curve(args):
    from mesh.curve import CurveKeys

    return CurveKeys.load(args.curve_keys, args.curve_name) if args.curve_keys else None


def _zookeeper_arguments(parser, zk_help, required=False):
    parser.add_argument("--zk", required=required, metavar="HOST:PORT[,HOST:PORT...][/CHROOT]", help=zk_help)
    parser.add_argument("--mesh", default="default", metavar="NAME",
                        help="mesh name: nodes register under /meshnode/NAME/nodes (default: default)")
    parser.add_argument("--zk-auth", metavar="USER:PASSWORD",
                        help="ZooKeeper digest auth; the mesh's znodes become writable by this user only")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.config:
        from nodes.config import parse_with_config

        args = parse_with_config(parser, argv, args.config)
    if args.command in ("run", "demo"):
        from gevent import monkey

        monkey.patch_all()
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except (TimeoutError, ValueError, RuntimeError) as exc:
        print(f"meshnode {args.command}: {exc}", file=sys.stderr)
        return 1


def cmd_run(args):
    import logging

    import signal

    import gevent
    import gevent.event

    from discovery import StaticDiscovery, ZooKeeperDiscovery
    from mesh.control import is_loopback
    from nodes.node import Node, NodeConfig, node_curve_keys
    from nodes.recorder import HistoryRule

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ws4py").setLevel(max(logging.WARNING, logging.getLevelName(args.log_level)))
    open_files = _raise_open_file_limit()
    edge = None
    if any(len(secret.encode()) < 32 for secret in args.auth_secret):
        raise ValueError("--auth-secret must be at least 32 bytes for HS256 (RFC 7518, section 3.2)")
    if args.http is not None:
        from nodes.auth import Authenticator
        from nodes.edge import EdgeConfig

        from nodes.edgeserver import connection_budget

        edge = EdgeConfig(host=args.host, port=args.http, max_payload=args.max_payload,
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
    config = NodeConfig(name=args.name, host=args.host, port=args.port, advertise=args.advertise,
                        max_payload=args.max_payload, hwm=args.hwm, peers=args.peer, edge=edge,
                        curve_keys=args.curve_keys or "", revocation_seconds=args.auth_max_lifetime,
                        history=[HistoryRule(text) for text in args.history], history_bytes=args.history_bytes,
                        metrics=args.metrics or "", group=args.group, gateway=args.gateway,
                        hooks_allow=args.hooks_allow, data_dir=args.data_dir or "", fsync=args.fsync)
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
        discovery = StaticDiscovery(zmq.Context.instance(), config.peers, curve=curve)
    try:
        node = Node(config, discovery)
    except zmq.ZMQError as exc:
        raise RuntimeError(f"cannot bind on {args.host}:{args.port}: {exc}") from None
    node.start()
    stop = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    member = node.member
    http = "" if node.edge is None else (f" http={config.advertise}:{node.edge.port} "
                                         f"max_connections={node.edge.config.max_connections}")
    if node.metrics_port is not None:
        http += f" metrics={config.metrics.rpartition(':')[0] or config.host}:{node.metrics_port}"
    print(f"meshnode ready name={node.name} control={member['control'].removeprefix('tcp://')} "
          f"ingress={member['ingress']} out={member['out']} remote={member['remote']}{http}", flush=True)
    stop.wait()
    node.stop()
    print(f"meshnode stopped name={node.name}", flush=True)
    return 0


def _raise_open_file_limit():
    """Every edge connection and peer link is a file descriptor: use the hard
    limit. Returns the limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cmd_pub(args):
    from mesh import Client

    lines = (line.rstrip("\n") for line in sys.stdin) if args.data == "-" else [args.data]
    deadline = time.monotonic() + args.wait
    while True:  # a node that is restarting gets until --wait to answer
        try:
            client = Client(args.node, curve=_client_curve(args), timeout=min(5.0, max(1.0, args.wait)))
            break
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.25)
    with client:
        interest = client.wait_for_interest(args.subject, max(0.0, deadline - time.monotonic()))
        for line in lines:
            data = line
            if not args.string:
                try:
                    data = json.loads(line)
                except ValueError:
                    pass
            interest = interest or client.has_interest(args.subject)
            recorded = client.has_interest(args.subject, history=True)  # by the node's history, if not read
            seq = client.publish(args.subject, data)
            print(json.dumps({"subject": args.subject, "seq": seq, "subscribers": interest}), flush=True)
            if not interest:
                fate = "only the node's history recorded it" if recorded else "the message was dropped"
                print(f"meshnode pub: no subscriber covers {args.subject!r}; {fate}", file=sys.stderr)
    return 0


def _json_or_text(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_request(args):
    from mesh import Client, NoResponders, RemoteError, RequestTimeout
    from nodes.edgeproto import json_default

    with Client(args.node, curve=_client_curve(args)) as client:
        try:
            reply = client.request(args.subject, _json_or_text(args.data), timeout=args.timeout)
        except (NoResponders, RequestTimeout, RemoteError) as exc:
            print(f"meshnode request: {exc}", file=sys.stderr)
            return 1
    print(json.dumps({"subject": args.subject, "data": reply.data, "origin": reply.origin}, default=json_default))
    return 0


def cmd_reply(args):
    import subprocess
    import threading

    from mesh import Client
    from nodes.edgeproto import json_default

    answered = threading.Semaphore(0)

    def answer(message):
        if not message.reply:
            return  # a plain publish on the pattern
        data, failure = message.data, None
        if args.shell_command:
            result = subprocess.run(args.shell_command, shell=True, capture_output=True, text=True,
                                    timeout=60, input=json.dumps(data, default=json_default))
            if result.returncode != 0:
                failure = f"exit {result.returncode}: {result.stderr.strip()[:1000]}"
            data = _json_or_text(result.stdout.strip())
        client.respond(message, data, failure)
        print(json.dumps({"subject": message.subject, "request": message.data,
                          **({"error": failure} if failure else {"reply": data})}, default=json_default), flush=True)
        answered.release()

    with Client(args.node, curve=_client_curve(args)) as client:
        client.subscribe(args.pattern, answer)
        print(f"meshnode reply: answering requests on {args.pattern!r}", file=sys.stderr, flush=True)
        for _ in iter(int, 1) if args.count is None else range(args.count):
            answered.acquire()
    return 0


def cmd_sub(args):
    import logging

    from mesh import Client
    from nodes.edgeproto import json_default

    def say(text):
        return lambda client: print(f"meshnode sub: {text.format(client=client)}", file=sys.stderr, flush=True)

    logging.getLogger("mesh").addHandler(logging.NullHandler())  # say() tells the user instead

    with Client(args.node, curve=_client_curve(args),
                on_disconnect=say("node {client.node} at {client.address} does not answer; reconnecting"),
                on_reconnect=say("attached to node {client.node} again; messages missed meanwhile "
                                 "count as missed")) as client:
        since = args.since
        if since is None and args.position_file and os.path.exists(args.position_file):
            with open(args.position_file) as f:
                since = f.read()
        sub = client.subscribe(args.pattern, since=since)
        if sub.recovery is not None:
            print(f"meshnode sub: {_recovery_text(sub.recovery)}", file=sys.stderr, flush=True)
        status = 0
        try:
            while args.count is None or sub.received < args.count:  # received: handed to us by get()
                try:
                    message = sub.get(timeout=args.timeout)
                except TimeoutError:
                    print(f"meshnode sub: no message within {args.timeout} s", file=sys.stderr)
                    status = 1
                    break
                print(json.dumps(message.to_dict(), default=json_default), flush=True)
        finally:  # also on Ctrl-C: loss is never silent
            if sub.gaps or sub.malformed or sub.dropped:
                print(f"meshnode sub: {sub.gaps} messages missed, {sub.dropped} dropped while we lagged, "
                      f"{sub.malformed} malformed dropped", file=sys.stderr)
            if args.position_file:
                with open(args.position_file + ".tmp", "w") as f:
                    f.write(sub.position.to_json())
                os.replace(args.position_file + ".tmp", args.position_file)
    return status


def _recovery_text(recovery):
    if recovery.recovered:
        return f"recovered: {recovery.replayed} messages replayed from history"
    failed = {f"{subject} from {origin}": state for (origin, subject), state in recovery.streams.items()
              if state != "complete"}
    return (f"NOT fully recovered: {recovery.replayed} messages replayed; not recovered: {failed or 'none'}; "
            f"{recovery.lost} messages known lost so far (counted as missed); "
            f"nodes that did not answer: {recovery.unreachable or 'none'}; {'; '.join(recovery.problems)}")


def _control_request(args, cmd, **fields):
    import zmq

    from mesh.control import ControlChannel
    from mesh.waiting import pick_waiter

    channel = ControlChannel(zmq.Context.instance(), args.node, pick_waiter(), curve=_client_curve(args))
    try:
        return channel.request(cmd, **fields)
    finally:
        channel.close()


def cmd_hooks(args):
    if args.hooks_command == "add":
        fields = {"key": args.key, "url": args.url}
        for name, value in (("pattern", args.pattern), ("secrets", args.secret), ("max_age", args.max_age)):
            if value is not None:
                fields[name] = value
        print(json.dumps(_control_request(args, "hook_add", **fields)["hook"], sort_keys=True))
    elif args.hooks_command == "rm":
        _control_request(args, "hook_rm", key=args.key, url=args.url)
    else:
        for hook in _control_request(args, "hook_ls", **({} if args.key is None else {"key": args.key}))["hooks"]:
            print(json.dumps(hook, sort_keys=True))
    return 0


def cmd_revoke(args):
    reply = _control_request(args, "revoke", sub=args.sub, **({} if args.seconds is None else
                                                              {"seconds": args.seconds}))
    print(json.dumps(reply, sort_keys=True))
    missed = [name for name, answer in reply["peers"].items() if answer != "ok"]
    if missed and not reply["stored"]:
        print(f"meshnode revoke: not confirmed by {', '.join(missed)}, and no ZooKeeper holds it: "
              f"those nodes do not know", file=sys.stderr)
        return 1
    return 0


def cmd_stats(args):
    print(json.dumps(_control_request(args, "stats"), indent=2, sort_keys=True))
    return 0


def cmd_presence(args):
    return _mesh_view(args, lambda client: client.presence(args.channel, args.limit))


def cmd_channels(args):
    return _mesh_view(args, lambda client: client.channels(args.limit))


def _mesh_view(args, ask):
    from mesh import Client

    with Client(args.node, curve=_client_curve(args)) as client:
        view = ask(client)
    print(json.dumps(view, indent=2, sort_keys=True))
    for name, why in view["unreachable"].items():
        print(f"meshnode {args.command}: node {name} did not answer ({why}): its part is missing",
              file=sys.stderr)
    return 1 if view["unreachable"] else 0


def cmd_peers(args):
    for record in _control_request(args, "peers")["peers"]:
        print(json.dumps(record, sort_keys=True))
    return 0


def cmd_keygen(args):
    import os

    import zmq.auth

    os.makedirs(args.directory, exist_ok=True)
    for suffix in (".key", ".key_secret"):
        if os.path.exists(os.path.join(args.directory, args.name + suffix)):
            raise ValueError(f"{args.directory}/{args.name}{suffix} exists; not overwriting it")
    public, secret = zmq.auth.create_certificates(args.directory, args.name)
    os.chmod(secret, 0o600)
    print(f"{public}\n{secret}")
    return 0


def cmd_nodes(args):
    from mesh.zookeeper import connect, every_member

    client = connect(args.zk, connect_timeout=10, auth=args.zk_auth)
    try:
        members = every_member(client, args.mesh)
    finally:
        client.stop()
        client.close()
    now = time.time()
    if not args.json:
        print(f"{'NAME':<20} {'GROUP':<12} {'CONTROL':<24} {'UPTIME':>9}  DATA (ingress, out, remote)")
    for name, record in sorted(members.items()):
        uptime = now - record["started"]
        if args.json:
            print(json.dumps({**record, "uptime": round(uptime, 3)}, sort_keys=True))
        else:
            group = record.get("group", "-") + (" (gw)" if "gateway" in record else "")
            print(f"{name:<20} {group:<12} {record['control'].removeprefix('tcp://'):<24} {uptime:>8.0f}s  "
                  f"{record['ingress']} {record['out']} {record['remote']}")
    return 0


def cmd_demo(args):
    from nodes.demo import run_demo

    return run_demo(args.nodes, args.base_port, args.seconds, args.http)


COMMANDS = {"run": cmd_run, "pub": cmd_pub, "sub": cmd_sub, "stats": cmd_stats, "revoke": cmd_revoke,
            "request": cmd_request, "reply": cmd_reply, "hooks": cmd_hooks,
            "presence": cmd_presence, "channels": cmd_channels,
            "peers": cmd_peers, "nodes": cmd_nodes, "keygen": cmd_keygen, "demo": cmd_demo}


if __name__ == "__main__":
    sys.exit(main())
