#!/usr/bin/env python3
"""A meshnode client written only from docs/PROTOCOL.md, with raw pyzmq + msgpack.

It deliberately imports nothing from ``mesh``, ``nodes`` or ``discovery``: it is
the proof that the wire spec is enough to interoperate.

Library use::

    info = hello("127.0.0.1:7400")                 # control request (PROTOCOL.md 7)
    pub = Publisher("127.0.0.1:7400", origin="me") # XPUB -> ingress (2, 4, 6)
    pub.wait_for_interest("orders.eu.new")
    pub.publish("orders.eu.new", {"qty": 1})
    sub = Subscriber("127.0.0.1:7400", "orders.*.new")   # SUB -> out + remote (2, 3, 5)
    msg = sub.get(timeout=5)                       # dict: subject, data, origin, seq, ts

Script use::

    raw_client.py hello HOST:PORT
    raw_client.py request HOST:PORT CMD [JSON-FIELDS]
    raw_client.py pub HOST:PORT SUBJECT DATA [--wait SECONDS]
    raw_client.py sub HOST:PORT PATTERN [--count N] [--timeout SECONDS]
"""

import argparse
import base64
import itertools
import json
import os
import sys
import time
import uuid

import msgpack
import zmq

DATA_VERSION = 1      # envelope element 0 and hello "protocol" (PROTOCOL.md 1)
CONTROL_VERSION = 1   # control "v" (PROTOCOL.md 1, 7.2)
MAX_SUBJECT_BYTES = 512
_FORBIDDEN = set(" \t\r\n\x00")


class ProtocolError(RuntimeError):
    """The node answered with ok: false (code in ``.code``) or broke the spec."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code


# -- subjects and patterns (PROTOCOL.md 3) ----------------------------------

def _tokens(text):
    if not isinstance(text, str) or not text:
        raise ValueError(f"{text!r} is not a non-empty str")
    if len(text.encode("utf-8")) > MAX_SUBJECT_BYTES:
        raise ValueError(f"{text[:40]!r}... is longer than {MAX_SUBJECT_BYTES} bytes")
    if _FORBIDDEN.intersection(text):
        raise ValueError(f"{text!r} contains space, tab, CR, LF or NUL")
    tokens = text.split(".")
    if "" in tokens:
        raise ValueError(f"{text!r} has an empty token")
    return tokens


def topic_frame(subject):
    """Validate a concrete subject and return its topic frame: UTF-8 + b'.'."""
    for token in _tokens(subject):
        if "*" in token or ">" in token:
            raise ValueError(f"subject {subject!r} contains a wildcard")
    return subject.encode("utf-8") + b"."


class Pattern:
    """A subscription pattern: validation, its ZeroMQ prefix, exact matching."""

    def __init__(self, text):
        tokens = _tokens(text)
        for i, token in enumerate(tokens):
            if token == ">" and i != len(tokens) - 1:
                raise ValueError(f"pattern {text!r}: '>' may only be the last token")
            if token not in ("*", ">") and ("*" in token or ">" in token):
                raise ValueError(f"pattern {text!r}: a wildcard must be a whole token")
        self.text = text
        self.tokens = tokens
        literal = list(itertools.takewhile(lambda t: t not in ("*", ">"), tokens))
        self.prefix = "".join(t + "." for t in literal).encode("utf-8")

    def matches(self, subject):
        if "*" not in self.tokens and ">" not in self.tokens:
            return subject == self.text
        got = subject.split(".")
        if self.tokens[-1] == ">":
            head = self.tokens[:-1]
            if len(got) <= len(head):
                return False
        else:
            head = self.tokens
            if len(got) != len(head):
                return False
        return all(w == "*" or w == g for w, g in zip(head, got))


# -- control plane (PROTOCOL.md 7) ------------------------------------------

def _address(address):
    return address if "://" in address else f"tcp://{address}"


def request(address, cmd, timeout=5.0, context=None, **fields):
    """Send one control request on a fresh DEALER; return the whole reply map.

    Does not raise for ``ok: false`` (the caller inspects ``error``); raises
    TimeoutError if no reply came.
    """
    return send_raw_request(address, msgpack.packb({"v": CONTROL_VERSION, "cmd": cmd, "id": 1, **fields}),
                            timeout=timeout, context=context)


def send_raw_request(address, body, timeout=5.0, context=None, socket_type=zmq.DEALER):
    """Send ``body`` (bytes, possibly not msgpack at all) and decode the reply."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(socket_type)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(_address(address))
        sock.send(body)
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"no reply from {address} within {timeout} s")
        frames = sock.recv_multipart()
        reply = msgpack.unpackb(frames[-1], raw=False)
        if not isinstance(reply, dict) or reply.get("v") != CONTROL_VERSION:
            raise ProtocolError("bad_reply", f"reply is not a version {CONTROL_VERSION} map: {reply!r}")
        return reply
    finally:
        sock.close()


