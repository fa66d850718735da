"""The interface every membership backend offers a node, and the member record.

A member record is a map that travels over the control socket and into
ZooKeeper: ``name``, ``control``, ``ingress``, ``out``, ``remote`` (tcp
endpoints), ``instance`` (random per process start), ``started`` (unix time),
``protocol``, ``max_payload``; a node of a group adds ``group`` and, if it
may be the group's gateway, ``gateway`` (its group face, which every member
links to like a peer's ``out``: nodes/gateway.py). A backend calls ``on_change(members)`` with the full current
map of peer name -> record whenever it changes; the node connects to exactly
those peers. A backend may also keep shared records (``share``, ``follow``:
token revocations, webhooks) where nodes that start later find them.
"""

import re
import time

from mesh.envelope import PROTOCOL_VERSION

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_ENDPOINT = re.compile(r"tcp://[^\s/]+:(\d{1,5})")
_ENDPOINT_FIELDS = ("control", "ingress", "out", "remote")


def validate_name(name):
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"node name {name!r} must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    return name


def validate_endpoint(value, what):
    """``value`` if it is tcp://HOST:PORT, else ValueError starting with ``what``."""
    match = _ENDPOINT.fullmatch(value) if isinstance(value, str) else None
    if match is None or not 0 < int(match.group(1)) < 65536:
        raise ValueError(f"{what} {value!r} is not tcp://HOST:PORT")
    return value


def validate_member(member):
    """Return a clean copy of a member record; ValueError names what is wrong."""
    if not isinstance(member, dict):
        raise ValueError("member record is not a map")
    clean = {"name": validate_name(member.get("name"))}
    for field in _ENDPOINT_FIELDS:
        clean[field] = validate_endpoint(member.get(field), f"member {clean['name']}: {field}")
    for field, kind in (("instance", str), ("started", (int, float)), ("protocol", int), ("max_payload", int)):
        value = member.get(field)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"member {clean['name']}: {field} {value!r} has the wrong type")
        clean[field] = value
    if member.get("group") is not None:  # a node of a group, and its face if it is a gateway candidate
        clean["group"] = validate_name(member["group"])
        if member.get("gateway") is not None:
            clean["gateway"] = validate_endpoint(member["gateway"], f"member {clean['name']}: gateway")
    if clean["protocol"] != PROTOCOL_VERSION:
        raise ValueError(f"member {clean['name']} speaks protocol {clean['protocol']}, "
                         f"this node {PROTOCOL_VERSION}")
    return clean


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


class Discovery:
    """Base class of membership backends."""

    def start(self, me, on_change):
        """Begin; ``me`` is this node's record, ``on_change(members)`` the callback."""
        raise NotImplementedError

    def announce(self, member):
        """A peer introduced itself on the control socket (validated record)."""

    def depart(self, name):
        """A peer said goodbye on the control socket."""

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

    def stop(self):
        """Leave the mesh and stop."""
        raise NotImplementedError
