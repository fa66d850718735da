"""Unit tests of mesh/envelope.py against docs/PROTOCOL.md 4 and 5 (data protocol 2)."""

import math

import msgpack
import pytest
from hypothesis import example, given, settings, strategies as st

from mesh.envelope import (DEFAULT_MAX_PAYLOAD, MARKS_TOPIC_END, PROTOCOL_VERSION, RAW_BYTES_MIN, BatchEncoder,
                           MalformedMessage, Message, PayloadTooLarge, decode_batch, decode_marks)
from mesh.subjects import topic_frame, validate_subject

payloads = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text() | st.binary()
    | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10)
UINT64 = st.integers(0, 2**64 - 1)


def batch_body(encoder, epoch, seq, ts, datas):
    """What mesh/publisher.py does: pack each payload, then frame them with the header."""
    return encoder.batch(epoch, seq, ts, [None] + [encoder.pack(data) for data in datas])


def test_versions_and_constants():
    assert PROTOCOL_VERSION == 2                        # 1: data protocol 2
    assert MARKS_TOPIC_END == b"\x00"                   # 4.1: a marks topic ends with NUL
    assert DEFAULT_MAX_PAYLOAD == 1_048_576             # 4.5: hello's max_payload default


# -- 4.4, byte for byte ---------------------------------------------------------

TS = 1700000000.5
ONE = bytes.fromhex("96 02 a5 70 75 62 2d 31 00 01 cb 41 d9 54 fc 40 20 00 00 91 a2 68 69")
TWO = bytes.fromhex("96 02 a5 70 75 62 2d 31 00 02 cb 41 d9 54 fc 40 20 00 00"
                    "92 c4 02 00 01 81 a1 74 cb 40 35 80 00 00 00 00 00")
MARKS = bytes.fromhex("93 02 a5 70 75 62 2d 31 91 93 ad 6f 72 64 65 72 73 2e 65 75 2e 6e 65 77 00 03")


def test_byte_level_example_one_message():
    encoder = BatchEncoder("pub-1")
    assert validate_subject("orders.eu.new") == topic_frame("orders.eu.new") == bytes.fromhex(
        "6f 72 64 65 72 73 2e 65 75 2e 6e 65 77 2e") == b"orders.eu.new."
    assert batch_body(encoder, 0, 1, TS, ["hi"]) == ONE
    assert decode_batch(ONE) == ("pub-1", 0, 1, TS, ["hi"])


def test_byte_level_example_batch_of_two():
    encoder = BatchEncoder("pub-1")
    assert batch_body(encoder, 0, 2, TS, [b"\x00\x01", {"t": 21.5}]) == TWO
    origin, epoch, seq, ts, datas = decode_batch(TWO)
    assert (origin, epoch, seq, ts) == ("pub-1", 0, 2, TS)
    assert datas == [b"\x00\x01", {"t": 21.5}] and type(datas[0]) is bytes


def test_byte_level_example_marks():
    encoder = BatchEncoder("pub-1")
    assert b"orders." + MARKS_TOPIC_END == bytes.fromhex("6f 72 64 65 72 73 2e 00")
    assert encoder.marks([["orders.eu.new", 0, 3]]) == MARKS
    assert encoder.marks([("orders.eu.new", 0, 3)]) == MARKS  # tuples pack as arrays too
    assert decode_marks(MARKS) == ("pub-1", [("orders.eu.new", 0, 3)])


def test_the_python_examples_of_the_spec_decode():
    body = msgpack.packb([2, "pub-1", 0, 1, TS, ["hi"]])  # 4.4 "In Python"
    assert body == ONE
    body = msgpack.packb([2, "me-1", 0, 1, TS, [{"qty": 2}]])  # section 8
    assert decode_batch(body) == ("me-1", 0, 1, TS, [{"qty": 2}])


# -- encoding -------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(payloads, min_size=1, max_size=8), UINT64, st.integers(1, 2**64 - 1),
       st.floats(allow_nan=False, allow_infinity=False) | st.integers(0, 2**40))
