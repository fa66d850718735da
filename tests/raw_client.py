#!/usr/bin/env python3
"""A meshnode client written only from docs/PROTOCOL.md, with raw pyzmq + msgpack.

It deliberately imports nothing from ``mesh``, ``nodes`` or ``discovery``: it is
the proof that the wire spec is enough to interoperate.

Library use::

    info = hello("127.0.0.1:7400")                 # control request (PROTOCOL.md 7)
    pub = Publisher("127.0.0.1:7400", origin="me") # XPUB -> ingress (2, 4, 6)
    pub.wait_for_interest("orders.eu.new")
    pub.publish("orders.eu.new", {"qty": 1})       # a batch of one (4.2)
    pub.publish_batch("orders.eu.new", [1, 2, 3])  # one batch, seq 2..4
    pub.send_all_marks()                           # each stream's last seq (4.3)
    sub = Subscriber("127.0.0.1:7400", "orders.*.new")   # SUB -> out + remote (2, 3, 5)
    msg = sub.get(timeout=5)                       # dict: subject, data, origin, seq, ts, epoch
    sub.gaps, sub.malformed                        # counted as 4.2, 4.3 and 5 say

Script use::

    raw_client.py hello HOST:PORT
    raw_client.py request HOST:PORT CMD [JSON-FIELDS]
    raw_client.py pub HOST:PORT SUBJECT DATA [DATA ...] [--wait SECONDS]   (several: one batch)
    raw_client.py sub HOST:PORT PATTERN [--count N] [--timeout SECONDS]
"""

import argparse
import base64
import collections
import itertools
import json
import os
import sys
import time
import uuid

import msgpack
import zmq

DATA_VERSION = 2      # element 0 of batch and marks bodies, hello "protocol" (PROTOCOL.md 1)
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
        if self.tokens[0] in ("*", ">") and subject.startswith("$"):
            return False  # system subjects are matched by name only (3.2)
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
    """Ask a node who it is; raises ProtocolError unless it speaks data protocol DATA_VERSION."""
    reply = request(address, "hello", timeout=timeout, context=context)
    if not reply.get("ok"):
        raise ProtocolError(reply.get("error"), reply.get("message"))
    if reply.get("protocol") != DATA_VERSION:
        raise ProtocolError("version", f"node speaks data protocol {reply.get('protocol')!r}")
    return reply


# -- data plane (PROTOCOL.md 4, 5, 6) ---------------------------------------

MARKS_END = b"\x00"  # last byte of a marks topic (4.1, 4.3); a topic frame ends with b"."


def encode_batch(origin, seq, datas, epoch=0, ts=None):
    """A batch body (4.2): ``datas`` are consecutive messages, the first numbered ``seq``."""
    return msgpack.packb([DATA_VERSION, origin, epoch, seq, time.time() if ts is None else ts, list(datas)])


def encode_marks(origin, entries):
    """A marks body (4.3): ``entries`` are ``(subject, epoch, last seq)``."""
    return msgpack.packb([DATA_VERSION, origin, [list(entry) for entry in entries]])


def marks_topic(prefix):
    """Frame 0 of a marks message: a subscription prefix (bytes or str) + NUL."""
    return (prefix.encode("utf-8") if isinstance(prefix, str) else prefix) + MARKS_END


