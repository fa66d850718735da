"""The client library's per-message cost, step by step, in one process (no node, no network).

    .venv/bin/python -m bench.hotpath [--messages 200000] [--size 100] [--steps]

The whole path: a :class:`mesh.publisher.Publisher` publishes ``--messages``
payloads in a burst into a real XPUB socket; a SUB socket connected to it
over ``inproc`` holds them (no high-water mark); a
:class:`mesh.receiver.Receiver` then hands them to one
:class:`mesh.subscription.Subscription` read with ``get()``. Prints the
nanoseconds per message of each phase (the best of ``--repeat`` runs: the
machine is shared, and the least disturbed run is the closest to the cost).

``--steps`` also times each step of the two paths on its own, the same way
(ns per message, batches amortised over their messages), for the table in
docs/PERFORMANCE.md. ``--phase publish|receive`` runs one phase only (receive
includes the publishing that feeds it), for an instruction count that does
not depend on the machine's noise; ``--fixed-batches`` makes every batch
``BATCH_MAX_MESSAGES`` whatever the clock says, as they are at full speed
(under valgrind the code runs ~50 times slower, and the flush rule would
send every message alone)::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m bench.hotpath --phase receive --messages 50000 --repeat 1 --fixed-batches
    # minus the same with --messages 0, divided by 50000: instructions per message
"""

import argparse
import threading
import time

import zmq

from mesh import publisher as publisher_module
from mesh.envelope import BatchEncoder, Message, decode_batch
from mesh.publisher import BATCH_MAX_MESSAGES, Publisher
from mesh.receiver import Receiver
from mesh.subjects import Pattern
from mesh.subscription import Subscription

SUBJECT = "bench.x"


def build(endpoint, messages):
    """A publisher on an XPUB, and a receiver whose SUB reads it over inproc."""
    context = zmq.Context.instance()
    xpub = context.socket(zmq.XPUB)
    xpub.setsockopt(zmq.SNDHWM, 0)
    xpub.bind(endpoint)
    publisher = Publisher(xpub, BatchEncoder("bench/hotpath"), 60.0, threading.Event(), None)

    def make_socket():
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(endpoint)
        return sock
    receiver = Receiver(make_socket, None)
    sub = Subscription(receiver, Pattern(SUBJECT), messages + 1, 60.0, None)
    receiver.add(sub)
    while not publisher.has_prefix(Pattern(SUBJECT).prefix):
        time.sleep(0.001)
    return publisher, receiver, sub


def publish_phase(publisher, data, n):
    publish = publisher.publish
    began = time.perf_counter_ns()
    for _ in range(n):
        publish(SUBJECT, data)
    publisher.flush()
    return time.perf_counter_ns() - began


def receive_phase(sub, n):
    get = sub.get
    began = time.perf_counter_ns()
    for _ in range(n):
        get().data
    return time.perf_counter_ns() - began


def whole(args, data):
    best = {"publish": None, "receive": None}
    for r in range(args.repeat):
        publisher, receiver, sub = build(f"inproc://hotpath-{r}", args.messages)
        if args.phase in ("both", "publish", "receive"):
            spent = publish_phase(publisher, data, args.messages)
            if args.phase != "receive":
                best["publish"] = min(filter(None, (best["publish"], spent)))
        if args.phase in ("both", "receive"):
            spent = receive_phase(sub, args.messages)
            best["receive"] = min(filter(None, (best["receive"], spent)))
        receiver.close()
        publisher.close()
    return {phase: spent / max(1, args.messages) for phase, spent in best.items() if spent is not None}


def timed(repeat, n, step):
    """ns per call of ``step()`` run ``n`` times, the best of ``repeat``."""
    best = None
    for _ in range(repeat):
        began = time.perf_counter_ns()
        for _ in range(n):
            step()
        spent = time.perf_counter_ns() - began
        best = spent if best is None else min(best, spent)
    return best / n


def steps(args, data):
    """Each step of both paths on its own: (path, step, ns per message)."""
    n, repeat, per_batch = args.messages, args.repeat, BATCH_MAX_MESSAGES
    encoder = BatchEncoder("bench/hotpath")
    packed = encoder.pack(data)
    lock = threading.Lock()
    streams = {SUBJECT: object()}
    out = [("publish", "loop and call of an empty function", timed(repeat, n, lambda: None))]

    def locked():
        with lock:
            pass
    out.append(("publish", "the lock (with: enter, exit)", timed(repeat, n, locked)))

    def acquired():
        lock.acquire()
        try:
            pass
        finally:
            lock.release()
    out.append(("publish", "the lock (acquire(), release())", timed(repeat, n, acquired)))
    out.append(("publish", "time.monotonic()", timed(repeat, n, time.monotonic)))
    out.append(("publish", "the stream: dict lookup", timed(repeat, n, lambda: streams.get(SUBJECT))))
    out.append(("publish", "msgpack: pack the payload, checked", timed(repeat, n, lambda: encoder.pack(data))))
    out.append(("publish", "msgpack: pack the payload, unchecked",
                timed(repeat, n, lambda: encoder.pack_unchecked(data))))
    parts = [None] + [packed] * per_batch
    out.append(("publish", "the batch body: header and join (per message)",
                timed(repeat, max(1, n // per_batch), lambda: encoder.batch(1, 1, 0.0, parts)) / per_batch))
    body = encoder.batch(1, 1, 0.0, parts)
    context = zmq.Context.instance()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    a.setsockopt(zmq.SNDHWM, 0)
    b.setsockopt(zmq.RCVHWM, 0)
    a.bind("inproc://hotpath-steps")
    b.connect("inproc://hotpath-steps")
    topic = SUBJECT.encode() + b"."

    def send():
        a.send(topic, zmq.SNDMORE)
        a.send(body)
    batches = max(1, n // per_batch)
    out.append(("publish", "two sends of a batch (per message)", timed(1, batches, send) / per_batch))

    def recv():
        b.recv(zmq.NOBLOCK, copy=False).bytes
        b.recv(zmq.NOBLOCK, copy=False)
    out.append(("receive", "two recvs of a batch (per message)", timed(1, batches, recv) / per_batch))
    a.close()
    b.close()
    out.append(("receive", "msgpack: decode the batch (per message)",
                timed(repeat, batches, lambda: decode_batch(body, with_headers=True)) / per_batch))
    payloads = decode_batch(body)[4]
    out.append(("receive", "one Message per payload, Message(...) each",
                timed(repeat, batches, lambda: [Message(SUBJECT, d, "o", 1 + i, 0.0, 0)
                                                for i, d in enumerate(payloads)]) / per_batch))
    out.append(("receive", "one Message per payload, Message.numbered",
                timed(repeat, batches, lambda: Message.numbered(SUBJECT, payloads, "o", 1, 0.0, 0)) / per_batch))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=100, help="payload bytes")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--phase", choices=("both", "publish", "receive"), default="both")
    parser.add_argument("--steps", action="store_true", help="also time each step on its own")
    parser.add_argument("--fixed-batches", action="store_true",
                        help="full batches whatever the clock says (for valgrind)")
    args = parser.parse_args(argv)
    if args.fixed_batches:
        publisher_module.IDLE_GAP = publisher_module.BATCH_MAX_AGE = float("inf")
    data = b"." * args.size
    for phase, ns in whole(args, data).items():
        print(f"{phase:<8} whole path{'':<40}{ns:>8.0f} ns/msg")
    if args.steps:
        for path, step, ns in steps(args, data):
            print(f"{path:<8} {step:<50}{ns:>8.0f} ns/msg")


if __name__ == "__main__":
    main()
