"""The interface every membership backend offers a node.

A backend calls ``on_change(members)`` with the full current map of peer
name -> member record (mesh/members.py) whenever it changes; the node
connects to exactly those peers. A backend may also keep shared records
(``share``, ``follow``: token revocations, webhooks) where nodes that start
later find them.
"""

import time

MAX_REVOKED_SUB_BYTES = 256
MAX_REVOCATION_SECONDS = 366 * 24 * 3600.0


def validate_revocation(subject, until):
    """``(subject, until)`` checked; ValueError naming the problem."""
    if not isinstance(subject, str) or not subject or len(subject.encode()) > MAX_REVOKED_SUB_BYTES:
        raise ValueError(f"a revocation names a token sub of 1 to {MAX_REVOKED_SUB_BYTES} bytes")
    if isinstance(until, bool) or not isinstance(until, (int, float)) or not until > 0:
        raise ValueError("a revocation lapses at a time (Unix seconds)")
    if until > time.time() + MAX_REVOCATION_SECONDS:
        raise ValueError(f"a revocation lasts at most {MAX_REVOCATION_SECONDS:g} s")
    return subject, float(until)


class NameTaken(ValueError):
    """A node introduced itself under the name of the node it spoke to (``announce``)."""


class Discovery:
    """Base class of membership backends."""

    def start(self, me, on_change):
        """Begin; ``me`` is this node's record, ``on_change(members)`` the callback."""
        raise NotImplementedError

    def announce(self, member, fields):
        """A peer introduced itself on the control socket: ``member`` is its
        validated record, ``fields`` the rest of its ``peer`` request. Returns
        the fields to add to the reply (ValueError: the request is refused)."""
        return {}

    def depart(self, name, instance=None):
        """A peer said goodbye on the control socket (``instance``: only that
        process of it, when given)."""

    keeps_records = False  # True when share() keeps records where later nodes find them

    def share(self, kind, name, record):
        """Keep a JSON record (a token revocation, a webhook) where every node,
        and nodes that start later, find it; False when this backend has no
        such place (then the caller relays it to the peers)."""
        return False

    def unshare(self, kind, name):
        """Remove a shared record; False when this backend keeps none."""
        return False

    def follow(self, kind, on_record):
        """Call ``on_record(name, record)`` for each shared record of a kind,
        now and as they change, and ``on_record(name, None)`` when one goes.
        Nothing by default."""

    def elect_gateway(self, record, on_role):
        """Stand as a gateway of this node's group: ``on_role(active,
        gateways)`` whenever this node becomes or stops being the group's
        gateway, or the other groups' candidates change (``gateways``: their
        ``gateway_out`` endpoint -> group). Only ZooKeeper elects."""
        raise ValueError("gateways need ZooKeeper (--zk)")

    def gateway_directory(self):
        """The other groups' gateway candidates (group -> [{"name", "control"}]),
        if this node stands as a gateway, else None."""
        return None

    def stop(self):
        """Leave the mesh and stop."""
        raise NotImplementedError