class Publisher:
    """An XPUB connected to a node's ingress. Every subject is a stream of epoch 0
    numbered from 1; ``publish`` sends a batch of one, ``publish_batch`` one batch
    of several consecutive messages."""

    def __init__(self, address, origin=None, context=None, timeout=5.0):
        context = context or zmq.Context.instance()
        self.info = hello(address, context=context)
        self.max_payload = self.info["max_payload"]
        self.origin = origin or f"raw/{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.epoch = 0
        self.sock = context.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(self.info["endpoints"]["ingress"])
        self.seqs = {}  # subject -> last sequence number sent
        self.interest = set()  # every prefix announced, readers' and others' (6)
        self._learn_interest(context, timeout)

    def _learn_interest(self, context, timeout):
        """The sentinel (6): before the first publish, read every subscription
        the node had when this socket connected."""
        sentinel = b"\xffjoined." + self.origin.encode()
        probe = context.socket(zmq.SUB)
        probe.setsockopt(zmq.LINGER, 0)
        probe.connect(self.info["endpoints"]["out"])
        probe.setsockopt(zmq.SUBSCRIBE, sentinel)
        deadline = time.monotonic() + timeout
        try:
            while sentinel not in self.interest:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the node did not pass on its subscriptions")
                self._read_notices(max(1, int(remaining * 1000)))
        finally:
            probe.close()
        self.interest.discard(sentinel)

    def _read_notices(self, timeout_ms=0):
        while self.sock.poll(timeout_ms):
            notice = self.sock.recv()
            if notice[:1] == b"\x01":
                self.interest.add(notice[1:])
            elif notice[:1] == b"\x00":
                self.interest.discard(notice[1:])
            timeout_ms = 0

    def _covered(self, topic):
        """A reader prefix (empty or ending with '.') covers the topic (6; 3.2 for '$')."""
        return any(topic.startswith(prefix) for prefix in self.interest
                   if (prefix.endswith(b".") or (not prefix and topic[:1] != b"$")))

    def has_interest(self, subject):
        self._read_notices()
        return self._covered(topic_frame(subject))

    def wait_for_interest(self, subject, timeout=5.0):
        deadline = time.monotonic() + timeout
        topic = topic_frame(subject)
        while not self._covered(topic):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._read_notices(max(1, int(remaining * 1000)))
        return True

    def publish(self, subject, data):
        """Publish one message (a batch of one); returns its sequence number."""
        return self.publish_batch(subject, [data])[0]

    def publish_batch(self, subject, datas):
        """Publish consecutive messages as one batch; returns their sequence numbers."""
        datas = list(datas)
        if not datas:
            raise ValueError("a batch holds at least one message")
        topic = topic_frame(subject)
        first = self.seqs.get(subject, 0) + 1
        body = encode_batch(self.origin, first, datas, epoch=self.epoch)
        if len(body) > self.max_payload:
            raise ValueError(f"batch body of {len(body)} bytes is over max_payload {self.max_payload}")
        self.sock.send_multipart([topic, body])
        self.seqs[subject] = first + len(datas) - 1
        return list(range(first, first + len(datas)))

    def mark_entries(self, prefix):
        """``[subject, epoch, last seq]`` of every stream whose topic frame starts with ``prefix``."""
        return [[subject, self.epoch, seq] for subject, seq in sorted(self.seqs.items())
                if topic_frame(subject).startswith(prefix)]

    def send_marks(self, prefix, entries=None):
        """One marks message on ``prefix`` (default entries: this publisher's streams under it)."""
        prefix = prefix.encode("utf-8") if isinstance(prefix, str) else prefix
        entries = self.mark_entries(prefix) if entries is None else entries
        body = encode_marks(self.origin, entries)
        if len(body) > self.max_payload:
            raise ValueError(f"marks body of {len(body)} bytes is over max_payload {self.max_payload}")
        self.sock.send_multipart([marks_topic(prefix), body])

    def send_all_marks(self):
        """Marks for every stream, on every reader prefix announced by some subscriber
        (4.3, 6). Returns the prefixes marks were sent on."""
        self._read_notices()
        sent = []
        for prefix in sorted(p for p in self.interest if not p or p.endswith(b".")):
            entries = self.mark_entries(prefix)
            if entries:
                self.send_marks(prefix, entries)
                sent.append(prefix)
        return sent

    def send_frames(self, frames):
        """Send arbitrary frames (for testing how subscribers treat bad input)."""
        self.sock.send_multipart(frames)

    def close(self, marks=True):
        """Close; with ``marks``, first tell subscribers where every stream ended."""
        if marks and self.seqs:
            self.send_all_marks()
        self.sock.close()


