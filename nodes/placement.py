"""Replica placement: which nodes keep copies of what one node holds.

With ``--history-replicas R`` or ``--job-replicas R`` every node's history or
held jobs are also kept by R-1 other members of its mesh (or of its group),
chosen by rendezvous hashing: each other member ``m`` gets the weight
``sha256(holder + "\\n" + m)`` (its first 8 bytes, big-endian), and the R-1
heaviest are the holder's replicas, heaviest first (docs/PROTOCOL.md 7.6).
Every node computes the same answer from the same membership, with no
coordination; a node that leaves or joins moves only the replicas it wins
or loses, and a holder that dies leaves its replicas' order unchanged, so
the first of them (its *successor*) is known to all.
"""

import hashlib


def weight(holder, member):
    """The rendezvous weight of ``member`` as a replica of ``holder``."""
    digest = hashlib.sha256(f"{holder}\n{member}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def replicas_of(holder, names, copies):
    """The ``copies - 1`` names other than ``holder`` that keep copies of what it holds, heaviest first."""
    others = sorted(set(names) - {holder}, key=lambda name: (weight(holder, name), name), reverse=True)
    return others[:max(0, copies - 1)]


def followed_by(me, names, copies):
    """The names among ``names`` whose replicas (chosen from ``names`` and ``me``) include ``me``."""
    everyone = set(names) | {me}
    return {holder for holder in everyone - {me} if me in replicas_of(holder, everyone, copies)}


def successor(holder, names, copies):
    """The live replica that takes over what a dead ``holder`` held: the heaviest of ``names``
    (the membership without it) among its replicas, or None when it had none."""
    replicas = replicas_of(holder, names, copies)
    return replicas[0] if replicas else None

