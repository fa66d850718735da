"""Webhooks, delivery: every message on a hook's pattern POSTed to its URL once, mesh-wide.

Each node is a worker of one job group per hook (``hook-<id>``, on the hook's
pattern; nodes/queues/jobs.py). So each message becomes one job, held by the node
where it was published until some node's deliverer acknowledges it; a
deliverer that dies mid-retry is replaced by another node's, with the same
``webhook-id`` (a duplicate is possible then, a silent loss is not).

A delivery is one POST (urllib3, under gevent) to the address the target
policy checked (nodes/hooks/targets.py, at every attempt), with a JSON body
(subject, data, origin, seq, ts), the Standard Webhooks headers
``webhook-id`` (the job's id: the same on every retry), ``webhook-timestamp``
and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``,
one per secret, space-separated), and ``meshnode-hooks``: the hooks whose
deliveries led to this message, this one last. An edge's ``POST /pub`` carries
that header into what it publishes (``hooks``), and a hook never delivers a
message that names it there, nor one that went through MAX_HOOK_CHAIN hooks:
so a hook that publishes back into the mesh, directly or around a cycle of
hooks, ends after one round (counted ``looped``). Outcome:

* 2xx: delivered.
* 410 Gone: the hook is unregistered, mesh-wide.
* 429: wait ``Retry-After`` (seconds), then again.
* 5xx, a timeout, a refused connection: again after an exponential backoff
  with jitter, while the message is younger than the hook's ``max_age``.
* Any other 4xx or 3xx (redirects are not followed), a target the policy
  refuses (counted ``refused`` too), or out of time: failed; the message and
  the last error go to the dead-letter subject ``$dead.hooks.<key>``.

While it retries, the deliverer extends its job, so the holder does not give
it to another node. Each hook is delivered by its own greenlet per node, so a
receiver that hangs delays only its own deliveries.
"""

import base64
import hashlib
import hmac
import logging
import random
import time

import gevent
import urllib3

from mesh.envelope import HOOKS_HEADER

from nodes.jsontext import dumps
from .targets import TargetRefused

log = logging.getLogger("meshnode.hooks")

CONNECT_SECONDS = 5.0
READ_SECONDS = 10.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 60.0
JOB_DEADLINE = 30.0  # a deliverer extends it while it retries
JOB_ATTEMPTS = 5  # deliverers (nodes) that may die holding one delivery
DEAD_LETTER_TOPIC = "$dead.hooks"
MAX_HOOK_CHAIN = 8  # hooks one message may pass through (the meshnode-hooks header)
CHAIN_HTTP_HEADER = "meshnode-hooks"


def sign(secrets, webhook_id, timestamp, body):
    content = f"{webhook_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(base64.b64decode(secret[6:]), content,
                                                      hashlib.sha256).digest()).decode()
                    for secret in secrets)


def hook_chain(text):
    """The hook ids of a ``meshnode-hooks`` header (comma-separated); ValueError if it is not one."""
    chain = [part.strip() for part in text.split(",")] if text else []
    if len(chain) > MAX_HOOK_CHAIN or not all(len(part) == 24 and part.isalnum() for part in chain):
        raise ValueError(f"{CHAIN_HTTP_HEADER} is a comma-separated list of at most {MAX_HOOK_CHAIN} hook ids")
    return chain


def _host_header(target):
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


COUNTED = ("delivered", "retried", "failed", "refused", "looped")


def _fresh_counters():
    return {**dict.fromkeys(COUNTED, 0), "last_error": None}


