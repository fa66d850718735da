"""A tap on a node's ``out``: a SUB socket and the greenlet that reads it.

What is published at a node passes its ``out`` socket once; a tap sees it
there without touching the forwarding path (libzmq filters by the tap's
subscribed prefixes before Python sees anything). The history recorder and
the queue dispatcher are taps on their own node's ``out``; a history
replica's copy taps are on the ``out`` of the holders it follows
(nodes/history/copies.py). A subclass says what it does with each data
message (:meth:`Tap.take`, given the subject and the envelope frame) and,
with ``tick_seconds`` set, what it does every so often (:meth:`Tap.tick`).
Marks and other non-data frames are skipped here; a message that cannot be
decoded is counted in ``malformed``.
"""

import time

import gevent
import zmq

from mesh.curve import apply_client
from mesh.envelope import MalformedMessage
from mesh.subjects import subject_from_topic
from mesh.concurrency import pick_waiter, recv_multipart


class Tap:
    tick_seconds = None  # how often tick(now) runs; None: never

    def __init__(self, context, out_endpoint, curve=None, prefixes=()):
        self.malformed = 0
        self._sock = context.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, 0)  # the tap keeps up or the node's memory says so
        self._sock.setsockopt(zmq.SNDHWM, 0)  # hundreds of subscriptions: libzmq drops them at its limit
        apply_client(curve, self._sock)
        for prefix in prefixes:
            self._sock.setsockopt(zmq.SUBSCRIBE, prefix)
        self._sock.connect(out_endpoint)
        self._loop = None

    def subscribe(self, prefix):
        self._sock.setsockopt(zmq.SUBSCRIBE, prefix)

    def unsubscribe(self, prefix):
        self._sock.setsockopt(zmq.UNSUBSCRIBE, prefix)

    def start(self):
        self._loop = gevent.spawn(self._run)

    def stop(self):
        if self._loop is not None:
            self._loop.kill()
        self._sock.close(linger=0)

    def take(self, subject, frames):
        """One data message published at this node: ``frames`` is [topic, envelope]."""
        raise NotImplementedError

    def tick(self, now):
        """Every ``tick_seconds`` (monotonic ``now``)."""

    def _run(self):
        wait = pick_waiter()
        next_tick = time.monotonic() + (self.tick_seconds or 0.0)
        while True:
            try:
                frames = recv_multipart(self._sock, wait, self.tick_seconds)
            except TimeoutError:
                frames = None
            if self.tick_seconds is not None:
                now = time.monotonic()
                if now >= next_tick:
                    self.tick(now)
                    next_tick = now + self.tick_seconds
            if frames is not None and len(frames) == 2 and not frames[0].endswith(b"\x00"):  # not marks
                try:
                    self.take(_subject(frames[0]), frames)
                except MalformedMessage:
                    self.malformed += 1


def _subject(topic):
    try:
        return subject_from_topic(topic)
    except ValueError:
        raise MalformedMessage("bad topic") from None
