"""Webhooks as a feature of the node: the registry and the deliverer together,
their control commands (``hook_add``, ``hook_rm``, ``hook_ls``) and their part of
``stats``. The edge's ``/hooks`` routes use the same calls."""

from nodes.control import Feature, RequestError, flag

from .delivery import HookDelivery
from .registry import HookRegistry


class Webhooks(Feature):
    def __init__(self, discovery, relay, targets):
        """``relay(cmd, fields)`` tells every peer (used without ZooKeeper);
        ``targets``: the TargetPolicy every URL must pass (nodes/hooks/targets.py)."""
        self.registry = HookRegistry(discovery, relay, targets)
        self.delivery = HookDelivery(self.registry)

    def start(self):
        self.registry.start()

    def attach(self, client):
        """This node's own mesh Client: deliveries wait for it."""
        self.delivery.attach(client)

    def stop(self):
        self.delivery.stop()

    def add(self, fields, relay=True):
        return self.registry.add(fields, relay=relay)

    def remove(self, key, url, relay=True):
        return self.registry.remove(key, url, relay=relay)

    def introduce(self, tell):
        self.registry.introduce(tell)

    def listing(self, key=None):
        return self.delivery.listing(key)

    def commands(self):
        return {"hook_add": self.cmd_hook_add, "hook_rm": self.cmd_hook_rm, "hook_ls": self.cmd_hook_ls}

    def stats(self):
        totals = self.delivery.totals
        return {**({"hooks": self.delivery.listing()} if self.registry.hooks else {}),
                **({"hook_totals": totals} if self.registry.hooks or any(totals.values()) else {})}

    def cmd_hook_add(self, request):
        """Register (or update) a webhook; the reply has its secrets."""
        fields = {key: request.get(key) for key in ("key", "url", "pattern", "secrets", "max_age", "created")}
        fields = {key: value for key, value in fields.items() if value is not None}
        relay = flag(request, "relay", True)
        try:
            record = self.registry.add(fields, relay=relay)
        except (ValueError, TypeError) as exc:
            raise RequestError("bad_request", str(exc)) from None
        return {"hook": record}

    def cmd_hook_rm(self, request):
        key, url = request.get("key"), request.get("url")
        if not isinstance(key, str) or not isinstance(url, str):
            raise RequestError("bad_request", "hook_rm needs a key and a url")
        relay = flag(request, "relay", True)
        known = self.registry.remove(key, url, relay=relay)
        if not known and relay:
            raise RequestError("unknown_hook", f"no hook for {url!r} under key {key!r}")
        return {}

    def cmd_hook_ls(self, request):
        key = request.get("key")
        if key is not None and not isinstance(key, str):
            raise RequestError("bad_request", "key must be a string")
        return {"hooks": self.delivery.listing(key)}
