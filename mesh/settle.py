"""Settling jobs: acknowledgements and extensions sent to the holding node without waiting.

``client.ack(message)`` and ``client.extend(message, seconds)`` hand the
request to this client's :class:`Settler` and return at once with a
:class:`Settlement`. The settler's worker (a thread, or a greenlet under
gevent) sends it on a connection of its own to the node named in the job's
``h`` header and matches the replies as they arrive. A worker is therefore
never held up by the holder: a node that is slow or gone costs the worker
nothing, and the jobs it took from other nodes go on at its own pace
(docs/QUEUES.md, "When the holding node dies").

Who wants the outcome waits for it: ``client.ack(m).result(timeout)``
returns the reply or raises ControlError (``unknown_job``: the job is not
held for this member there; ``unknown_node``: the holder is not in the
mesh's membership, known at once) or TimeoutError (the holder did not
answer within the client's timeout: its connection is then dropped and made
again at the next settlement, so a holder that membership has dropped is
refused at once from then on). Outcomes nobody waited for are counted in
``client.counters()["settled"]``.
"""

import collections
import logging
import threading
import time

from .control import ControlError, outcome
from .concurrency import start_background

log = logging.getLogger("mesh.settle")

POLL_SECONDS = 0.02  # how often replies are looked for while some are awaited
CLOSE_GRACE = 1.0  # how long closing the client waits for settlements still unanswered


class Settlement:
    """The outcome of one ``job_ack`` or ``job_extend``, once the holder answers."""

    def __init__(self, cmd, job):
        self.cmd, self.job = cmd, job
        self._done = threading.Event()
        self._reply = self._error = None

    def _finish(self, reply=None, error=None):
        self._reply, self._error = reply, error
        self._done.set()

    def done(self):
        return self._done.is_set()

    def result(self, timeout=None):
        """The holder's reply; raises what it refused (ControlError) or
        TimeoutError if there is no outcome within ``timeout`` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.cmd} of job {self.job!r}: no outcome within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._reply


class Settler:
    """One client's settlements in flight and the connections to the holders."""

    def __init__(self, client):
        self._client = client
        self._queue = collections.deque()  # (holder, cmd, fields, settlement) not sent yet
        self._wake = threading.Event()
        self._channels = {}  # holder node name -> ControlChannel
        self._awaited = {}  # (holder, request id) -> (settlement, deadline)
        self._stopping = False
        self._finished = threading.Event()
        self._started = False
        self.sent = self.confirmed = self.refused = self.unanswered = 0

    def submit(self, holder, cmd, fields):
        settlement = Settlement(cmd, fields.get("job"))
        self._queue.append((holder, cmd, fields, settlement))
        if not self._started:
            self._started = True
            start_background(self._run, f"mesh-settle-{self._client.origin}")
        self._wake.set()
        return settlement

    def stop(self):
        """Send what is queued and wait up to CLOSE_GRACE for the answers."""
        if not self._started:
            return
        self._stopping = True
        self._wake.set()
        self._finished.wait(CLOSE_GRACE + self._client.timeout)

    def counters(self):
        return {"sent": self.sent, "confirmed": self.confirmed, "refused": self.refused,
                "unanswered": self.unanswered, "awaited": len(self._awaited)}

    def _run(self):
        grace_end = None
        try:
            while True:
                self._wake.wait(POLL_SECONDS if self._awaited else 0.5)
                self._wake.clear()
                while self._queue:
                    self._send(*self._queue.popleft())
                self._collect()
                now = time.monotonic()
                self._expire(now)
                if self._stopping or self._client.closed:
                    grace_end = grace_end or now + CLOSE_GRACE
                    if not self._queue and (not self._awaited or now >= grace_end):
                        return
        finally:
            for settlement, _ in self._awaited.values():
                settlement._finish(error=TimeoutError(f"{settlement.cmd}: the client closed before an answer"))
            for channel in self._channels.values():
                channel.close()
            self._finished.set()

    def _send(self, holder, cmd, fields, settlement):
        try:
            channel = self._channel(holder)
            request_id = channel.send(cmd, **fields)
        except (ControlError, TimeoutError) as exc:  # not in the mesh, or its connection is full
            self._settled(settlement, error=exc)
            return
        self.sent += 1
        self._awaited[(holder, request_id)] = (settlement, time.monotonic() + self._client.timeout)

    def _channel(self, holder):
        channel = self._channels.get(holder)
        if channel is not None:
            return channel
        client = self._client
        if holder == client.node:
            address = client.control.address
        else:
            records = {r["name"]: r for r in client.control.request("peers")["peers"]}
            if holder not in records:
                raise ControlError("unknown_node", f"node {holder!r}, which holds the job, is not in the mesh now")
            address = records[holder]["control"]
        channel = self._channels[holder] = client.control_channel(address)
        return channel

    def _collect(self):
        for holder, channel in list(self._channels.items()):
            for reply in channel.replies():
                entry = self._awaited.pop((holder, reply.get("id")), None)
                if entry is None:
                    continue  # answered after we gave up on it
                try:
                    self._settled(entry[0], reply=outcome(reply))
                except ControlError as exc:
                    self._settled(entry[0], error=exc)

    def _expire(self, now):
        silent = set()
        for key, (settlement, deadline) in list(self._awaited.items()):
            if deadline < now:
                del self._awaited[key]
                silent.add(key[0])
                self._settled(settlement, error=TimeoutError(
                    f"node {key[0]!r} did not answer {settlement.cmd!r} within {self._client.timeout} s"))
        for holder in silent:  # made again at the next settlement, after asking membership
            channel = self._channels.pop(holder, None)
            if channel is not None:
                channel.close()

    def _settled(self, settlement, reply=None, error=None):
        if error is None:
            self.confirmed += 1
        elif isinstance(error, TimeoutError):
            self.unanswered += 1
        else:
            self.refused += 1
        if error is not None:
            log.info("%s of job %r: %s", settlement.cmd, settlement.job, error)
        settlement._finish(reply, error)
