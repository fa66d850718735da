"""Settling jobs: acknowledgements and extensions sent to the holding node without waiting.

``client.ack(message)`` and ``client.extend(message, seconds)`` hand the
request to this client's :class:`Settler` and return at once with a
:class:`Settlement`. The settler's worker (a thread, or a greenlet under
gevent) sends it on a connection of its own to the node named in the job's
``h`` header and matches the replies as they arrive. A worker is therefore
never held up by the holder: a node that is slow or gone costs the worker
nothing, and the jobs it took from other nodes go on at its own pace
(docs/QUEUES.md, "When the holding node dies").

**A holder that is gone** (not in the membership: ``unknown_node``, known
at once; or silent for the client's timeout: its connection is then dropped
and made again at the next request, asking the membership first) may have
died for good, its jobs adopted by its successor (``--job-replicas``), which
the worker does not know; or it may be restarting on its ``--data-dir``.
Either holds the job for this member until its deadline, so the settler
tries again while the job's group deadline (from the ``ack``) lasts: it asks
every node the membership lists (the client's own node included, and the
holder again once it is back) at once, RETRY_FIRST seconds later and then
twice as long each time, at most RETRY_MOST; a job id is unique, so at most
one node confirms and the others answer ``unknown_job``
(docs/PROTOCOL.md 7.7, "Acknowledging a job whose holder is gone").

Who wants the outcome waits for it: ``client.ack(m).result(timeout)``
returns the reply (from the holder, or from the node that holds the job
now) or raises ControlError (``unknown_job``: the holder answered that it
does not hold the job for this member; ``unknown_node``: the holder was not
in the membership, and no node confirmed before the deadline) or
TimeoutError (the holder did not answer, and no node confirmed). Outcomes
nobody waited for are counted in ``client.counters()["settled"]``.
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
RETRY_FIRST, RETRY_MOST = 0.5, 8.0  # the pauses between the rounds that ask every node
PEERS_SECONDS = 0.5  # how long one answer of the membership serves


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


class _Pending:
    """One settlement under way: where it was asked in this round and what the holder said."""

    __slots__ = ("holder", "cmd", "fields", "settlement", "until", "rounds", "asked", "holder_error")

    def __init__(self, holder, cmd, fields, settlement, until):
        self.holder, self.cmd, self.fields, self.settlement, self.until = holder, cmd, fields, settlement, until
        self.rounds = 0  # rounds sent; after the first, every node is asked
        self.asked = 0  # requests of this round not answered yet
        self.holder_error = None  # the holder's refusal or silence in this round


class Settler:
    """One client's settlements in flight and the connections to the holders."""

    def __init__(self, client):
        self._client = client
        self._queue = collections.deque()  # _Pending due now
        self._later = []  # (when, _Pending) to ask again
        self._wake = threading.Event()
        self._channels = {}  # node name -> ControlChannel
        self._awaited = {}  # (channel, request id) -> (_Pending, node, deadline)
        self._peers, self._peers_at = {}, -PEERS_SECONDS  # name -> control address, and when asked
        self._stopping = False
        self._finished = threading.Event()
        self._started = False
        self.sent = self.confirmed = self.refused = self.unanswered = self.rerouted = 0

    def submit(self, holder, cmd, fields, retry_for=0.0):
        """Send ``cmd`` to ``holder``; while it is gone, ask every node for ``retry_for`` seconds."""
        settlement = Settlement(cmd, fields.get("job"))
        self._queue.append(_Pending(holder, cmd, fields, settlement, time.monotonic() + retry_for))
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
                "unanswered": self.unanswered, "rerouted": self.rerouted,
                "awaited": len({id(entry[0]) for entry in list(self._awaited.values())}), "retrying": len(self._later)}

    def _run(self):
        grace_end = None
        try:
            while True:
                self._wake.wait(0 if self._queue else POLL_SECONDS if self._awaited or self._later else 0.5)
                self._wake.clear()
                now = time.monotonic()
                if self._stopping or self._client.closed:
                    for _, pending in self._later:  # no more rounds: the last outcome stands
                        self._give_up(pending)
                    self._later = []
                else:
                    self._queue.extend(pending for when, pending in self._later if when <= now)
                    self._later = [(when, pending) for when, pending in self._later if when > now]
                while self._queue:
                    self._ask(self._queue.popleft())
                self._collect()
                self._expire(time.monotonic())
                if self._stopping or self._client.closed:
                    grace_end = grace_end or now + CLOSE_GRACE
                    if not self._queue and (not self._awaited or now >= grace_end):
                        return
        finally:
            for pending, _, _ in list(self._awaited.values()):
                if not pending.settlement.done():
                    pending.settlement._finish(error=TimeoutError(
                        f"{pending.cmd}: the client closed before an answer"))
            for channel in self._channels.values():
                channel.close()
            self._finished.set()

    def _ask(self, pending):
        """One round: the holder, and after the first round every node the membership lists."""
        pending.rounds += 1
        pending.holder_error = None
        targets = [pending.holder]
        if pending.rounds > 1:
            try:
                targets += sorted(set(self._members()) - {pending.holder})
            except (ControlError, TimeoutError) as exc:  # the client's own node does not answer
                log.info("%s of job %r: membership unknown (%s)", pending.cmd, pending.settlement.job, exc)
        deadline = time.monotonic() + self._client.timeout
        for node in targets:
            try:
                channel = self._channel(node)
                request_id = channel.send(pending.cmd, **pending.fields)
            except (ControlError, TimeoutError) as exc:  # not in the mesh, or its connection is full
                if node == pending.holder:
                    pending.holder_error = exc
                continue
            self.sent += 1
            pending.asked += 1
            self._awaited[(channel, request_id)] = (pending, node, deadline)
        if not pending.asked:
            self._round_over(pending)

    def _answered(self, pending, node, reply=None, error=None):
        pending.asked -= 1
        if pending.settlement.done():
            return  # another node confirmed it in this round
        if error is None:
            self.rerouted += node != pending.holder
            self._settled(pending, reply=reply)
            return
        if node == pending.holder:
            pending.holder_error = error
        if not pending.asked:
            self._round_over(pending)

    def _round_over(self, pending):
        """No node confirmed: the holder's answer stands, unless it is gone and time is left."""
        error = pending.holder_error
        gone = error is None or isinstance(error, TimeoutError) or error.code == "unknown_node"
        now = time.monotonic()
        if not gone or now >= pending.until or self._stopping:
            self._give_up(pending)
        elif pending.rounds == 1:
            self._queue.append(pending)  # the holder is gone: ask every node now
        else:
            self._later.append((now + min(RETRY_FIRST * 2 ** (pending.rounds - 2), RETRY_MOST), pending))

    def _give_up(self, pending):
        self._settled(pending, error=pending.holder_error or ControlError(
            "unknown_job", f"no node holds job {pending.settlement.job!r} for this member"))

    def _members(self):
        """The membership as the client's node lists it (name -> control address), this node included."""
        now = time.monotonic()
        if now - self._peers_at >= PEERS_SECONDS:
            client = self._client
            self._peers = {r["name"]: r["control"] for r in client.control.request("peers")["peers"]}
            self._peers[client.node] = client.control.address
            self._peers_at = now
        return self._peers

    def _channel(self, node):
        channel = self._channels.get(node)
        if channel is not None:
            return channel
        address = self._members().get(node)
        if address is None:
            raise ControlError("unknown_node", f"node {node!r}, which holds the job, is not in the mesh now")
        channel = self._channels[node] = self._client.control_channel(address)
        return channel

    def _collect(self):
        for node, channel in list(self._channels.items()):
            for reply in channel.replies():
                entry = self._awaited.pop((channel, reply.get("id")), None)
                if entry is None:
                    continue  # answered after we gave up on it
                try:
                    self._answered(entry[0], node, reply=outcome(reply))
                except ControlError as exc:
                    self._answered(entry[0], node, error=exc)

    def _expire(self, now):
        silent = {channel for (channel, _), (_, _, deadline) in self._awaited.items() if deadline < now}
        for node, channel in list(self._channels.items()):
            if channel in silent:  # made again at the next request, after asking membership
                del self._channels[node]
                channel.close()
                self._peers_at = -PEERS_SECONDS
        for key, (pending, node, _) in list(self._awaited.items()):
            if key[0] in silent:  # what it was asked will not be answered on a closed connection
                del self._awaited[key]
                self._answered(pending, node, error=TimeoutError(
                    f"node {node!r} did not answer {pending.cmd!r} within {self._client.timeout} s"))

    def _settled(self, pending, reply=None, error=None):
        settlement = pending.settlement
        if error is None:
            self.confirmed += 1
        elif isinstance(error, TimeoutError):
            self.unanswered += 1
        else:
            self.refused += 1
        if error is not None:
            log.info("%s of job %r: %s", settlement.cmd, settlement.job, error)
        settlement._finish(reply, error)
