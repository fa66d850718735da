"""Marks the node repeats for publishers that closed (docs/PROTOCOL.md 4.3, command ``marks``).

A live publisher repeats its marks every second while it remembers a stream,
so a subscriber whose queue was full when they went by learns where the
stream ended from a later round. A publisher that closed cannot: it hands its
last entries to its node (control command ``marks``), and this module repeats
them on its behalf, under its origin, every ``MARK_SECONDS`` for ``seconds``
(at most ``MAX_SECONDS``). The first round comes ``MARK_SECONDS`` after the
hand-over: the publisher's last messages reach ``ingress`` on a connection of
their own, and a mark must not overtake what it counts.

Marks go out through an XPUB connected to the node's own ``ingress``, which
learns the subscribed prefixes like any publisher (mesh/marks.py groups the
entries by them). The socket exists only while something is kept. At most
``MAX_STREAMS`` streams are kept in all; a hand-over past that keeps what fits.
"""

import logging
import time

import gevent
import zmq

from mesh.curve import apply_client
from mesh.envelope import BatchEncoder
from mesh.marks import HAND_OVER_MAX_ENTRIES, MARK_SECONDS, MARKS_MAX_BYTES, MarkSet
from mesh.publisher import read_interest
from mesh.subjects import validate_subject

from .control import Feature, RequestError

log = logging.getLogger("meshnode.closedmarks")

MAX_SECONDS = 600.0
MAX_STREAMS = 100_000
MAX_ORIGIN_BYTES = 1024


class _Kept:
    __slots__ = ("encoder", "marks", "start", "until")

    def __init__(self, origin, now):
        self.encoder = BatchEncoder(origin)
        self.marks = MarkSet()
        self.start = now + MARK_SECONDS
        self.until = now


class ClosedMarks(Feature):
    def __init__(self, context, ingress, hwm, max_payload, curve=None):
        self._context = context
        self._ingress = ingress  # the node's own ingress, as the node dials it
        self._hwm = hwm
        self._room = min(max_payload, MARKS_MAX_BYTES) - 64  # what a marks body may take
        self._curve = curve
        self._kept = {}  # origin -> _Kept
        self._streams = 0
        self._loop = None
        self.handed_over = 0  # streams handed over, in all
        self.refused = 0  # streams not kept: MAX_STREAMS were held
        self.messages = 0  # marks messages sent

    def keep(self, origin, streams, seconds):
        """Repeat ``streams`` (``[subject, epoch, seq]``) of publisher ``origin``
        for ``seconds``; returns how many streams of that origin are kept.
        ValueError names a bad field."""
        if not isinstance(origin, str) or not 0 < len(origin.encode("utf-8", "surrogatepass")) <= MAX_ORIGIN_BYTES:
            raise ValueError(f"origin must be a str of 1 to {MAX_ORIGIN_BYTES} bytes")
        if not isinstance(streams, list) or len(streams) > HAND_OVER_MAX_ENTRIES:
            raise ValueError(f"streams is a list of at most {HAND_OVER_MAX_ENTRIES} [subject, epoch, seq]")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError("seconds must be a positive number")
        entries = []
        for item in streams:
            if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str)
                    or type(item[1]) is not int or type(item[2]) is not int or item[1] < 0 or item[2] < 1):
                raise ValueError("each stream is [subject, epoch (int >= 0), seq (int >= 1)]")
            entries.append((validate_subject(item[0]), *item))
        now = time.monotonic()
        kept = self._kept.get(origin)
        if kept is None:
            kept = self._kept[origin] = _Kept(origin, now)
        kept.until = max(kept.until, now + min(float(seconds), MAX_SECONDS))
        for topic, subject, epoch, seq in entries:
            before = len(kept.marks)
            if self._streams >= MAX_STREAMS and subject not in kept.marks:
                self.refused += 1
                continue
            kept.marks.set(topic, subject, epoch, seq)
            self._streams += len(kept.marks) - before
        self.handed_over += len(entries)
        if not kept.marks:
            del self._kept[origin]
        elif self._loop is None:
            self._loop = gevent.spawn(self._run)
        return len(kept.marks)

    def _run(self):
        sock = self._context.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self._hwm)
        apply_client(self._curve, sock)
        sock.connect(self._ingress)
        interest = set()
        try:
            while self._kept:
                gevent.sleep(MARK_SECONDS)
                read_interest(sock, interest)
                now = time.monotonic()
                for origin, kept in list(self._kept.items()):
                    if now >= kept.until:
                        del self._kept[origin]
                        self._streams -= len(kept.marks)
                    elif now >= kept.start:
                        for prefix, entries in kept.marks.messages(interest, self._room):
                            sock.send(prefix + b"\x00", zmq.SNDMORE)
                            sock.send(kept.encoder.marks(entries))
                            self.messages += 1
        finally:
            self._loop = None
            sock.close(linger=0)

    def commands(self):
        return {"marks": self.cmd_marks}

    def stats(self):
        return {"marks": self.counters()}

    def cmd_marks(self, request):
        """A closing publisher's last marks, repeated on its behalf."""
        try:
            kept = self.keep(request.get("origin"), request.get("streams"), request.get("seconds"))
        except (ValueError, TypeError) as exc:
            raise RequestError("bad_request", str(exc)) from None
        return {"kept": kept}

    def counters(self):
        return {"origins": len(self._kept), "streams": self._streams, "handed_over": self.handed_over,
                "refused": self.refused, "messages": self.messages}

    def stop(self):
        if self._loop is not None:
            self._loop.kill()
