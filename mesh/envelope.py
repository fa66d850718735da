"""The data-plane wire format, version 2 (docs/PROTOCOL.md section 4): batches and marks.

A data message is two ZeroMQ frames. A **batch** carries consecutive messages
of one publisher on one subject::

    [subject + b".", msgpack [2, origin, epoch, seq, ts, [data, data, ...]]]

the i-th payload having sequence number ``seq + i``. A **marks** message
carries the last sequence numbers a publisher sent on many subjects, on the
topic of a subscription prefix followed by one NUL byte (a byte no subject
contains, so a mark never passes for a message)::

    [prefix + b"\\x00", msgpack [2, origin, [[subject, epoch, seq], ...]]]

This module owns the encoding, the decoding and the size rule: a batch body,
header included, never exceeds the node's ``max_payload``.
"""

import msgpack

PROTOCOL_VERSION = 2
DEFAULT_MAX_PAYLOAD = 1024 * 1024
MARKS_TOPIC_END = b"\x00"
HOOKS_HEADER = "hooks"  # the webhooks whose deliveries led to a message (PROTOCOL.md 4.2)
CARRIED_HEADERS = (HOOKS_HEADER,)  # headers of a publish that queue-group and job deliveries carry on
RAW_BYTES_MIN = 8 * 1024  # bytes payloads from this size are framed by hand: one copy, not the Packer's two
# The largest batch header: fixarray, version, origin (str 32 header + bytes),
# epoch, seq (uint64 each), ts (float64) and an array32 header.
_HEADER_SLACK = 1 + 1 + 5 + 9 + 9 + 9 + 5


class MalformedMessage(ValueError):
    """A data-plane message that does not follow docs/PROTOCOL.md."""


class PayloadTooLarge(ValueError):
    """A message whose encoded batch would exceed the node's payload limit."""


class Message:
    """One delivered message. Messages of one batch share ``ts`` (the time
    its first message was published). ``epoch`` and ``seq`` place it in its
    stream (``origin``, ``subject``): PROTOCOL.md 4.2. ``replayed`` is true
    for a message recovered from history (docs/HISTORY.md)."""

    __slots__ = ("subject", "data", "origin", "seq", "ts", "epoch", "replayed", "headers")

    def __init__(self, subject, data, origin, seq, ts, epoch=0, replayed=False, headers=None):
        self.subject = subject
        self.data = data
        self.origin = origin
        self.seq = seq
        self.ts = ts
        self.epoch = epoch
        self.replayed = replayed
        self.headers = headers  # a dict for a request or a reply (PROTOCOL.md 4.2), else None

    @staticmethod
    def numbered(subject, payloads, origin, seq, ts, epoch):
        """The messages of one batch: ``payloads`` numbered from ``seq``, as
        ``Message(subject, data, origin, seq + i, ts, epoch)`` for each but
        without an ``__init__`` call per message (the receive path's hot
        loop: this halves the cost of making them). They are of the
        subclass :class:`_Numbered`, which only differs in being made
        without one."""
        new = _Numbered
        messages = []
        append = messages.append
        for data in payloads:
            message = new()
            message.subject = subject
            message.data = data
            message.origin = origin
            message.seq = seq
            message.ts = ts
            message.epoch = epoch
            message.replayed = False
            message.headers = None
            append(message)
            seq += 1
        return messages

    @property
    def reply(self):
        """The subject a request's answer goes to (None for a plain message)."""
        return self.headers.get("reply") if self.headers else None

    @property
    def job(self):
        """A job's id, the same for all its attempts (None for a plain message; docs/QUEUES.md)."""
        return self.headers.get("j") if self.headers else None

    @property
    def attempt(self):
        """A job's attempt number, from 1 (None for a plain message)."""
        return self.headers.get("a") if self.headers else None

    def to_dict(self):
        return {"subject": self.subject, "data": self.data, "origin": self.origin,
                "seq": self.seq, "ts": self.ts, "epoch": self.epoch}

    def __repr__(self):
        return (f"Message(subject={self.subject!r}, data={self.data!r}, "
                f"origin={self.origin!r}, seq={self.seq})")


class _Numbered(Message):
    """A :class:`Message` made by ``Message.numbered``: empty, filled in by it
    (a call of the class with no ``__init__`` of its own costs less than
    ``object.__new__(Message)``)."""

    __slots__ = ()
    __init__ = object.__init__