def test_batches_round_trip(datas, epoch, seq, ts):
    encoder = BatchEncoder("node/pub-1")
    body = batch_body(encoder, epoch, seq, ts, datas)
    origin, got_epoch, got_seq, got_ts, got = decode_batch(body)
    assert (origin, got_epoch, got_seq, got_ts) == ("node/pub-1", epoch, seq, ts)
    assert type(got_ts) is type(ts)
    assert msgpack.packb(got) == msgpack.packb(datas)  # same values, str vs bin kept
    fields = msgpack.unpackb(body, strict_map_key=False)
    assert len(fields) == 6 and fields[:5] == [2, "node/pub-1", epoch, seq, ts]


def test_batch_of_many_uses_longer_array_headers():
    encoder = BatchEncoder("o")
    for count in (15, 16, 65535, 65536):  # fixarray, array16, array16, array32
        origin, epoch, seq, ts, datas = decode_batch(batch_body(encoder, 3, 7, 1.0, [None] * count))
        assert (origin, epoch, seq, len(datas)) == ("o", 3, 7, count)


def test_str_bin_and_non_string_map_keys_arrive_as_sent():
    datas = ["text", b"bytes", "", b"", {1: "int key", b"k": [None, True]}, 2**64 - 1, -2**63, 3.25]
    assert decode_batch(batch_body(BatchEncoder("o"), 0, 1, 0.0, datas))[4] == datas
    got = decode_batch(batch_body(BatchEncoder("o"), 0, 1, 0.0, ["x", b"x"]))[4]
    assert [type(d) for d in got] == [str, bytes]


def test_the_encoder_reuses_its_packer_safely():
    encoder = BatchEncoder("o")
    first = batch_body(encoder, 0, 1, 1.0, ["a", "b"])
    second = batch_body(encoder, 0, 3, 2.0, ["c"])
    assert decode_batch(first) == ("o", 0, 1, 1.0, ["a", "b"])
    assert decode_batch(second) == ("o", 0, 3, 2.0, ["c"])
    assert decode_marks(encoder.marks([])) == ("o", [])


def test_payload_limit():
    limit = 1000
    encoder = BatchEncoder("o", max_payload=limit)
    encoder.pack(b"x" * 900)
    with pytest.raises(PayloadTooLarge, match="over the limit of 1000 bytes"):
        encoder.pack(b"x" * limit)
    assert issubclass(PayloadTooLarge, ValueError)


@settings(max_examples=200, deadline=None)
@given(st.integers(64, 5000), st.integers(0, 6000), st.text(min_size=1, max_size=40))
def test_an_accepted_payload_always_fits_a_batch_of_one_and_a_refused_one_never_does(limit, size, origin):
    """4.5: no body over max_payload is ever produced, whatever the epoch, seq and ts."""
    encoder = BatchEncoder(origin, max_payload=limit)
    data = b"x" * size
    smallest = len(batch_body(BatchEncoder(origin, max_payload=10**9), 0, 1, 0, [data]))
    try:
        packed = encoder.pack(data)
    except PayloadTooLarge:
        # Refused: fine if it would not fit; the encoder may keep some slack for the largest
        # header (epoch, seq and ts of 9 bytes each), but not refuse what is far below the limit.
        assert smallest + 64 > limit
        return
    assert smallest <= limit  # a payload that does not fit a batch of one is refused
    biggest = encoder.batch(2**64 - 1, 2**64 - 1, 1.5, [None, packed])
    assert len(biggest) <= limit
    assert len(packed) <= encoder.payload_room


@pytest.mark.parametrize("size", [RAW_BYTES_MIN - 1, RAW_BYTES_MIN, 0xFFFF, 0x10000, 300_000])
def test_large_bytes_framed_by_hand_are_what_msgpack_makes_and_keep_the_limit(size):
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    encoder = BatchEncoder("o")
    assert encoder.pack(data) == msgpack.packb(data)
    assert decode_batch(batch_body(encoder, 0, 1, 0.0, [data, b"small", data]))[4] == [data, b"small", data]
    tight = BatchEncoder("o", max_payload=size)
    with pytest.raises(PayloadTooLarge):
        tight.pack(data)


def test_raising_the_limit_raises_the_room():
    encoder = BatchEncoder("o", max_payload=1000)
    with pytest.raises(PayloadTooLarge):
        encoder.pack(b"x" * 2000)
    encoder.max_payload = 4000
    assert encoder.max_payload == 4000 and len(batch_body(encoder, 0, 1, 0.0, [b"x" * 2000])) <= 4000