def hello(address, timeout=5.0, context=None):
    """Ask a node who it is; raises ProtocolError unless it speaks data protocol 1."""
    reply = request(address, "hello", timeout=timeout, context=context)
    if not reply.get("ok"):
        raise ProtocolError(reply.get("error"), reply.get("message"))
    if reply.get("protocol") != DATA_VERSION:
        raise ProtocolError("version", f"node speaks data protocol {reply.get('protocol')!r}")
    return reply


# -- data plane (PROTOCOL.md 4, 5, 6) ---------------------------------------

def encode_envelope(origin, seq, data, ts=None):
    return msgpack.packb([DATA_VERSION, origin, seq, time.time() if ts is None else ts, data])


class Publisher:
    """An XPUB connected to a node's ingress; numbers messages per subject from 1."""

    def __init__(self, address, origin=None, context=None):
        self.info = hello(address, context=context)
        self.max_payload = self.info["max_payload"]
        self.origin = origin or f"raw/{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.sock = (context or zmq.Context.instance()).socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(self.info["endpoints"]["ingress"])
        self.seqs = {}
        self.interest = set()

    def _read_notices(self, timeout_ms=0):
        while self.sock.poll(timeout_ms):
            notice = self.sock.recv()
            if notice[:1] == b"\x01":
                self.interest.add(notice[1:])
            elif notice[:1] == b"\x00":
                self.interest.discard(notice[1:])
            timeout_ms = 0

    def has_interest(self, subject):
        self._read_notices()
        topic = topic_frame(subject)
        return any(topic.startswith(prefix) for prefix in self.interest)

    def wait_for_interest(self, subject, timeout=5.0):
        deadline = time.monotonic() + timeout
        topic = topic_frame(subject)
        while not any(topic.startswith(prefix) for prefix in self.interest):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._read_notices(max(1, int(remaining * 1000)))
        return True

    def publish(self, subject, data):
        """Publish one message; returns its sequence number."""
        topic = topic_frame(subject)
        seq = self.seqs.get(subject, 0) + 1
        envelope = encode_envelope(self.origin, seq, data)
        if len(envelope) > self.max_payload:
            raise ValueError(f"envelope of {len(envelope)} bytes is over max_payload {self.max_payload}")
        self.sock.send_multipart([topic, envelope])
        self.seqs[subject] = seq
        return seq

    def send_frames(self, frames):
        """Send arbitrary frames (for testing how subscribers treat bad input)."""
        self.sock.send_multipart(frames)

    def close(self):
        self.sock.close()


