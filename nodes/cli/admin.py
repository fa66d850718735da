"""The admin commands: ``hooks``, ``stats``, ``revoke``, ``presence``,
``channels``, ``peers``, ``keygen`` and ``nodes``."""

import json
import sys
import time

from .common import (EPILOG_ADDRESSES, client_curve, control_request, node_arguments, positive_float, positive_int,
                     zookeeper_arguments)


def hooks_parser(commands):
    """The ``hooks`` sub-command: add, rm, ls."""
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
    hook_add.add_argument("--max-age", type=positive_float, metavar="SECONDS",
                          help="give up on a message this long after it was published (default: 3600)")
    node_arguments(hook_add)
    hook_rm = hook_commands.add_parser("rm", help="unregister URL from KEY")
    hook_rm.add_argument("key")
    hook_rm.add_argument("url")
    node_arguments(hook_rm)
    hook_ls = hook_commands.add_parser("ls", help="list hooks (of KEY) with this node's delivery counters")
    hook_ls.add_argument("key", nargs="?")
    node_arguments(hook_ls)


def cmd_hooks(args):
    if args.hooks_command == "add":
        fields = {"key": args.key, "url": args.url}
        for name, value in (("pattern", args.pattern), ("secrets", args.secret), ("max_age", args.max_age)):
            if value is not None:
                fields[name] = value
        print(json.dumps(control_request(args, "hook_add", **fields)["hook"], sort_keys=True))
    elif args.hooks_command == "rm":
        control_request(args, "hook_rm", key=args.key, url=args.url)
    else:
        for hook in control_request(args, "hook_ls", **({} if args.key is None else {"key": args.key}))["hooks"]:
            print(json.dumps(hook, sort_keys=True))
    return 0


def stats_parser(commands):
    """The ``stats`` sub-command."""
    stats = commands.add_parser("stats", help="print a node's counters as JSON", epilog=EPILOG_ADDRESSES)
    node_arguments(stats)


def cmd_stats(args):
    print(json.dumps(control_request(args, "stats"), indent=2, sort_keys=True))
    return 0


def revoke_parser(commands):
    """The ``revoke`` sub-command."""
    revoke = commands.add_parser("revoke", help="close and refuse a token subject's connections mesh-wide",
                                 description=(
        "Make every edge of the mesh close the connections whose token 'sub' is SUB (an error frame "
        "token_revoked, then close code 4003) and refuse that sub's tokens until the revocation lapses. "
        "The node relays it to every peer it knows and, with --zk, stores it in ZooKeeper for nodes "
        "that start later. Prints which peers confirmed."), epilog=EPILOG_ADDRESSES)
    revoke.add_argument("sub", metavar="SUB")
    revoke.add_argument("--for", dest="seconds", type=positive_float, metavar="SECONDS",
                        help="how long it lasts (default: the node's --auth-max-lifetime, so that every token "
                             "that could name SUB has expired when it lapses)")
    node_arguments(revoke)


def cmd_revoke(args):
    reply = control_request(args, "revoke", sub=args.sub, **({} if args.seconds is None else
                                                              {"seconds": args.seconds}))
    print(json.dumps(reply, sort_keys=True))
    missed = [name for name, answer in reply["peers"].items() if answer != "ok"]
    if missed and not reply["stored"]:
        print(f"meshnode revoke: not confirmed by {', '.join(missed)}, and no ZooKeeper holds it: "
              f"those nodes do not know", file=sys.stderr)
        return 1
    return 0


def presence_parser(commands):
    """The ``presence`` sub-command."""
    present = commands.add_parser("presence", help="who is in a channel, across the mesh", description=(
        "Print as JSON the edge connections (WebSocket, SSE) in CHANNEL on every node, with their token's "
        "sub (user), transport, address and node, and the mesh-wide counts. CHANNEL is a subject (the "
        "connections that would receive a message on it) or a pattern (those subscribed within it). "
        "Nodes that do not answer within a second are listed under 'unreachable'; exit code 1 then."),
        epilog=EPILOG_ADDRESSES)
    present.add_argument("channel", metavar="CHANNEL")
    present.add_argument("--limit", type=positive_int, default=1000, help="most connections and users listed")
    node_arguments(present)


def cmd_presence(args):
    return _mesh_view(args, lambda client: client.presence(args.channel, args.limit))


def channels_parser(commands):
    """The ``channels`` sub-command."""
    channel_stats = commands.add_parser("channels", help="subscribers and messages per channel, across the mesh",
                                        description=(
        "Print as JSON, per pattern edge clients subscribe to: subscribers (summed over nodes), messages "
        "(that reached an edge on it), delivered (copies sent to clients), last_message (Unix time) and "
        "the nodes where it has subscribers. Exit code 1 if a node did not answer."), epilog=EPILOG_ADDRESSES)
    channel_stats.add_argument("--limit", type=positive_int, default=1000, help="most channels listed")
    node_arguments(channel_stats)


def cmd_channels(args):
    return _mesh_view(args, lambda client: client.channels(args.limit))


def _mesh_view(args, ask):
    from mesh import Client

    with Client(args.node, curve=client_curve(args)) as client:
        view = ask(client)
    print(json.dumps(view, indent=2, sort_keys=True))
    for name, why in view["unreachable"].items():
        print(f"meshnode {args.command}: node {name} did not answer ({why}): its part is missing",
              file=sys.stderr)
    return 1 if view["unreachable"] else 0


def peers_parser(commands):
    """The ``peers`` sub-command."""
    peers = commands.add_parser("peers", help="print the peers a node is linked to", epilog=EPILOG_ADDRESSES)
    node_arguments(peers)


def cmd_peers(args):
    for record in control_request(args, "peers")["peers"]:
        print(json.dumps(record, sort_keys=True))
    return 0


def keygen_parser(commands):
    """The ``keygen`` sub-command."""
    keygen = commands.add_parser("keygen", help="create a CurveZMQ keypair in a key directory",
                                 description="Create DIR/NAME.key (public) and DIR/NAME.key_secret. Make 'mesh' "
                                             "first (the key every node serves with), then one per node and "
                                             "client. A node lets in every *.key in its directory.")
    keygen.add_argument("directory", metavar="DIR")
    keygen.add_argument("name", metavar="NAME")


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


def nodes_parser(commands):
    """The ``nodes`` sub-command."""
    nodes = commands.add_parser("nodes", help="list the members of a mesh registered in ZooKeeper",
                                description="List the nodes registered in ZooKeeper for a mesh: name, "
                                            "endpoints, uptime.")
    zookeeper_arguments(nodes, "ZooKeeper to read the membership from", required=True)
    nodes.add_argument("--json", action="store_true", help="one JSON object per node per line")


def cmd_nodes(args):
    from mesh.zkmembers import connect, every_member

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


COMMANDS = {"hooks": (hooks_parser, cmd_hooks), "stats": (stats_parser, cmd_stats), "revoke": (revoke_parser, cmd_revoke),
            "presence": (presence_parser, cmd_presence), "channels": (channels_parser, cmd_channels),
            "peers": (peers_parser, cmd_peers), "keygen": (keygen_parser, cmd_keygen), "nodes": (nodes_parser, cmd_nodes)}
