"""Webhooks, delivery: every message on a hook's pattern POSTed to its URL once, mesh-wide.

Each node is a worker of one job group per hook (``hook-<id>``, on the hook's
pattern; nodes/jobs.py). So each message becomes one job, held by the node
where it was published until some node's deliverer acknowledges it; a
deliverer that dies mid-retry is replaced by another node's, with the same
``webhook-id`` (a duplicate is possible then, a silent loss is not).

A delivery is one POST (urllib3, under gevent) with a JSON body (subject,
data, origin, seq, ts) and the Standard Webhooks headers: ``webhook-id``
(the job's id: the same on every retry), ``webhook-timestamp`` and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``,
one per secret, space-separated). Outcome:

* 2xx: delivered.
* 410 Gone: the hook is unregistered, mesh-wide.
* 429: wait ``Retry-After`` (seconds), then again.
* 5xx, a timeout, a refused connection: again after an exponential backoff
  with jitter, while the message is younger than the hook's ``max_age``.
* Any other 4xx, or out of time: failed; the message and the last error go to
  the dead-letter subject ``$dead.hooks.<key>``.

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

from .edgeproto import dumps

log = logging.getLogger("meshnode.hooks")

CONNECT_SECONDS = 5.0
READ_SECONDS = 10.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 60.0
JOB_DEADLINE = 30.0  # a deliverer extends it while it retries
JOB_ATTEMPTS = 5  # deliverers (nodes) that may die holding one delivery
DEAD_LETTER_TOPIC = "$dead.hooks"


def sign(secrets, webhook_id, timestamp, body):
    content = f"{webhook_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(base64.b64decode(secret[6:]), content,
                                                      hashlib.sha256).digest()).decode()
                    for secret in secrets)


class HookDelivery:
    def __init__(self, registry):
        self.registry = registry
        self.client = None  # the node's own mesh Client, set once connected
        self.http = urllib3.PoolManager(num_pools=100, maxsize=1, retries=False,
                                        timeout=urllib3.Timeout(connect=CONNECT_SECONDS, read=READ_SECONDS))
        self.subscriptions = {}  # hook id -> Subscription
        self.counters = {}  # hook id -> {"delivered", "retried", "failed", "last_error"}
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
        self.counters.setdefault(record["id"], {"delivered": 0, "retried": 0, "failed": 0, "last_error": None})
        self.subscriptions[record["id"]] = self.client.subscribe(
            record["pattern"], lambda message, hook=record["id"]: self._deliver(hook, message),
            queue=f"hook-{record['id']}", capacity=100, ack_deadline=JOB_DEADLINE, max_attempts=JOB_ATTEMPTS)

    def _deliver(self, hook, message):
        record = self.registry.hooks.get(hook)
        if record is None:  # unregistered meanwhile
            self.client.ack(message)
            return
        counters = self.counters[hook]
        body = dumps({"subject": message.subject, "data": message.data, "origin": message.origin,
                      "seq": message.seq, "ts": message.ts}).encode()
        webhook_id = f"msg_{message.job}"
        backoff, error = BACKOFF_FIRST, None
        while True:
            timestamp = int(time.time())
            headers = {"Content-Type": "application/json", "webhook-id": webhook_id,
                       "webhook-timestamp": str(timestamp),
                       "webhook-signature": sign(record["secrets"], webhook_id, timestamp, body)}
            wait = None
            try:
                response = self.http.request("POST", record["url"], body=body, headers=headers)
                status = response.status
                if 200 <= status < 300:
                    counters["delivered"] += 1
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
            except urllib3.exceptions.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            counters["last_error"] = error
            wait = wait if wait is not None else backoff * random.uniform(0.5, 1.5)
            backoff = min(BACKOFF_MAX, backoff * 2)
            if time.time() + wait - message.ts > record["max_age"]:
                break  # out of time
            counters["retried"] += 1
            self.client.extend(message, wait + JOB_DEADLINE)
            gevent.sleep(wait)
            record = self.registry.hooks.get(hook)
            if record is None:
                self.client.ack(message)
                return
        counters["failed"] += 1
        counters["last_error"] = error
        self.client.publish(f"{DEAD_LETTER_TOPIC}.{record['key']}",
                            {"hook": hook, "url": record["url"], "subject": message.subject, "data": message.data,
                             "webhook_id": webhook_id, "error": error})
        self.client.ack(message)

    def totals(self):
        """Deliveries, retries and failures of every hook this node has
        delivered, removed ones included: they never go down (metrics)."""
        return {name: sum(c[name] for c in self.counters.values()) for name in ("delivered", "retried", "failed")}

    def listing(self, key=None):
        return [{**{k: v for k, v in record.items() if k != "secrets"}, "secrets": len(record["secrets"]),
                 **self.counters.get(record["id"], {"delivered": 0, "retried": 0, "failed": 0, "last_error": None})}
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
