"""History copies: what this node keeps, as a replica, of the history of the
holders placement gives it (``--history-replicas R``, nodes/placement.py).

For each holder it follows, a tap (nodes/tap.py) on that holder's ``out``
records into this node's recorder what is published there (the recording
prefixes reach the holder's publishers by the mesh's own interest
forwarding: no Python on the holder's path), each entry marked with the
holder. Before the tap reads anything it catches up: SETTLE_SECONDS after
connecting (time for its subscriptions to reach the holder's publishers;
libzmq queues what arrives meanwhile), it reads the holder's ``history``
with ``own`` (only what was published at the holder, docs/PROTOCOL.md 7.3)
page by page on the node's control channel to it, and records each
message it does not hold yet, page by page, in the holder's order, with
the streams the holder evicted. Then the tap reads what queued, leaving
out what the catch-up brought. So a node that becomes a replica (another
replica died, or the membership changed) holds what the holder kept
before, in order, not only what came after.

A catch-up whose page the holder does not answer within CATCH_UP_TIMEOUT
is tried again after RETRY_SECONDS, at most CATCH_UP_ATTEMPTS times; then
the tap reads on without it (counted ``failed``; what it could not copy is
missing from this copy, which a recovery reports as it finds it).
"""

import logging

import gevent
import msgpack
import zmq

from mesh.control import ControlError
from nodes.placement import followed_by
from nodes.tap import Tap

log = logging.getLogger("meshnode.history")

SETTLE_SECONDS = 1.0  # between connecting a holder's tap and reading the holder's history
CATCH_UP_TIMEOUT = 5.0  # seconds the holder has to answer each page
CATCH_UP_ATTEMPTS = 3
RETRY_SECONDS = 2.0


class _CopyTap(Tap):
    """What is published at one holder, recorded here marked with its name."""

    def __init__(self, recorder, holder, context, endpoint, curve, prefixes):
        super().__init__(context, endpoint, curve, prefixes)
        self.recorder, self.holder = recorder, holder
        self.caught_to = {}  # (origin, subject) -> (epoch, seq): the newest message the catch-up recorded

    def take(self, subject, frames):
        self.recorder.record(subject, frames[1], at=self.holder, held_to=self.caught_to)


class Copies:
    """The holders this node is a replica of, each with its tap and catch-up."""

    def __init__(self, me, copies, recorder, tap_settings, channel):
        """``tap_settings``: (context, curve, prefixes) for the taps; ``channel(record)``: the
        node's control channel to a member (nodes/relay.py)."""
        self.me, self.copies, self.recorder = me, copies, recorder
        self._tap_settings = tap_settings
        self._channel = channel
        self._followed = {}  # name -> (member record, tap, the greenlet catching up, then starting the tap)
        self.caught_up = {"messages": 0, "done": 0, "failed": 0}
        self._malformed_before = 0  # counted by taps closed since (a counter never goes down)

    @property
    def holders(self):
        return sorted(self._followed)

    @property
    def malformed(self):
        """Messages the taps could not decode, not recorded."""
        return self._malformed_before + sum(tap.malformed for _, tap, _ in self._followed.values())

    def update(self, members):
        """Follow the holders ``members`` (name -> member record, this node not among them) give this node."""
        wanted = {name: members[name] for name in followed_by(self.me, members, self.copies)}
        for name in list(self._followed):
            record, tap, catching_up = self._followed[name]
            if name not in wanted or (wanted[name]["instance"], wanted[name]["out"]) != (record["instance"],
                                                                                          record["out"]):
                catching_up.kill(block=False)
                tap.stop()
                self._malformed_before += tap.malformed
                del self._followed[name]
        for name, record in wanted.items():
            if name not in self._followed:
                context, curve, prefixes = self._tap_settings
                tap = _CopyTap(self.recorder, name, context, record["out"], curve, prefixes)
                self._followed[name] = (record, tap, gevent.spawn(self._follow, name, record, tap))

    def stop(self):
        for _, tap, catching_up in self._followed.values():
            catching_up.kill(block=False)
            tap.stop()
        self._followed = {}

    def _follow(self, holder, record, tap):
        """Catch up on what ``holder`` kept, then let ``tap`` read what queued meanwhile and on."""
        gevent.sleep(SETTLE_SECONDS)
        try:
            self._catch_up_with_retries(holder, record, tap.caught_to)
        except Exception:  # whatever went wrong, the copy goes on with what is published from now on
            self.caught_up["failed"] += 1
            log.exception("catching up on %s's history failed", holder)
        tap.start()

    def _catch_up_with_retries(self, holder, record, caught_to):
        added = 0
        for attempt in range(1, CATCH_UP_ATTEMPTS + 1):
            try:
                added += self._catch_up(holder, record, caught_to)
                self.caught_up["done"] += 1
                log.info("caught up on %s's history: %d messages it kept before this node followed it",
                         holder, added)
                return
            except (ControlError, TimeoutError, zmq.ZMQError, KeyError, TypeError, ValueError) as exc:
                self.caught_up["failed"] += 1
                log.warning("catching up on %s's history failed (%s)%s", holder, exc,
                            f": again in {RETRY_SECONDS:.0f} s" if attempt < CATCH_UP_ATTEMPTS else
                            ": this copy holds only what is published from now on")
                if attempt < CATCH_UP_ATTEMPTS:
                    gevent.sleep(RETRY_SECONDS)

    def _catch_up(self, holder, record, caught_to):
        """Record every message ``holder`` kept (published there), page by page, and its
        streams' newest evictions; note in ``caught_to`` how far each stream got. Returns
        how many messages were new here."""
        channel = self._channel(record)
        added = 0
        for rule in self.recorder.rules:
            cursor = None
            while True:
                reply = channel.request("history", timeout=CATCH_UP_TIMEOUT, pattern=rule.pattern.text, since=0.0,
                                        partial=True, own=True, **({} if cursor is None else {"cursor": cursor}))
                messages = [[subject, origin, epoch, seq, ts, msgpack.packb(data)]
                            for subject, origin, epoch, seq, ts, data in reply["messages"]]
                new = self.recorder.record_copies(holder, messages)
                self.caught_up["messages"] += new
                added += new
                for subject, origin, epoch, seq, *_ in messages:
                    key = (origin, subject)
                    caught_to[key] = max((epoch, seq), caught_to.get(key, (epoch, seq)))
                self.recorder.copy_evictions(holder, reply.get("evicted", ()))
                cursor = reply["next"]
                if cursor is None:
                    break
        return added
