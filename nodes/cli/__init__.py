"""The ``meshnode`` command: run a node, publish, subscribe, inspect, demo.

``main`` monkey-patches with gevent before importing anything that uses
sockets; library code never patches on import.
"""

import argparse
import sys

from . import admin, client, demo, run
from .common import EPILOG_ADDRESSES

COMMANDS = {"run": (run.run_parser, run.cmd_run), **client.COMMANDS, **admin.COMMANDS, **demo.COMMANDS}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="meshnode",
        description="A broker-less publish/subscribe mesh over ZeroMQ. Run one node per host; "
                    "nodes forward subscriptions to each other so a message travels at most one hop.",
        epilog=EPILOG_ADDRESSES)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser, _ in COMMANDS.values():
        add_parser(commands)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.config:
        from nodes.cli.config import parse_with_config

        args = parse_with_config(parser, argv, args.config)
    if args.command in ("run", "demo"):
        from gevent import monkey

        monkey.patch_all()
    try:
        return COMMANDS[args.command][1](args)
    except KeyboardInterrupt:
        return 130
    except (TimeoutError, ValueError, RuntimeError) as exc:
        where = f" (settings from {args.config} and the command line)" if getattr(args, "config", None) else ""
        print(f"meshnode {args.command}: {exc}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
