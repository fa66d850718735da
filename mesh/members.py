"""The member record: what a node says about itself, to its peers and in ZooKeeper.

A member record is a map that travels over the control socket and into
ZooKeeper: ``name``, ``control``, ``ingress``, ``out``, ``remote`` (tcp
endpoints), ``instance`` (random per process start), ``started`` (unix time),
``protocol``, ``max_payload``; a node of a group adds ``group`` and, if it
may be the group's gateway, ``gateway`` (its group face, which every member
links to like a peer's ``out``: nodes/gateway.py); a node with an edge adds
``http`` (``http://HOST:PORT``); a node that restored held jobs from its
``--data-dir`` adds ``resumes``, the instance whose jobs they were
(nodes/queues/replicas.py). Clients read records
too (``Client.from_zookeeper``), so this lives at the bottom, in ``mesh``.
"""

import re

from .envelope import PROTOCOL_VERSION

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_ENDPOINT = re.compile(r"(tcp|http)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")  # a host to dial, never *
_ENDPOINT_FIELDS = ("control", "ingress", "out", "remote")
_OPTIONAL_ENDPOINT_FIELDS = ("gateway", "http")


def validate_name(name, what="node name"):
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"{what} {name!r} must be 1-128 characters of A-Z a-z 0-9 _ . : - (and not . or ..)")
    return name


def validate_endpoint(value, what, scheme="tcp"):
    """``value`` if it is SCHEME://HOST:PORT, else ValueError starting with ``what``."""
    match = _ENDPOINT.fullmatch(value) if isinstance(value, str) else None
    if match is None or match.group(1) != scheme or not 0 < int(match.group(3)) < 65536:
        raise ValueError(f"{what} {value!r} is not {scheme}://HOST:PORT")
    return value


def member_ports(record):
    """(host, port) of every port a member record names (its ZeroMQ sockets, gateway face, edge)."""
    for field in (*_ENDPOINT_FIELDS, *_OPTIONAL_ENDPOINT_FIELDS):
        match = _ENDPOINT.fullmatch(record.get(field) or "")
        if match is not None:
            yield match.group(2).strip("[]"), int(match.group(3))


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
        clean["group"] = validate_name(member["group"], "group name")
        if member.get("gateway") is not None:
            clean["gateway"] = validate_endpoint(member["gateway"], f"member {clean['name']}: gateway")
    if member.get("http") is not None:
        clean["http"] = validate_endpoint(member["http"], f"member {clean['name']}: http", "http")
    if member.get("resumes") is not None:
        if not isinstance(member["resumes"], str):
            raise ValueError(f"member {clean['name']}: resumes {member['resumes']!r} is not an instance")
        clean["resumes"] = member["resumes"]
    if clean["protocol"] != PROTOCOL_VERSION:
        raise ValueError(f"member {clean['name']} speaks protocol {clean['protocol']}, "
                         f"this node {PROTOCOL_VERSION}")
    return clean
