"""The client commands: ``pub``, ``sub``, ``request`` and ``reply``."""

import json
import os
import sys
import time

from .common import EPILOG_ADDRESSES, client_curve, node_arguments, positive_float, positive_int


def pub_parser(commands):
    """The ``pub`` sub-command."""
    pub = commands.add_parser("pub", help="publish a message", description=(
        "Publish DATA on SUBJECT. DATA is parsed as JSON when it is valid JSON, else sent as a "
        "string. With DATA '-', publish each line of stdin. Prints one JSON line per message."),
        epilog=EPILOG_ADDRESSES)
    pub.add_argument("subject")
    pub.add_argument("data")
    node_arguments(pub)
    pub.add_argument("--string", action="store_true", help="send DATA as a string even if it is JSON")
    pub.add_argument("--wait", type=float, default=2.0, metavar="SECONDS",
                     help="wait up to this long for the node to answer (it may be restarting) and for "
                          "a subscriber to exist before publishing, since messages with no subscriber "
                          "are dropped (default: 2)")


def cmd_pub(args):
    from mesh import Client

    lines = (line.rstrip("\n") for line in sys.stdin) if args.data == "-" else [args.data]
    deadline = time.monotonic() + args.wait
    while True:  # a node that is restarting gets until --wait to answer
        try:
            client = Client(args.node, curve=client_curve(args), timeout=min(5.0, max(1.0, args.wait)))
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


def sub_parser(commands):
    """The ``sub`` sub-command."""
    sub = commands.add_parser("sub", help="subscribe and print messages", description=(
        "Subscribe to PATTERN ('*' matches one token, '>' the rest) and print one JSON line per "
        "message: subject, data, origin, seq, ts. Bytes are shown as {\"$base64\": ...}. If the node "
        "stops or restarts, it says so on stderr and keeps going when the node is back. On exit it "
        "reports on stderr how many messages it knows it missed (sequence gaps)."),
        epilog=EPILOG_ADDRESSES)
    sub.add_argument("pattern")
    node_arguments(sub)
    sub.add_argument("--count", type=positive_int, help="exit after this many messages")
    sub.add_argument("--timeout", type=float, help="exit with status 1 if no message comes for this long")
    sub.add_argument("--since", metavar="POSITION",
                     help="first recover what was published after this position (JSON, as written by "
                          "--position-file, an SSE event id or POST /pub's reply)")
    sub.add_argument("--position-file", metavar="FILE",
                     help="on exit, write how far this got (a position, JSON) to FILE; if FILE exists at start, "
                          "first recover what was published after it from the mesh's history (nodes with "
                          "--history; docs/HISTORY.md) and say on stderr whether every stream was recovered")


def cmd_sub(args):
    import logging

    from mesh import Client
    from nodes.jsontext import json_default

    def say(text):
        return lambda client: print(f"meshnode sub: {text.format(client=client)}", file=sys.stderr, flush=True)

    logging.getLogger("mesh").addHandler(logging.NullHandler())  # say() tells the user instead

    with Client(args.node, curve=client_curve(args),
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


def request_parser(commands):
    """The ``request`` sub-command."""
    request = commands.add_parser("request", help="send a request and print the reply", description=(
        "Publish DATA (JSON when it parses, else a string) as a request on SUBJECT and print the reply "
        "as one JSON line. Exits 1 at once when no subscriber in the mesh covers SUBJECT, 1 after "
        "--timeout when none answers, 1 when the responder reports a failure."), epilog=EPILOG_ADDRESSES)
    request.add_argument("subject")
    request.add_argument("data")
    request.add_argument("--timeout", type=positive_float, default=5.0, metavar="SECONDS",
                         help="how long to wait for the reply (default: 5)")
    node_arguments(request)


def cmd_request(args):
    from mesh import Client, NoResponders, RemoteError, RequestTimeout
    from nodes.jsontext import json_default

    with Client(args.node, curve=client_curve(args)) as client:
        try:
            reply = client.request(args.subject, _json_or_text(args.data), timeout=args.timeout)
        except (NoResponders, RequestTimeout, RemoteError) as exc:
            print(f"meshnode request: {exc}", file=sys.stderr)
            return 1
    print(json.dumps({"subject": args.subject, "data": reply.data, "origin": reply.origin}, default=json_default))
    return 0


def reply_parser(commands):
    """The ``reply`` sub-command."""
    reply = commands.add_parser("reply", help="answer requests on a pattern", description=(
        "Answer every request on PATTERN until interrupted: with the request's data (the default), or "
        "with what COMMAND prints when given the request's data (JSON) on stdin; its output is sent as "
        "JSON when it parses, else as a string. A command that exits non-zero sends its stderr back as "
        "the failure. Prints one JSON line per request answered."), epilog=EPILOG_ADDRESSES)
    reply.add_argument("pattern")
    reply.add_argument("--command", dest="shell_command", metavar="COMMAND",
                       help="a shell command that computes each reply")
    reply.add_argument("--count", type=positive_int, help="exit after answering this many requests")
    node_arguments(reply)


def cmd_reply(args):
    import subprocess
    import threading

    from mesh import Client
    from nodes.jsontext import json_default

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

    with Client(args.node, curve=client_curve(args)) as client:
        client.subscribe(args.pattern, answer)
        print(f"meshnode reply: answering requests on {args.pattern!r}", file=sys.stderr, flush=True)
        for _ in iter(int, 1) if args.count is None else range(args.count):
            answered.acquire()
    return 0


def _json_or_text(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


COMMANDS = {"pub": (pub_parser, cmd_pub), "sub": (sub_parser, cmd_sub), "request": (request_parser, cmd_request),
            "reply": (reply_parser, cmd_reply)}
