"""Revoked token subjects, mesh-wide: whose tokens the edges refuse, and until when.

A revocation names a token's ``sub`` and the time it lapses. It is made at
any node (the ``revoke`` control command: ``meshnode revoke``,
``Client.revoke``, or an edge's ``POST /revoke/<sub>`` with an admin token),
applied there at once (its edge closes that subject's connections and
refuses new ones), and then:

* relayed to every peer the node knows at that moment, one ``revoke`` with
  ``relay: false`` each over the node's channels to its peers (nodes/relay.py),
  each answered within RELAY_TIMEOUT; the reply says which peers confirmed;
* with ZooKeeper, also stored under ``/meshnode/<mesh>/revoked/`` (by the
  discovery backend), so a node that starts later, or that was cut off
  during the relay, loads it and hears of new ones through a watch.

Without ZooKeeper a node that was unreachable during the relay, or joins
later, does not learn of the revocation (docs/EDGE.md says so).
"""

import logging
import time

from discovery.base import validate_revocation

from nodes.control import Feature, RequestError, flag

log = logging.getLogger("meshnode.revocations")

RELAY_TIMEOUT = 2.0
KIND = "revoked"  # the shared records' kind: /meshnode/<mesh>/revoked/<sub> in ZooKeeper


class Revocations(Feature):
    def __init__(self, discovery, relay, default_seconds):
        """``relay``: the node's Relay to its peers; ``default_seconds``: how
        long a revocation lasts unless told."""
        self.discovery = discovery
        self._relay = relay
        self.default_seconds = default_seconds
        self._until = {}  # subject -> Unix time it lapses
        self.listeners = []  # callables(subject), told of each new revocation (the edge)

    def start(self):
        self.discovery.follow(KIND, self._stored)

    def _stored(self, name, record):
        """A revocation in ZooKeeper (or one gone from it: nothing to undo, it lapses)."""
        if record is None:
            return
        try:
            subject, until = validate_revocation(record.get("sub"), record.get("until"))
        except (ValueError, AttributeError) as exc:
            if isinstance(record, dict) and isinstance(record.get("until"), (int, float)) \
                    and record["until"] <= time.time():
                self.discovery.unshare(KIND, name)  # lapsed: whoever sees it first removes it
            else:
                log.warning("ignoring stored revocation %r: %s", name, exc)
            return
        self.apply(subject, until)

    def revoked(self, subject):
        until = self._until.get(subject)
        if until is None:
            return False
        if until <= time.time():
            del self._until[subject]
            return False
        return True

    def current(self):
        now = time.time()
        return {subject: until for subject, until in self._until.items() if until > now}

    def apply(self, subject, until):
        """Make a revocation hold here (a later ``until`` extends it)."""
        if until <= time.time() or until <= self._until.get(subject, 0):
            return
        self._until[subject] = until
        log.info("token sub %r revoked until %s", subject, time.strftime("%Y-%m-%d %H:%M:%S",
                                                                          time.localtime(until)))
        for listener in self.listeners:
            listener(subject)

    def revoke(self, subject, until):
        """Apply, store and relay a new revocation to the peers known now.
        Returns what the requester is told: which peers confirmed and
        whether ZooKeeper holds it."""
        self.apply(subject, until)
        stored = self.discovery.share(KIND, subject, {"sub": subject, "until": until})
        peers = self._relay.ask("revoke", {"sub": subject, "until": until, "relay": False}, RELAY_TIMEOUT)
        return {"sub": subject, "until": until, "stored": stored, "peers": peers}

    def commands(self):
        return {"revoke": self.cmd_revoke}

    def stats(self):
        return {"revocations": len(self.current())}

    def cmd_revoke(self, request):
        """Refuse the tokens of ``sub`` on every edge of the mesh until
        ``until`` (or for ``seconds``); relayed to the peers unless ``relay`` is false."""
        seconds = request.get("seconds", self.default_seconds)
        until = request.get("until")
        relay = flag(request, "relay", True)
        try:
            if until is None:
                if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
                    raise ValueError("seconds must be a positive number")
                until = time.time() + seconds
            subject, until = validate_revocation(request.get("sub"), until)
        except ValueError as exc:
            raise RequestError("bad_request", str(exc)) from None
        if not relay:
            self.apply(subject, until)
            return {"sub": subject, "until": until}
        return self.revoke(subject, until)