class BatchEncoder:
    """Packs payloads and batch bodies for one publisher; not thread-safe
    (it reuses a Packer)."""

    def __init__(self, origin, max_payload=DEFAULT_MAX_PAYLOAD):
        self.origin = origin
        self._packer = msgpack.Packer()
        # The Packer's own pack, for the publisher's hot path: no size check,
        # no framing of large bytes, msgpack's errors as they come (``pack``
        # is the checked one; both share the Packer: the same thread only).
        self.pack_unchecked = self._packer.pack
        self._head = self._packer.pack_array_header(6) + self._packer.pack(PROTOCOL_VERSION) \
            + self._packer.pack(origin)
        self._marks_head = self._packer.pack_array_header(3) + self._packer.pack(PROTOCOL_VERSION) \
            + self._packer.pack(origin)
        self.max_payload = max_payload

    @property
    def max_payload(self):
        return self._max_payload

    @max_payload.setter
    def max_payload(self, limit):
        self._max_payload = limit
        self.payload_room = limit - len(self._head) - _HEADER_SLACK  # the most one payload may take

    def pack(self, data):
        """One payload's msgpack bytes; TypeError if msgpack cannot carry it,
        PayloadTooLarge if even a batch of one would pass the limit. Large
        ``bytes`` get their msgpack bin header in front, copied once (the
        Packer copies into its buffer, grows it, and copies out again)."""
        if type(data) is bytes and len(data) >= RAW_BYTES_MIN:
            size = len(data)
            packed = (b"\xc5" + size.to_bytes(2, "big") if size < 0x10000 else b"\xc6" + size.to_bytes(4, "big")) + data
        else:
            try:
                packed = self._packer.pack(data)
            except (TypeError, ValueError, OverflowError) as exc:
                self._packer.reset()
                raise TypeError(f"data cannot be encoded with msgpack: {exc}") from None
        if len(packed) > self.payload_room:
            raise PayloadTooLarge(f"encoded message is {len(packed)} bytes; with its batch header "
                                  f"that is over the limit of {self._max_payload} bytes")
        return packed

    def batch(self, epoch, seq, ts, parts, headers=None):
        """The body of a batch whose payloads (packed) are ``parts[1:]``;
        ``parts[0]`` is a slot this method fills with the header. With
        ``headers`` (one payload only) the body has the seventh element."""
        pack = self._packer.pack
        head = self._head if headers is None else self._packer.pack_array_header(7) + self._head[1:]
        parts[0] = head + pack(epoch) + pack(seq) + pack(ts) + self._packer.pack_array_header(len(parts) - 1)
        return b"".join(parts) + (b"" if headers is None else pack(headers))

    def marks(self, entries):
        """The body of a marks message: ``entries`` are ``[subject, epoch, seq]``."""
        return self._marks_head + self._packer.pack(entries)


def _unpack(body):
    try:
        fields = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise MalformedMessage(f"body is not msgpack: {exc}") from None
    if type(fields) is not list or not fields:
        raise MalformedMessage("body is not a non-empty array")
    version = fields[0]
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise MalformedMessage(f"version {version!r} is not {PROTOCOL_VERSION}")
    return fields


def decode_batch(body, with_headers=False):
    """``(origin, epoch, seq, ts, payloads)`` of a batch body, or MalformedMessage;
    ``with_headers``: a sixth element, the headers map or None."""
    fields = _unpack(body)
    if len(fields) < 6:
        raise MalformedMessage("a batch is an array of at least 6 elements")
    _, origin, epoch, seq, ts, payloads = fields[:6]
    if (type(origin) is not str or type(epoch) is not int or type(seq) is not int
            or type(ts) not in (int, float) or type(payloads) is not list):
        raise MalformedMessage("batch origin/epoch/seq/ts/payloads have the wrong types")
    if not payloads or seq < 1 or epoch < 0:
        raise MalformedMessage("a batch holds at least one payload, seq >= 1, epoch >= 0")
    if not with_headers:
        return origin, epoch, seq, ts, payloads
    headers = fields[6] if len(fields) > 6 and type(fields[6]) is dict else None
    if headers is not None and (len(payloads) != 1 or not all(type(key) is str for key in headers)):
        raise MalformedMessage("a batch with headers holds one payload, and header names are str")
    return origin, epoch, seq, ts, payloads, headers


def decode_marks(body):
    """``(origin, [(subject, epoch, seq), ...])`` of a marks body, or MalformedMessage."""
    fields = _unpack(body)
    if len(fields) < 3 or type(fields[1]) is not str or type(fields[2]) is not list:
        raise MalformedMessage("marks are an array [2, origin, entries]")
    entries = []
    for entry in fields[2]:
        if (type(entry) is not list or len(entry) < 3 or type(entry[0]) is not str
                or type(entry[1]) is not int or type(entry[2]) is not int or entry[1] < 0 or entry[2] < 1):
            raise MalformedMessage("a mark entry is [subject, epoch >= 0, seq >= 1]")
        entries.append((entry[0], entry[1], entry[2]))
    return fields[1], entries
