"""A gateway: how one group of nodes exchanges messages with the other groups.

Past one full mesh, nodes form groups (``--group``); a node links only to
the nodes of its own group. One node per group, elected among the nodes run
with ``--gateway`` (discovery/gateways.py), joins its group to the others'
gateways. Its four sockets and two ``zmq.proxy`` loops, like the data plane
(nodes/dataplane.py), keep Python off the path of every message::

    group members' out --> [collect XSUB] ==proxy==> [gateway_out XPUB] --> other gateways' inbound
    other gateways' gateway_out --> [inbound XSUB] ==proxy==> [group_face XPUB] --> members' mesh_in

* ``collect`` is linked to the ``out`` of every member of the group (its
  own node's too) and so receives only what was *published in the group*.
* ``group_face`` looks to every member like one more peer's ``out``: their
  ``mesh_in`` links to it (it is in the candidate's member record), so what
  comes in from other groups reaches subscribers through ``remote``, which
  never forwards (the data plane's one-hop rule). So a message crosses at
  most one gateway-to-gateway link and is never sent back: no loops, no
  duplicates, as long as one gateway per group is active.
* Interest flows back for free: the members' ``mesh_in`` subscribe at
  ``group_face`` with their ``remote`` subscriptions, which are their own
  clients' and nothing else (``collect`` links to ``out``, never to
  ``remote``). The proxy passes each prefix's first subscribe and last
  unsubscribe to ``inbound``, which passes them to every other gateway's
  ``gateway_out``, whose proxy passes them to its ``collect``, so each
  group's publishers send only what some other group wants. A gateway's own
  subscriptions never count as its group's interest, so interest cannot
  echo between two gateways and outlive its subscribers.

Every candidate binds all four sockets at start (members link to its
``group_face`` whether it is active or not; an idle one forwards nothing).
Only the active one links ``collect`` and ``inbound``; the others' are
unlinked, so the other gateways may stay linked to every candidate's
``gateway_out`` and a successor takes over without anyone reconnecting.
"""

import logging

import zmq

from mesh.liveness import PEER_PINGS

from .control import Feature
from .dataplane import MAX_SUBSCRIPTION_FRAME, PeerLinks, data_socket, endpoint_of

log = logging.getLogger("meshnode.gateway")


class Gateway(Feature):
    """A gateway candidate's sockets and proxies; ``set_role`` makes it active or idle."""

    def __init__(self, context, host, group, *, hwm, curve=None, pings=PEER_PINGS):
        """``pings``: the PING budget of ``collect`` and of ``inbound`` (nodes/dataplane.py PeerLinks)."""
        self.group = group

        def make(kind, bind, **options):
            return data_socket(context, kind, host, hwm=hwm, curve=curve, bind=bind, peers=True, **options)

        self.group_face = make(zmq.XPUB, True, MAXMSGSIZE=MAX_SUBSCRIPTION_FRAME)
        self.gateway_out = make(zmq.XPUB, True, MAXMSGSIZE=MAX_SUBSCRIPTION_FRAME)
        self.collect = make(zmq.XSUB, False)
        self.inbound = make(zmq.XSUB, False)
        self._outward = PeerLinks(context, "gateway-collect", self.collect, self.gateway_out, pings=pings)
        self._inward = PeerLinks(context, "gateway-inbound", self.inbound, self.group_face, pings=pings)
        self.active = False
        self.activations = 0  # times this node became its group's gateway
        self._group_outs = set()
        self._gateways = {}  # other candidates' gateway_out -> their group

    def endpoints(self, advertise_host):
        """``gateway`` (the group face, for the member record) and ``gateway_out``."""
        return {"gateway": endpoint_of(self.group_face, advertise_host),
                "gateway_out": endpoint_of(self.gateway_out, advertise_host)}

    def start(self):
        self._outward.start()
        self._inward.start()

    def set_group(self, out_endpoints):
        """The ``out`` of every member of the group, this node's included."""
        self._group_outs = set(out_endpoints)
        self._apply()

    def set_role(self, active, gateways):
        """Active or idle; ``gateways`` maps every candidate of the other
        groups (``gateway_out`` endpoint) to its group."""
        if active and not self.active:
            self.activations += 1
            log.info("this node is now the gateway of group %s", self.group)
        elif self.active and not active:
            log.warning("this node is no longer the gateway of group %s", self.group)
        self.active = active
        self._gateways = dict(gateways)
        self._apply()

    def _apply(self):
        self._outward.set_endpoints(self._group_outs if self.active else ())
        self._inward.set_endpoints(self._gateways if self.active else ())

    def stats(self):
        return {"gateway": self.counters()}

    def counters(self):
        outward, inward = self._outward.proxy.counters(), self._inward.proxy.counters()
        return {
            "group": self.group,
            "active": self.active,
            "activations": self.activations,
            "group_links": {"up": _count(self._outward.links, "up"), "down": _count(self._outward.links, "down")},
            "gateway_links": {"up": _count(self._inward.links, "up"), "down": _count(self._inward.links, "down")},
            "groups": sorted(set(self._gateways.values())),
            "messages": {"to_other_groups": outward["frontend_frames_in"] // 2,
                         "from_other_groups": inward["frontend_frames_in"] // 2},
            "bytes": {"to_other_groups": outward["frontend_bytes_in"],
                      "from_other_groups": inward["frontend_bytes_in"]},
        }

    def stop(self):
        self._outward.stop()
        self._inward.stop()
        for sock in (self.group_face, self.gateway_out, self.collect, self.inbound):
            sock.close(linger=0)


def _count(links, state):
    return sum(value == state for value in links.values())
