"""Static membership: ``--peer HOST:PORT`` control addresses, links made symmetric.

Every ``interval`` seconds the node introduces itself to each configured peer
(control command ``peer``) and learns that peer's record from the reply; a
node that is introduced to learns the introducer. A peer not heard from for
``expiry`` seconds is dropped; one that says ``bye`` is dropped at once. A
restarted peer (new ``instance``, new data ports) replaces its old record.
"""

import logging
import time

import gevent

from mesh.control import ControlChannel, ControlError, normalize_address
from mesh.members import validate_member
from mesh.waiting import pick_waiter

from .base import Discovery

log = logging.getLogger("meshnode.discovery.static")


class StaticDiscovery(Discovery):
    def __init__(self, context, peers, interval=1.0, expiry=5.0, curve=None):
        self._context = context
        self._curve = curve
        self._addresses = [normalize_address(p) for p in peers]
        self.interval = interval
        self.expiry = expiry
        self._seen = {}  # name -> (record, monotonic time last heard)
        self._published = {}
        self._me = None
        self._on_change = None
        self._loops = []

    def start(self, me, on_change):
        self._me = me
        self._on_change = on_change
        self._loops = [gevent.spawn(self._introduce_loop, a) for a in self._addresses]
        self._loops.append(gevent.spawn(self._expire_loop))

    def _channel(self, address):
        return ControlChannel(self._context, address, pick_waiter(), timeout=self.interval, curve=self._curve)

    def _introduce_loop(self, address):
        channel = self._channel(address)
        while True:
            try:
                reply = channel.request("peer", member=self._me)
                self.announce(validate_member(reply.get("member")))
            except TimeoutError:
                # Drop requests queued for an absent peer rather than flood it later.
                channel.close()
                channel = self._channel(address)
            except (ControlError, ValueError) as exc:
                log.warning("peer %s refused or sent a bad record: %s", address, exc)
            gevent.sleep(self.interval)

    def _expire_loop(self):
        while True:
            gevent.sleep(self.interval)
            cutoff = time.monotonic() - self.expiry
            for name, (record, heard) in list(self._seen.items()):
                if heard < cutoff:
                    log.info("peer %s not heard for %.1f s: dropped", name, self.expiry)
                    del self._seen[name]
            self._publish()

    def announce(self, member):
        if member["name"] == self._me["name"]:
            return
        self._seen[member["name"]] = (member, time.monotonic())
        self._publish()

    def depart(self, name):
        if self._seen.pop(name, None) is not None:
            log.info("peer %s said bye", name)
            self._publish()

    def _publish(self):
        members = {name: record for name, (record, _) in self._seen.items()}
        if members != self._published:
            self._published = members
            self._on_change(dict(members))

    def stop(self):
        gevent.killall(self._loops)
        targets = {r["control"] for r in self._published.values()} | set(self._addresses)

        def bye(address):
            channel = self._channel(address)
            try:
                channel.request("bye", name=self._me["name"], timeout=0.5)
            except (TimeoutError, ControlError):
                pass
            finally:
                channel.close()

        gevent.joinall([gevent.spawn(bye, a) for a in targets], timeout=1.0)
