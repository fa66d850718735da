"""What the ``meshnode`` commands share: argument types, the options that
name a node or a ZooKeeper mesh, and one control request to a node."""

import argparse
import os

from mesh.addresses import split_host_port  # pure text: no sockets before gevent's patching

EPILOG_ADDRESSES = "Addresses are a node's control address, HOST:PORT (default port 7400)."


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def node_address(text):
    """A ``--peer``/``--node`` value: HOST:PORT, an IPv6 host in brackets."""
    try:
        split_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def readable_file(text):
    """A file the node reads at start (a key, a JWKS document): refused now if it cannot be read."""
    try:
        with open(text, "rb"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {exc.strerror or exc}") from None
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"cannot read {text}: it is a directory")
    return text


def node_arguments(parser):
    parser.add_argument("--node", default="127.0.0.1:7400", type=node_address, metavar="HOST:PORT",
                        help="the node to talk to")
    parser.add_argument("--curve-keys", metavar="DIR", help="key directory of a mesh that uses CurveZMQ")
    parser.add_argument("--curve-name", default="mesh", metavar="NAME",
                        help="use DIR/NAME.key_secret as this client's identity (default: mesh)")


def client_curve(args):
    from mesh.curve import CurveKeys

    return CurveKeys.load(args.curve_keys, args.curve_name) if args.curve_keys else None


def zookeeper_arguments(parser, zk_help, required=False):
    parser.add_argument("--zk", required=required, metavar="HOST:PORT[,HOST:PORT...][/CHROOT]", help=zk_help)
    parser.add_argument("--mesh", default="default", metavar="NAME",
                        help="mesh name: nodes register under /meshnode/NAME/nodes (default: default)")
    parser.add_argument("--zk-auth", metavar="USER:PASSWORD",
                        help="ZooKeeper digest auth; the mesh's znodes become writable by this user only")


def control_request(args, cmd, **fields):
    from mesh.context import shared_context
    from mesh.control import ControlChannel
    from mesh.concurrency import pick_waiter

    channel = ControlChannel(shared_context(args.node), args.node, pick_waiter(), curve=client_curve(args))
    try:
        return channel.request(cmd, **fields)
    finally:
        channel.close()