class Subscriber:
    """A SUB connected to a node's out and remote, filtering by pattern."""

    def __init__(self, address, pattern, context=None):
        self.info = hello(address, context=context)
        self.pattern = Pattern(pattern)
        self.received = 0
        self.malformed = 0
        self.gaps = 0
        self._last = {}
        self.sock = (context or zmq.Context.instance()).socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, self.pattern.prefix)
        self.sock.connect(self.info["endpoints"]["out"])
        self.sock.connect(self.info["endpoints"]["remote"])

    def decode(self, frames):
        """One wire message -> dict, None to skip (no match); ValueError if malformed."""
        if len(frames) != 2:
            raise ValueError(f"{len(frames)} frames")
        topic, envelope = frames
        if not topic.endswith(b"."):
            raise ValueError("topic frame does not end with '.'")
        subject = topic[:-1].decode("utf-8")
        if not self.pattern.matches(subject):
            return None
        try:
            fields = msgpack.unpackb(envelope, raw=False, strict_map_key=False)
        except Exception as exc:
            raise ValueError(f"envelope is not msgpack: {exc}") from None
        if not isinstance(fields, list) or len(fields) < 5:
            raise ValueError("envelope is not an array of 5 or more")
        version, origin, seq, ts, data = fields[:5]
        if type(version) is not int or version != DATA_VERSION:
            raise ValueError(f"envelope version {version!r}")
        if not isinstance(origin, str) or type(seq) is not int or type(ts) not in (int, float):
            raise ValueError("envelope origin/seq/ts types")
        mark = len(fields) > 5 and type(fields[5]) is int and fields[5] == 1  # PROTOCOL.md 4.2
        return {"subject": subject, "data": data, "origin": origin, "seq": seq, "ts": ts, "mark": mark}

    def get(self, timeout=5.0):
        """The next matching message as a dict; TimeoutError if none in time."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(max(1, int(remaining * 1000))):
                raise TimeoutError(f"no message on {self.pattern.text!r} within {timeout} s")
            frames = self.sock.recv_multipart()
            try:
                message = self.decode(frames)
            except ValueError:  # includes UnicodeDecodeError
                self.malformed += 1
                continue
            if message is None:
                continue
            key = (message["origin"], message["subject"])
            last = self._last.get(key)
            if message["mark"]:  # the publisher's last seq: count, never deliver
                if last is not None and message["seq"] > last:
                    self.gaps += message["seq"] - last
                    self._last[key] = message["seq"]
                continue
            if last is not None and message["seq"] > last + 1:
                self.gaps += message["seq"] - last - 1
            if last is None or message["seq"] > last:
                self._last[key] = message["seq"]
            self.received += 1
            return message

    def close(self):
        self.sock.close()


# -- script -----------------------------------------------------------------

def _json_default(value):
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode("ascii")}
    return repr(value)


def main(argv=None):
    parser = argparse.ArgumentParser(description="raw pyzmq + msgpack meshnode client (docs/PROTOCOL.md)")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("hello")
    p.add_argument("node")
    p = commands.add_parser("request")
    p.add_argument("node")
    p.add_argument("cmd")
    p.add_argument("fields", nargs="?", default="{}", help="JSON map of extra request fields")
    p = commands.add_parser("pub")
    p.add_argument("node")
    p.add_argument("subject")
    p.add_argument("data", help="JSON, or a string if it is not JSON")
    p.add_argument("--wait", type=float, default=2.0, help="wait this long for a subscriber")
    p = commands.add_parser("sub")
    p.add_argument("node")
    p.add_argument("pattern")
    p.add_argument("--count", type=int)
    p.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args(argv)

    if args.command == "hello":
        print(json.dumps(hello(args.node), default=_json_default, sort_keys=True))
    elif args.command == "request":
        reply = request(args.node, args.cmd, **json.loads(args.fields))
        print(json.dumps(reply, default=_json_default, sort_keys=True))
        return 0 if reply.get("ok") else 1
    elif args.command == "pub":
        try:
            data = json.loads(args.data)
        except ValueError:
            data = args.data
        pub = Publisher(args.node)
        interest = pub.wait_for_interest(args.subject, args.wait)
        seq = pub.publish(args.subject, data)
        print(json.dumps({"subject": args.subject, "seq": seq, "origin": pub.origin, "subscribers": interest}))
        pub.close()
    elif args.command == "sub":
        sub = Subscriber(args.node, args.pattern)
        n = 0
        while args.count is None or n < args.count:
            try:
                message = sub.get(timeout=args.timeout)
            except TimeoutError as exc:
                print(f"raw_client: {exc}", file=sys.stderr)
                return 1
            n += 1
            print(json.dumps(message, default=_json_default), flush=True)
        sub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
