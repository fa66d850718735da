"""A mesh's membership as ZooKeeper holds it: the layout, connecting, and
reading member records. Nodes (discovery/zookeeper.py) and clients
(``Client.from_zookeeper``, mesh/failover.py) both read it.

Layout: ``/meshnode/<mesh>/nodes/<node name>``, ephemeral, holding the
node's member record (mesh/members.py) as JSON; a node of a group registers
under ``/meshnode/<mesh>/groups/<group>/nodes`` instead.
"""

import json
import logging
import random

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.retry import KazooRetry
from kazoo.security import OPEN_ACL_UNSAFE, make_acl, make_digest_acl

from .members import validate_member, validate_name
from .concurrency import running_under_gevent

log = logging.getLogger("mesh.zkmembers")

ROOT = "/meshnode"


class DiscoveryError(RuntimeError):
    """Membership cannot be established (unreachable ZooKeeper, name taken)."""


def members_path(mesh, group=None):
    if group is None:
        return f"{ROOT}/{validate_name(mesh, 'mesh name')}/nodes"
    return f"{ROOT}/{validate_name(mesh, 'mesh name')}/groups/{validate_name(group, 'group name')}/nodes"


def connect(hosts, session_timeout=10.0, connect_timeout=None, auth=None):
    """A started KazooClient (gevent handler when the program is green).

    ``auth`` is ``"user:password"`` or None. Raises DiscoveryError when no
    server answers within ``connect_timeout`` (default: the session timeout).
    """
    handler = None
    if running_under_gevent():
        from kazoo.handlers.gevent import SequentialGeventHandler

        handler = SequentialGeventHandler()
    acl = OPEN_ACL_UNSAFE
    auth_data = None
    if auth:
        user, sep, password = auth.partition(":")
        if not sep or not user:
            raise ValueError("ZooKeeper auth must be USER:PASSWORD")
        auth_data = [("digest", auth)]
        acl = [make_digest_acl(user, password, all=True), make_acl("world", "anyone", read=True)]
    client = KazooClient(hosts=hosts, timeout=session_timeout, handler=handler, default_acl=acl,
                         auth_data=auth_data, connection_retry=KazooRetry(max_tries=-1, max_delay=2))
    timeout = session_timeout if connect_timeout is None else connect_timeout
    try:
        client.start(timeout=timeout)
    except (Exception, client.handler.timeout_exception) as exc:  # gevent's is a BaseException
        client.stop()
        client.close()
        raise DiscoveryError(f"cannot reach ZooKeeper at {hosts} within {timeout:g} s ({exc})") from None
    return client


def read_members(client, mesh, children=None, group=None):
    """Current member records of a mesh (or of one of its groups), name ->
    record (bad records skipped); only those of ``children`` when given."""
    path = members_path(mesh, group)
    members = {}
    if children is None:
        try:
            children = client.get_children(path)
        except NoNodeError:
            return members
    for child in children:
        try:
            data, _ = client.get(f"{path}/{child}")
            record = validate_member(json.loads(data.decode("utf-8")))
        except NoNodeError:
            continue  # left between the two reads
        except ValueError as exc:
            log.warning("ignoring znode %s/%s: %s", path, child, exc)
            continue
        members[record["name"]] = record
    return members


def groups_of(client, mesh):
    """The names of a mesh's groups (sorted; those that are not valid names left out)."""
    try:
        children = client.get_children(f"{ROOT}/{validate_name(mesh)}/groups")
    except NoNodeError:
        return []
    valid = []
    for group in sorted(children):
        try:
            valid.append(validate_name(group))
        except ValueError:
            continue  # not a group this software made
    return valid


def every_member(client, mesh):
    """The member records of a whole mesh, its groups' included, name -> record
    (one read per node: for operators' listings, not for every client)."""
    members = read_members(client, mesh)
    for group in groups_of(client, mesh):
        members.update(read_members(client, mesh, group=group))
    return members


def some_members(client, mesh):
    """Nodes to pick one from without reading the whole mesh: those without a
    group, else those of one group taken at random (the first with any)."""
    members = read_members(client, mesh)
    groups = groups_of(client, mesh)
    random.shuffle(groups)
    for group in groups:
        if members:
            break
        members = read_members(client, mesh, group=group)
    return members