class Subscriber:
    """A SUB connected to a node's out and remote, filtering by pattern, counting
    gaps per stream (origin, subject) with its epoch (4.2, 4.3) and malformed
    messages (5)."""

    def __init__(self, address, pattern, context=None):
        self.info = hello(address, context=context)
        self.pattern = Pattern(pattern)
        self.received = 0   # messages handed out by get()
        self.malformed = 0  # wire messages dropped as malformed (5)
        self.gaps = 0       # messages known lost: sequence jumps, new epochs, marks (4.2, 4.3)
        self.marks = 0      # well-formed marks messages read
        self.streams = {}   # (origin, subject) -> [epoch, last seq]
        self._queue = collections.deque()
        self.sock = (context or zmq.Context.instance()).socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, self.pattern.prefix)
        self.sock.connect(self.info["endpoints"]["out"])
        self.sock.connect(self.info["endpoints"]["remote"])

    def decode(self, frames):
        """One wire message -> None (skip: no match), ``("batch", [message dicts])``
        or ``("marks", origin, [(subject, epoch, seq), ...])``; ValueError if malformed."""
        if len(frames) != 2:
            raise ValueError(f"{len(frames)} frames")
        topic, body = frames
        if topic.endswith(b"."):
            subject = topic[:-1].decode("utf-8")  # UnicodeDecodeError is a ValueError
            if not self.pattern.matches(subject):
                return None
            fields = _unpack(body)
            if len(fields) < 6:
                raise ValueError("a batch is an array of 6 or more")
            _, origin, epoch, seq, ts, payloads = fields[:6]
            if type(origin) is not str or type(epoch) is not int or type(seq) is not int:
                raise ValueError("batch origin/epoch/seq types")
            if type(ts) not in (int, float) or type(payloads) is not list:
                raise ValueError("batch ts/payloads types")
            if epoch < 0 or seq < 1 or not payloads:
                raise ValueError("batch epoch < 0, seq < 1 or no payloads")
            return "batch", [{"subject": subject, "data": data, "origin": origin, "seq": seq + i, "ts": ts,
                              "epoch": epoch} for i, data in enumerate(payloads)]
        if topic.endswith(MARKS_END):
            fields = _unpack(body)
            if len(fields) < 3 or type(fields[1]) is not str or type(fields[2]) is not list:
                raise ValueError("marks are [2, origin, entries]")
            entries = []
            for entry in fields[2]:
                if (type(entry) is not list or len(entry) < 3 or type(entry[0]) is not str
                        or type(entry[1]) is not int or type(entry[2]) is not int
                        or entry[1] < 0 or entry[2] < 1):
                    raise ValueError("a mark entry is [subject, epoch, seq]")
                entries.append((entry[0], entry[1], entry[2]))
            return "marks", fields[1], entries
        raise ValueError("frame 0 ends with neither '.' nor NUL")

    def _handle(self, frames):
        try:
            decoded = self.decode(frames)
        except ValueError:  # includes UnicodeDecodeError
            self.malformed += 1
            return
        if decoded is None:
            return
        if decoded[0] == "batch":
            messages = decoded[1]
            first = messages[0]
            self._stream_batch((first["origin"], first["subject"]), first["epoch"], first["seq"],
                               messages[-1]["seq"])
            self._queue.extend(messages)
        else:
            _, origin, entries = decoded
            self.marks += 1
            for subject, epoch, seq in entries:
                if self.pattern.matches(subject):
                    self._stream_mark((origin, subject), epoch, seq)

    def _stream_batch(self, key, epoch, seq, end):
        known = self.streams.get(key)
        if known is None:  # a stream never seen: nothing says what came before
            self.streams[key] = [epoch, end]
        elif known[0] != epoch:  # the publisher began the stream again: its first seq - 1 are lost
            self.gaps += seq - 1
            known[:] = [epoch, end]
        else:
            if seq > known[1] + 1:
                self.gaps += seq - known[1] - 1
            if end > known[1]:  # a repeated or older seq is delivered but does not lower last
                known[1] = end

    def _stream_mark(self, key, epoch, seq):
        known = self.streams.get(key)
        if known is None:
            return  # a stream never seen: ignored
        if known[0] != epoch:  # none of that epoch arrived
            self.gaps += seq
            known[:] = [epoch, seq]
        elif seq > known[1]:
            self.gaps += seq - known[1]
            known[1] = seq

    def process(self, timeout=0.0):
        """Read and handle what arrives within ``timeout`` seconds (messages are
        queued for ``get``, marks applied); returns the number of wire messages read."""
        deadline = time.monotonic() + timeout
        count = 0
        while True:
            remaining = deadline - time.monotonic()
            if not self.sock.poll(max(0, int(remaining * 1000))):
                return count
            self._handle(self.sock.recv_multipart())
            count += 1

    def get(self, timeout=5.0):
        """The next matching message as a dict; TimeoutError if none in time."""
        deadline = time.monotonic() + timeout
        while not self._queue:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(max(1, int(remaining * 1000))):
                raise TimeoutError(f"no message on {self.pattern.text!r} within {timeout} s")
            self._handle(self.sock.recv_multipart())
        self.received += 1
        return self._queue.popleft()

    def close(self):
        self.sock.close()


def _unpack(body):
    """A data body: a msgpack array whose element 0 is the integer DATA_VERSION."""
    try:
        fields = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ValueError(f"body is not msgpack: {exc}") from None
    if type(fields) is not list or not fields:
        raise ValueError("body is not a non-empty array")
    if type(fields[0]) is not int or fields[0] != DATA_VERSION:
        raise ValueError(f"data version {fields[0]!r}")
    return fields


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
    p.add_argument("data", nargs="+", help="JSON, or a string if it is not JSON; several go out as one batch")
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
        datas = []
        for text in args.data:
            try:
                datas.append(json.loads(text))
            except ValueError:
                datas.append(text)
        pub = Publisher(args.node)
        interest = pub.wait_for_interest(args.subject, args.wait)
        seqs = pub.publish_batch(args.subject, datas)
        print(json.dumps({"subject": args.subject, "seq": seqs[0], "seqs": seqs, "origin": pub.origin,
                          "subscribers": interest}))
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
