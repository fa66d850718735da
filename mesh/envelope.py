"""The data-plane message: a two-frame ZeroMQ message ``[topic, envelope]``.

The envelope is a msgpack array ``[version, origin, seq, ts, data]`` (see
docs/PROTOCOL.md), or ``[version, origin, seq, ts, nil, 1]`` for a *sequence
mark*: the publisher's last sequence number on the subject, sent once a second
for the subjects it published on (and when it closes), so that loss at the end
of a burst is counted too. This module owns
encoding, decoding and the size limit.
"""

import time

import msgpack

PROTOCOL_VERSION = 1
DEFAULT_MAX_PAYLOAD = 1024 * 1024
KIND_MARK = 1  # sixth envelope element: a sequence mark, not a message


class MalformedMessage(ValueError):
    """A data-plane message that does not follow docs/PROTOCOL.md."""


class PayloadTooLarge(ValueError):
    """A message whose encoded envelope exceeds the node's payload limit."""


class Message:
    """One delivered message."""

    __slots__ = ("subject", "data", "origin", "seq", "ts", "is_mark")

    def __init__(self, subject, data, origin, seq, ts, is_mark=False):
        self.subject = subject
        self.data = data
        self.origin = origin
        self.seq = seq
        self.ts = ts
        self.is_mark = is_mark  # a sequence mark: counted, never delivered

    def to_dict(self):
        return {"subject": self.subject, "data": self.data, "origin": self.origin,
                "seq": self.seq, "ts": self.ts}

    def __repr__(self):
        return (f"Message(subject={self.subject!r}, data={self.data!r}, "
                f"origin={self.origin!r}, seq={self.seq})")


class EnvelopeEncoder:
    """Packs envelopes for one publisher; not thread-safe (reuses a Packer)."""

    def __init__(self, origin, max_payload=DEFAULT_MAX_PAYLOAD):
        self.origin = origin
        self.max_payload = max_payload
        self._packer = msgpack.Packer()

    def encode(self, seq, data):
        try:
            raw = self._packer.pack((PROTOCOL_VERSION, self.origin, seq, time.time(), data))
        except (TypeError, ValueError, OverflowError) as exc:
            self._packer.reset()
            raise TypeError(f"data cannot be encoded with msgpack: {exc}") from None
        if len(raw) > self.max_payload:
            raise PayloadTooLarge(
                f"encoded message is {len(raw)} bytes, over the limit of {self.max_payload} bytes")
        return raw

    def encode_mark(self, seq):
        """A sequence mark: ``seq`` is the last number published on the subject."""
        return self._packer.pack((PROTOCOL_VERSION, self.origin, seq, time.time(), None, KIND_MARK))


def decode(subject, raw):
    """Decode an envelope into a Message; raise MalformedMessage if it is not one."""
    try:
        fields = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise MalformedMessage(f"envelope is not msgpack: {exc}") from None
    if not isinstance(fields, list) or len(fields) < 5:
        raise MalformedMessage("envelope is not an array of at least 5 fields")
    version, origin, seq, ts, data = fields[:5]
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise MalformedMessage(f"envelope version {version!r} is not {PROTOCOL_VERSION}")
    if type(origin) is not str or type(seq) is not int or type(ts) not in (int, float):
        raise MalformedMessage("envelope origin/seq/ts have the wrong types")
    if len(fields) > 5 and fields[5] == KIND_MARK and type(fields[5]) is int:
        return Message(subject, None, origin, seq, ts, is_mark=True)
    return Message(subject, data, origin, seq, ts)