def test_unencodable_data_is_a_type_error_and_the_encoder_still_works():
    encoder = BatchEncoder("o")
    with pytest.raises(TypeError, match="msgpack"):
        encoder.pack(object())
    with pytest.raises(TypeError):
        encoder.pack(2**64)  # too big an int for msgpack
    assert decode_batch(batch_body(encoder, 0, 2, 0.0, ["fine"]))[4] == ["fine"]


def test_the_messages_of_a_batch_are_the_messages_one_by_one():
    many = Message.numbered("a.b", [b"x", {"k": 1}], "o", 7, 1.5, 3)
    one_by_one = [Message("a.b", b"x", "o", 7, 1.5, 3), Message("a.b", {"k": 1}, "o", 8, 1.5, 3)]
    fields = Message.__slots__
    assert [[getattr(m, f) for f in fields] for m in many] == [[getattr(m, f) for f in fields] for m in one_by_one]
    assert all(isinstance(m, Message) for m in many) and "seq=8" in repr(many[1])


def test_message_objects():
    message = Message("a.b", {"k": 1}, "o", 5, 1.5)
    assert message.to_dict() == {"subject": "a.b", "data": {"k": 1}, "origin": "o", "seq": 5, "ts": 1.5, "epoch": 0}
    assert "a.b" in repr(message) and "seq=5" in repr(message)


# -- decoding: 5, step 2 (batches) -------------------------------------------------

def batch(*fields):
    return msgpack.packb(list(fields))


@pytest.mark.parametrize("raw", [
    b"", b"\xc1", b"\x96", msgpack.packb({"a": 1}), msgpack.packb([]), msgpack.packb("x"), msgpack.packb(None),
    batch(2, "o", 0, 1, 0.0),                                # 5 elements
    batch(1, "o", 1, 0.0, "v1 envelope"),                    # data protocol 1 (section 1)
    batch(1, "o", 1, 0.0, None, 1),                          # a v1 sequence mark
    batch(1, "o", 0, 1, 0.0, ["v1 tag on a v2 body"]),
    batch(3, "o", 0, 1, 0.0, ["x"]), batch(0, "o", 0, 1, 0.0, ["x"]),
    batch(True, "o", 0, 1, 0.0, ["x"]), batch(2.0, "o", 0, 1, 0.0, ["x"]), batch("2", "o", 0, 1, 0.0, ["x"]),
    batch(2, 5, 0, 1, 0.0, ["x"]), batch(2, b"o", 0, 1, 0.0, ["x"]), batch(2, None, 0, 1, 0.0, ["x"]),
    batch(2, "o", -1, 1, 0.0, ["x"]), batch(2, "o", True, 1, 0.0, ["x"]), batch(2, "o", False, 1, 0.0, ["x"]),
    batch(2, "o", 0.0, 1, 0.0, ["x"]), batch(2, "o", "0", 1, 0.0, ["x"]), batch(2, "o", None, 1, 0.0, ["x"]),
    batch(2, "o", 0, 0, 0.0, ["x"]), batch(2, "o", 0, -1, 0.0, ["x"]), batch(2, "o", 0, True, 0.0, ["x"]),
    batch(2, "o", 0, 1.0, 0.0, ["x"]), batch(2, "o", 0, "1", 0.0, ["x"]),
    batch(2, "o", 0, 1, "now", ["x"]), batch(2, "o", 0, 1, None, ["x"]), batch(2, "o", 0, 1, True, ["x"]),
    batch(2, "o", 0, 1, 0.0, []), batch(2, "o", 0, 1, 0.0, "x"), batch(2, "o", 0, 1, 0.0, {"0": "x"}),
    batch(2, "o", 0, 1, 0.0, None),
    batch(2, "o", 0, 1, 0.0, ["x"]) + b"\x00",               # trailing bytes
    batch(2, "o", 0, 1, 0.0, ["x"])[:-1],                    # truncated
    b"\x96\x02\xa1o\x00\x01\xcb" + b"\x00" * 8 + b"\x91\xa2\xff\xfe",  # a str that is not UTF-8
], ids=lambda raw: raw[:24].hex())
def test_malformed_batches_are_rejected(raw):
    with pytest.raises(MalformedMessage):
        decode_batch(raw)


