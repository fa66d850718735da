"""History copies: what this node keeps, as a replica, of the history of the
holders placement gives it (``--history-replicas R``, nodes/placement.py).

For each holder it follows, a tap (nodes/tap.py) on that holder's ``out``
records into this node's recorder what is published there from now on (the
recording prefixes reach the holder's publishers by the mesh's own interest
forwarding: no Python on the holder's path), each entry marked with the
holder. Then it catches up: it reads the holder's ``history`` with ``own``
(only what was published at the holder, docs/PROTOCOL.md 7.3), page by page
on the node's control channel to it, and inserts what it does not hold yet
before what the tap brought, with the streams the holder evicted. So a node
that becomes a replica (another replica died, or the membership changed)
holds what the holder kept before, not only what came after. What was
published while the tap's subscription was on its way to the holder's
publishers is in neither: a second catch-up, SETTLE_SECONDS later, brings
it (each message is inserted once, whatever both passes read).

A catch-up that fails (the holder did not answer a page within
CATCH_UP_TIMEOUT) is tried again after RETRY_SECONDS while the holder is
still followed.
"""

import logging

import gevent
import msgpack
import zmq

from mesh.control import ControlError
from nodes.placement import followed_by
from nodes.tap import Tap

log = logging.getLogger("meshnode.history")

CATCH_UP_TIMEOUT = 5.0  # seconds the holder has to answer each page
RETRY_SECONDS = 2.0
SETTLE_SECONDS = 2.0  # after the first catch-up: the tap's subscription has reached the holder's publishers


class _CopyTap(Tap):
    """What is published at one holder, recorded here marked with its name."""

    def __init__(self, recorder, holder, context, endpoint, curve, prefixes):
        super().__init__(context, endpoint, curve, prefixes)
        self.recorder, self.holder = recorder, holder

    def take(self, subject, frames):
        self.recorder.record(subject, frames[1], at=self.holder)


class Copies:
    """The holders this node is a replica of, each with its tap and catch-up."""

    def __init__(self, me, copies, recorder, tap_settings, channel):
        """``tap_settings``: (context, curve, prefixes) for the taps; ``channel(record)``: the
        node's control channel to a member (nodes/relay.py)."""
        self.me, self.copies, self.recorder = me, copies, recorder
        self._tap_settings = tap_settings
        self._channel = channel
        self._followed = {}  # name -> (member record, tap, catch-up greenlet)
        self.caught_up = {"messages": 0, "holders": 0, "failed": 0}

    @property
    def holders(self):
        return sorted(self._followed)

    def update(self, members):
        """Follow the holders ``members`` (name -> member record, this node not among them) give this node."""
        wanted = {name: members[name] for name in followed_by(self.me, members, self.copies)}
        for name in list(self._followed):
            record, tap, catching_up = self._followed[name]
            if wanted.get(name, {}).get("instance") != record["instance"] or \
                    wanted[name]["out"] != record["out"]:
                catching_up.kill(block=False)
                tap.stop()
                del self._followed[name]
        for name, record in wanted.items():
            if name not in self._followed:
                context, curve, prefixes = self._tap_settings
                tap = _CopyTap(self.recorder, name, context, record["out"], curve, prefixes)
                tap.start()  # first: what the catch-up reads is then older than what the tap records, or held twice
                self._followed[name] = (record, tap, gevent.spawn(self._catch_up, name, record))

    def stop(self):
        for _, tap, catching_up in self._followed.values():
            catching_up.kill(block=False)
            tap.stop()
        self._followed = {}

    def _catch_up(self, holder, record):
        added = 0
        for _ in range(2):
            while True:
                try:
                    messages, evicted = self._read(record)
                    break
                except (ControlError, TimeoutError, zmq.ZMQError) as exc:
                    self.caught_up["failed"] += 1
                    log.info("catching up on %s's history failed (%s): again in %.0f s", holder, exc, RETRY_SECONDS)
                    gevent.sleep(RETRY_SECONDS)
            more = self.recorder.insert_older(holder, messages, evicted)
            self.caught_up["messages"] += more
            added += more
            gevent.sleep(SETTLE_SECONDS)
        self.caught_up["holders"] += 1
        log.info("caught up on %s's history: %d messages it kept before this node followed it", holder, added)

    def _read(self, record):
        """Every message the holder kept, published there (``[subject, origin, epoch, seq, ts,
        packed data]``), and its streams' newest evictions."""
        channel = self._channel(record)
        messages, evicted = [], []
        for rule in self.recorder.rules:
            cursor = None
            while True:
                reply = channel.request("history", timeout=CATCH_UP_TIMEOUT, pattern=rule.pattern.text, since=0.0,
                                        partial=True, own=True, **({} if cursor is None else {"cursor": cursor}))
                messages.extend([subject, origin, epoch, seq, ts, msgpack.packb(data)]
                                for subject, origin, epoch, seq, ts, data in reply["messages"])
                evicted.extend(reply.get("evicted", ()))
                cursor = reply["next"]
                if cursor is None:
                    break
        return messages, evicted
