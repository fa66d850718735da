"""Control requests from this node to its peers, over one lasting channel per peer.

Announcements (queue-group members, webhooks without ZooKeeper) are *told*:
sent to every peer without waiting, a peer that is slow to answer getting the
next one instead once MAX_RELAYS_WAITING are outstanding. Revocations are
*asked*: sent to every peer at once, and the answer (``ok``, ``timeout`` or
the peer's error) collected within a timeout. The channels are kept while the
peer is a member and closed when it leaves (:meth:`Relay.keep_only`); the
console asks over them too.
"""

import logging

import gevent
import zmq

from mesh.control import ControlChannel, ControlError
from mesh.concurrency import pick_waiter

log = logging.getLogger("meshnode.relay")

CHANNEL_TIMEOUT = 1.0
MAX_RELAYS_WAITING = 8  # announcements waiting for one slow peer before more are skipped


class Relay:
    def __init__(self, context, members, curve=None):
        """``members()``: the peers' member records now."""
        self._context = context
        self._members = members
        self._curve = curve
        self._channels = {}  # control address -> ControlChannel

    def channel(self, record):
        """The lasting control channel to a peer (CHANNEL_TIMEOUT), closed when it leaves."""
        channel = self._channels.get(record["control"])
        if channel is None:
            channel = self._channels[record["control"]] = ControlChannel(
                self._context, record["control"], pick_waiter(), timeout=CHANNEL_TIMEOUT, curve=self._curve)
            channel.relaying = 0
        return channel

    def tell(self, cmd, fields):
        """Send a request to every peer without waiting for the answers."""
        for record in list(self._members()):
            self.tell_one(record, cmd, fields)

    def tell_one(self, record, cmd, fields):
        """Send a request to one peer without waiting for the answer."""
        channel = self.channel(record)
        if channel.relaying < MAX_RELAYS_WAITING:  # a slow peer gets the next announcement instead
            gevent.spawn(_tell_one, channel, cmd, fields)

    def ask(self, cmd, fields, timeout):
        """Send a request to every peer at once: ``{name: "ok" | "timeout" | its error}``."""
        jobs = {record["name"]: gevent.spawn(_ask_one, self.channel(record), cmd, fields, timeout)
                for record in list(self._members())}
        gevent.joinall(list(jobs.values()), timeout=timeout + 1)
        return {name: job.value if job.ready() else "timeout" for name, job in sorted(jobs.items())}

    def keep_only(self, addresses):
        """Close the channels to control addresses no longer in ``addresses``."""
        for address in [a for a in self._channels if a not in addresses]:
            self._channels.pop(address).close()

    def close(self):
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


def _tell_one(channel, cmd, fields):
    channel.relaying += 1
    try:
        channel.request(cmd, **fields)
    except (TimeoutError, ControlError, zmq.ZMQError) as exc:  # the next announcement tries again
        log.debug("relaying %s failed: %s", cmd, exc)
    finally:
        channel.relaying -= 1


def _ask_one(channel, cmd, fields, timeout):
    try:
        channel.request(cmd, timeout=timeout, **fields)
        return "ok"
    except TimeoutError:
        return "timeout"
    except ControlError as exc:
        return str(exc)
    except zmq.ZMQError as exc:  # the peer left meanwhile and its channel closed
        return f"channel closed: {exc}"