class HookDelivery:
    def __init__(self, registry):
        self.registry = registry
        self.client = None  # the node's own mesh Client, set once connected
        self.http = urllib3.PoolManager(num_pools=100, maxsize=1, retries=False,
                                        timeout=urllib3.Timeout(connect=CONNECT_SECONDS, read=READ_SECONDS))
        self.subscriptions = {}  # hook id -> Subscription
        self.counters = {}  # hook id -> _fresh_counters()
        self.totals = dict.fromkeys(COUNTED, 0)  # over the process's life, removed hooks included
        registry.listeners.append(self._changed)

    def attach(self, client):
        """The node's client is ready: become a worker of every known hook."""
        self.client = client
        for record in list(self.registry.hooks.values()):
            self._changed(record, False)

    def _changed(self, record, removed):
        """A hook came, changed or went. Called from a control request: joining
        a group asks this very node, so the work is done in a greenlet."""
        if self.client is not None:
            gevent.spawn(self._apply, record, removed)

    def _apply(self, record, removed):
        old = self.subscriptions.pop(record["id"], None)
        if old is not None:
            old.unsubscribe()
        if removed:
            return
        self.counters.setdefault(record["id"], _fresh_counters())
        self.subscriptions[record["id"]] = self.client.subscribe(
            record["pattern"], lambda message, hook=record["id"]: self._deliver(hook, message),
            queue=f"hook-{record['id']}", capacity=100, ack_deadline=JOB_DEADLINE, max_attempts=JOB_ATTEMPTS)

    def _deliver(self, hook, message):
        record = self.registry.hooks.get(hook)
        if record is None:  # unregistered meanwhile
            self.client.ack(message)
            return
        counters = self.counters[hook]
        chain = list((message.headers or {}).get(HOOKS_HEADER) or [])
        if hook in chain or len(chain) >= MAX_HOOK_CHAIN:  # it came from this hook's own delivery
            self._count(counters, "looped")
            self.client.ack(message)
            return
        body = dumps({"subject": message.subject, "data": message.data, "origin": message.origin,
                      "seq": message.seq, "ts": message.ts}).encode()
        webhook_id = f"msg_{message.job}"
        backoff, error = BACKOFF_FIRST, None
        while True:
            timestamp = int(time.time())
            headers = {"Content-Type": "application/json", "webhook-id": webhook_id,
                       "webhook-timestamp": str(timestamp),
                       "webhook-signature": sign(record["secrets"], webhook_id, timestamp, body),
                       CHAIN_HTTP_HEADER: ",".join([*chain, hook])}
            wait = None
            try:
                response = self.post(record["url"], body, headers)
                status = response.status
                if 200 <= status < 300:
                    self._count(counters, "delivered")
                    counters["last_error"] = None
                    self.client.ack(message)
                    return
                error = f"HTTP {status}"
                if status == 410:
                    log.info("hook %s at %s answered 410 Gone: unregistering it", hook, record["url"])
                    self.registry.remove(record["key"], record["url"])
                    self.client.ack(message)
                    return
                if status == 429:
                    wait = _retry_after(response.headers.get("Retry-After"))
                elif status < 500:
                    break  # final
            except TargetRefused as exc:
                self._count(counters, "refused")
                error = f"refused: {exc}"
                break  # final: the policy will not change its mind on a retry
            except urllib3.exceptions.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            counters["last_error"] = error
            wait = wait if wait is not None else backoff * random.uniform(0.5, 1.5)
            backoff = min(BACKOFF_MAX, backoff * 2)
            if time.time() + wait - message.ts > record["max_age"]:
                break  # out of time
            self._count(counters, "retried")
            self.client.extend(message, wait + JOB_DEADLINE)
            gevent.sleep(wait)
            record = self.registry.hooks.get(hook)
            if record is None:
                self.client.ack(message)
                return
        self._count(counters, "failed")
        counters["last_error"] = error
        self.client.publish(f"{DEAD_LETTER_TOPIC}.{record['key']}",
                            {"hook": hook, "url": record["url"], "subject": message.subject, "data": message.data,
                             "webhook_id": webhook_id, "error": error})
        self.client.ack(message)

    def _count(self, counters, name):
        counters[name] += 1
        self.totals[name] += 1

    def post(self, url, body, headers):
        """One POST to the address the target policy passes for ``url`` (TargetRefused if none),
        redirects not followed."""
        target = self.registry.targets.target(url)
        tls = {"server_hostname": target.host, "assert_hostname": target.host} if target.scheme == "https" else None
        pool = self.http.connection_from_host(target.address, target.port, target.scheme, pool_kwargs=tls)
        return pool.urlopen("POST", target.path, body=body, headers={**headers, "Host": _host_header(target)},
                            redirect=False, retries=False)

    def listing(self, key=None):
        return [{**{k: v for k, v in record.items() if k != "secrets"}, "secrets": len(record["secrets"]),
                 **self.counters.get(record["id"], _fresh_counters())}
                for record in self.registry.of_key(key)]

    def stop(self):
        for subscription in self.subscriptions.values():
            subscription.unsubscribe()
        self.http.clear()


def _retry_after(value):
    try:
        return min(BACKOFF_MAX, max(0.0, float(value)))
    except (TypeError, ValueError):
        return None
