"""Webhooks, the registry: which URLs are registered under which key, mesh-wide.

A hook is a URL registered under a key (an account id), following a subject
pattern (default ``hooks.<key>.>``), with one or more signing secrets
(``whsec_<base64>``, Standard Webhooks; several during a key rotation). Its
id is derived from key and URL, so registering the same pair again updates it.

With ZooKeeper the hooks are persistent znodes ``/meshnode/<mesh>/hooks/<id>``
(JSON, readable with zkCli), watched by every node: they survive every
restart, and a node keeps delivering from what it knows while ZooKeeper is
down. Without ZooKeeper a registration is relayed to the peers known at that
moment and kept in memory; a node that joins the membership (one that
starts later, or restarts) is told every hook by each peer that knows it
(:meth:`HookRegistry.introduce`), so ``hooks ls`` on any node lists what the
mesh delivers. nodes/hooks/delivery.py delivers.
"""

import base64
import hashlib
import json
import logging
import os
import re
import time

from mesh.subjects import Pattern

from .targets import parse_url

log = logging.getLogger("meshnode.hooks")

KIND = "hooks"
MAX_RECORD_BYTES = 4096
MAX_URL_BYTES = 2048
DEFAULT_MAX_AGE = 3600.0
MAX_REMOVED = 1024  # removed records remembered against late copies from ZooKeeper
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def new_secret():
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def hook_id(key, url):
    return hashlib.sha256(f"{key}\n{url}".encode()).hexdigest()[:24]


def validate_hook(fields):
    """A clean hook record from a registration; ValueError naming the problem.
    Where the URL may point is the target policy's question (nodes/hooks/targets.py)."""
    key, url = fields.get("key"), fields.get("url")
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError("key must be 1-128 letters, digits, '_' or '-'")
    if not isinstance(url, str) or len(url.encode()) > MAX_URL_BYTES:
        raise ValueError(f"url must be a string of at most {MAX_URL_BYTES} bytes")
    parse_url(url)
    pattern = fields.get("pattern") or f"hooks.{key}.>"
    Pattern(pattern)
    secrets = fields.get("secrets") or [new_secret()]
    if isinstance(secrets, str):
        secrets = [secrets]
    if not isinstance(secrets, list) or not all(isinstance(s, str) and s.startswith("whsec_") for s in secrets):
        raise ValueError("secrets are strings 'whsec_<base64>'")
    for secret in secrets:
        try:
            base64.b64decode(secret[6:], validate=True)
        except ValueError:
            raise ValueError("a secret is 'whsec_' followed by base64") from None
    created = fields.get("created")
    if created is not None and (isinstance(created, bool) or not isinstance(created, (int, float))):
        raise ValueError("created is a Unix time")
    max_age = fields.get("max_age", DEFAULT_MAX_AGE)
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or not 0 < max_age <= 7 * 86400:
        raise ValueError("max_age is seconds, more than 0 and at most a week")
    record = {"id": hook_id(key, url), "key": key, "url": url, "pattern": pattern, "secrets": secrets,
              "max_age": float(max_age), "created": fields.get("created") or time.time()}
    if len(json.dumps(record).encode()) > MAX_RECORD_BYTES:
        raise ValueError(f"the registration is over {MAX_RECORD_BYTES} bytes")
    return record


class HookRegistry:
    def __init__(self, discovery, relay, targets):
        """``relay(cmd, fields)`` sends a control request to every peer (used without ZooKeeper);
        ``targets``: the TargetPolicy a registration's URL must pass (nodes/hooks/targets.py)."""
        self.discovery = discovery
        self._relay = relay
        self.targets = targets
        self.hooks = {}  # id -> record
        self._removed = {}  # id -> the record removed here: a late copy from ZooKeeper is not learned again
        self.listeners = []  # callables (record, removed: bool)

    def start(self):
        self.discovery.follow(KIND, self._stored)

    def _stored(self, name, record):
        if record is None:
            self._forget(name)
            return
        try:
            record = validate_hook(record)
        except ValueError as exc:
            log.warning("ignoring stored hook %r: %s", name, exc)
            return
        if self._removed.get(record["id"]) != record:
            self._learn(record)

    def add(self, fields, relay=True):
        """Register (or update) a hook; returns its record. ValueError if invalid, TargetRefused
        (a ValueError) if its URL points where deliveries may not go. A relayed registration
        (``relay`` False) was checked where it was made; every delivery is checked again."""
        record = validate_hook(fields)
        if relay:
            self.targets.target(record["url"])
        self._removed.pop(record["id"], None)
        self._learn(record)
        if relay and not self.discovery.share(KIND, record["id"], record):
            self._relay("hook_add", {**record, "relay": False})
        return record

    def remove(self, key, url, relay=True):
        """Unregister; True if this node knew the hook."""
        known = self._forget(hook_id(key, url))
        if relay and not self.discovery.unshare(KIND, hook_id(key, url)):
            self._relay("hook_rm", {"key": key, "url": url, "relay": False})
        return known

    def introduce(self, tell):
        """Tell a peer that just joined every hook this node knows (``tell(cmd, fields)``),
        when no shared store (ZooKeeper) keeps them for it."""
        if self.discovery.keeps_records:
            return
        for record in list(self.hooks.values()):
            tell("hook_add", {**record, "relay": False})

    def _learn(self, record):
        if self.hooks.get(record["id"]) == record:
            return
        self.hooks[record["id"]] = record
        for listener in self.listeners:
            listener(record, False)

    def _forget(self, hook):
        record = self.hooks.pop(hook, None)
        if record is not None:
            self._removed[hook] = record
            if len(self._removed) > MAX_REMOVED:
                self._removed.pop(next(iter(self._removed)))
            for listener in self.listeners:
                listener(record, True)
        return record is not None

    def of_key(self, key=None):
        return [record for record in self.hooks.values() if key is None or record["key"] == key]
