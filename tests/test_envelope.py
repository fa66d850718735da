import math

import msgpack
import pytest
from hypothesis import given, strategies as st

from mesh.envelope import PROTOCOL_VERSION, EnvelopeEncoder, MalformedMessage, PayloadTooLarge, decode

payloads = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text() | st.binary()
    | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10)


@given(payloads, st.integers(1, 2**63))
def test_round_trip(data, seq):
    raw = EnvelopeEncoder("node/pub-1").encode(seq, data)
    message = decode("a.b", raw)
    assert (message.subject, message.origin, message.seq) == ("a.b", "node/pub-1", seq)
    assert message.data == data
    assert math.isfinite(message.ts)


def test_envelope_is_a_small_array():
    raw = EnvelopeEncoder("o").encode(7, b"x" * 100)
    fields = msgpack.unpackb(raw)
    assert fields[:3] == [PROTOCOL_VERSION, "o", 7] and fields[4] == b"x" * 100
    assert len(raw) < 120


def test_payload_limit():
    encoder = EnvelopeEncoder("o", max_payload=1000)
    encoder.encode(1, b"x" * 900)
    with pytest.raises(PayloadTooLarge, match="over the limit of 1000 bytes"):
        encoder.encode(2, b"x" * 1000)


def test_unencodable_data_is_a_type_error_and_the_encoder_still_works():
    encoder = EnvelopeEncoder("o")
    with pytest.raises(TypeError, match="msgpack"):
        encoder.encode(1, object())
    assert decode("s", encoder.encode(2, "fine")).data == "fine"


@pytest.mark.parametrize("raw", [
    b"", b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([1, "o", 1]),
    msgpack.packb([99, "o", 1, 0.0, b""]), msgpack.packb([1, 5, 1, 0.0, b""]),
    msgpack.packb([1, "o", "1", 0.0, b""]),
])
def test_malformed_envelopes_are_rejected(raw):
    with pytest.raises(MalformedMessage):
        decode("s", raw)


@given(st.binary(max_size=64))
def test_random_bytes_never_raise_anything_but_malformed(raw):
    try:
        decode("s", raw)
    except MalformedMessage:
        pass


def test_sequence_marks_decode_as_marks_and_other_kinds_as_messages():
    encoder = EnvelopeEncoder("o")
    mark = decode("s", encoder.encode_mark(41))
    assert mark.is_mark and mark.seq == 41 and mark.data is None
    assert not decode("s", encoder.encode(1, "x")).is_mark
    assert not decode("s", msgpack.packb([1, "o", 1, 0.0, "x", 0])).is_mark
    assert not decode("s", msgpack.packb([1, "o", 1, 0.0, "x", True])).is_mark  # a bool is not the kind 1