@pytest.mark.parametrize("raw, want", [
    (batch(2, "o", 0, 1, 5, ["int ts"]), ("o", 0, 1, 5, ["int ts"])),
    (batch(2, "o", 0, 1, 0.0, ["x"], "extra", {"future": 1}), ("o", 0, 1, 0.0, ["x"])),  # 1: extras ignored
    (batch(2, "", 2**64 - 1, 2**64 - 1, -1.5, [None]), ("", 2**64 - 1, 2**64 - 1, -1.5, [None])),
    (batch(2, "o", 7, 1, 0.0, [None, [], {}]), ("o", 7, 1, 0.0, [None, [], {}])),
])
def test_well_formed_batches_decode(raw, want):
    assert decode_batch(raw) == want


# -- decoding: 5, step 3 (marks) -----------------------------------------------------

@pytest.mark.parametrize("raw", [
    b"", b"\xc1", msgpack.packb({"v": 2}), msgpack.packb([]), msgpack.packb([2, "o"]),
    msgpack.packb([1, "o", [["a", 0, 1]]]), msgpack.packb([True, "o", []]), msgpack.packb([2.0, "o", []]),
    msgpack.packb([2, 5, []]), msgpack.packb([2, None, []]), msgpack.packb([2, "o", "entries"]),
    msgpack.packb([2, "o", None]), msgpack.packb([2, "o", {"a": [0, 1]}]),
    msgpack.packb([2, "o", [["a", 0]]]), msgpack.packb([2, "o", ["a"]]), msgpack.packb([2, "o", [None]]),
    msgpack.packb([2, "o", [[1, 0, 1]]]), msgpack.packb([2, "o", [[b"a", 0, 1]]]),
    msgpack.packb([2, "o", [["a", "0", 1]]]), msgpack.packb([2, "o", [["a", 0, 1.0]]]),
    msgpack.packb([2, "o", [["a", True, 1]]]), msgpack.packb([2, "o", [["a", 0, False]]]),
    msgpack.packb([2, "o", [["a", 0, 1], ["b", 0]]]),         # one bad entry spoils the message
    msgpack.packb([2, "o", [["a", -1, 1]]]),                  # epoch below 0
    msgpack.packb([2, "o", [["a", 0, 0]]]),                   # seq below 1: marks never lower a count
    msgpack.packb([2, "o", [["a", 0, -5]]]),
    msgpack.packb([2, "o", []]) + b"\xc0",
    msgpack.packb([2, "o", 0, 1, 0.0, ["a batch body"]]),     # entries (element 2) is not an array
], ids=lambda raw: raw[:24].hex())
def test_malformed_marks_are_rejected(raw):
    with pytest.raises(MalformedMessage):
        decode_marks(raw)


@pytest.mark.parametrize("raw, want", [
    (msgpack.packb([2, "o", []]), ("o", [])),
    (msgpack.packb([2, "o", [["a.b", 3, 9, "extra"]], "extra"]), ("o", [("a.b", 3, 9)])),  # 1: extras ignored
    (msgpack.packb([2, "o", [["a", 0, 1], ["b", 2**64 - 1, 2**63]]]), ("o", [("a", 0, 1), ("b", 2**64 - 1, 2**63)])),
    (msgpack.packb([2, "o", [["", 0, 1], ["x..y", 0, 1]]]), ("o", [("", 0, 1), ("x..y", 0, 1)])),
])
def test_well_formed_marks_decode(raw, want):
    """5 step 3 asks only for the types: any str subject and any int epoch and seq."""
    assert decode_marks(raw) == want


# -- random input ------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.lists(payloads, max_size=7).map(msgpack.packb))
@example(b"\x91" * 5000 + b"\x00")
@example(b"\xdd\xff\xff\xff\xff")
@example(b"\xc6\xff\xff\xff\xff")
def test_random_bytes_never_raise_anything_but_malformed(raw):
    for decode in (decode_batch, decode_marks):
        try:
            decode(raw)
        except MalformedMessage:
            pass


def test_a_batch_is_not_marks_and_marks_are_not_a_batch():
    encoder = BatchEncoder("o")
    with pytest.raises(MalformedMessage):
        decode_batch(encoder.marks([["a", 0, 1]]))
    with pytest.raises(MalformedMessage):
        decode_marks(batch_body(encoder, 0, 1, 0.0, ["x"]))
    assert math.isfinite(decode_batch(batch_body(encoder, 0, 1, 1.0, ["x"]))[3])
