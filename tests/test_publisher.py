"""mesh/publisher.py's short path, a publish joining the open batch: what it
must do as the long way does (bad payloads, the size limit, forgetting idle
streams), with the batch held open by the flush rule's constants set so
that every publish of a burst joins (no clock in the outcome).

A real XPUB socket; a SUB over ``inproc`` reads what it sends. No node."""

import sys
import threading
import time

import pytest
import zmq

from mesh import publisher as publisher_module
from mesh.envelope import BatchEncoder, PayloadTooLarge, decode_batch
from mesh.publisher import Publisher

SUBJECT = "t.x"


@pytest.fixture
def batching(monkeypatch):
    """Every publish after the first two of a burst joins the open batch, which waits for flush()."""
    monkeypatch.setattr(publisher_module, "IDLE_GAP", float("inf"))
    monkeypatch.setattr(publisher_module, "BATCH_MAX_AGE", float("inf"))


@pytest.fixture
def make_pair(request):
    """make_pair(max_payload): a publisher (streams idle after 0.2 s) and the SUB reading it."""
    made = []

    def make(max_payload):
        context = zmq.Context.instance()
        endpoint = f"inproc://test-publisher-{request.node.name}-{len(made)}"
        xpub = context.socket(zmq.XPUB)
        xpub.bind(endpoint)
        sub = context.socket(zmq.SUB)
        sub.connect(endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        assert xpub.poll(2000)  # the subscription has arrived: nothing sent is lost
        publisher = Publisher(xpub, BatchEncoder("test/pub", max_payload=max_payload), 0.2, threading.Event(), None)
        made.append((publisher, sub))
        return publisher, sub

    yield make
    for publisher, sub in made:
        publisher.close()
        sub.close(linger=0)


@pytest.fixture
def pair(make_pair):
    """A publisher with a payload limit of 1,000 bytes, and the SUB reading it."""
    return make_pair(1000)


def batches(sub):
    """(epoch, first seq, payloads) of every batch the SUB holds."""
    got = []
    while sub.poll(200):
        topic, body = sub.recv_multipart()
        if topic.endswith(b"."):
            _, epoch, seq, _, payloads = decode_batch(body)
            got.append((epoch, seq, payloads))
    return got


def test_a_bad_payload_joining_a_batch_is_refused_and_the_batch_goes_on(batching, pair):
    publisher, sub = pair
    assert [publisher.publish(SUBJECT, n) for n in range(3)] == [1, 2, 3]  # the third opened a batch
    with pytest.raises(TypeError, match="msgpack"):
        publisher.publish(SUBJECT, object())
    with pytest.raises(TypeError, match="msgpack"):
        publisher.publish(SUBJECT, [1, 2, object()])  # fails halfway through packing
    with pytest.raises(PayloadTooLarge, match="over the limit of 1000 bytes"):
        publisher.publish(SUBJECT, "x" * 2000)
    assert publisher.publish(SUBJECT, {"k": 4}) == 4
    publisher.flush()
    assert batches(sub) == [(0, 1, [0]), (0, 2, [1]), (0, 3, [2, {"k": 4}])]
    assert publisher.published == 4


def test_a_batch_that_is_full_goes_out_and_the_next_publish_opens_another(batching, pair):
    publisher, sub = pair
    sizes = [publisher.publish(SUBJECT, b"y" * 300) for _ in range(8)]
    publisher.flush()
    got = batches(sub)
    assert sizes == list(range(1, 9))
    assert [seq for _, seq, _ in got] == [1, 2, 3, 6]  # three of 300 bytes fill a batch of 1,000
    assert [len(payloads) for _, _, payloads in got] == [1, 1, 3, 3]


def test_a_stream_published_into_an_open_batch_across_rotations_is_not_forgotten(batching, pair):
    """Publishes joining a batch across the forgetting of idle streams keep
    their stream remembered: each rotation, the next publish revives it."""
    publisher, sub = pair
    for n in range(3):
        publisher.publish(SUBJECT, n)
    for _ in range(3):  # each 0.25 s: past a generation (0.2 s), so each housekeep rotates
        time.sleep(0.25)
        publisher.housekeep()
        publisher.publish(SUBJECT, "more")
    assert publisher.forgotten == 0 and publisher.streams == 1 and publisher.epoch_of(SUBJECT) == 0
    publisher.flush()
    got = batches(sub)
    assert sum(len(payloads) for _, _, payloads in got) == 6
    assert {epoch for epoch, _, _ in got} == {0}


def test_publishes_from_two_threads_into_one_batch_are_numbered_once_each(batching, pair):
    """The threads switch every microsecond: without the publisher's lock,
    seqs are handed out twice or payloads land under another's seq."""
    publisher, sub = pair
    seqs = {0: [], 1: []}

    def publish(thread):
        for n in range(20000):
            seqs[thread].append(publisher.publish(SUBJECT, [thread, n]))
    threads = [threading.Thread(target=publish, args=(thread,)) for thread in seqs]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    publisher.flush()
    assert sorted(seqs[0] + seqs[1]) == list(range(1, 40001))
    received = {}  # seq -> payload
    for _, seq, payloads in batches(sub):
        received.update((seq + i, payload) for i, payload in enumerate(payloads))
    assert sorted(received) == list(range(1, 40001))
    for thread, numbers in seqs.items():  # each seq carries what the publish that got it sent
        assert [received[seq] for seq in numbers] == [[thread, n] for n in range(20000)]


def test_a_batch_holds_up_to_1024_messages(batching, make_pair):
    publisher, sub = make_pair(1024 * 1024)
    for n in range(2 + 2048 + 5):
        publisher.publish(SUBJECT, n)
    publisher.flush()
    got = batches(sub)
    assert [len(payloads) for _, _, payloads in got] == [1, 1, 1024, 1024, 5]
    assert [p for _, _, payloads in got for p in payloads] == list(range(2 + 2048 + 5))


def test_a_batch_of_large_payloads_holds_up_to_256_KiB(batching, make_pair):
    """16 KiB payloads travel fifteen to a batch (256 KiB): fewer, larger
    ZeroMQ messages are what lets large payloads through two hops at speed
    (docs/PERFORMANCE.md, 1b)."""
    publisher, sub = make_pair(1024 * 1024)
    for _ in range(2 + 32):
        publisher.publish(SUBJECT, b"z" * 16384)
    publisher.flush()
    got = batches(sub)
    assert [len(payloads) for _, _, payloads in got] == [1, 1, 15, 15, 2]
    assert sum(len(p) for _, _, payloads in got for p in payloads) == 34 * 16384
