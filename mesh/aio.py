"""The asyncio client: the threaded client's parts, read and awaited from an event loop.

``mesh.aio.Client`` has the names of :class:`mesh.Client` as coroutines
(``connect``, ``subscribe``, ``request``, ``respond``, ``serve``, ``ack``,
``flush``, ``close``) and subscriptions to ``async for``; ``publish`` never
waits, so it is a plain method, like ``StreamWriter.write``. It wraps
a ``mesh.Client`` and shares all of its code: publishing is the same
non-blocking call (mesh/publisher.py: batches, marks, backlog), receiving
is the same drain of the same SUB socket (mesh/receiver.py) into the same
subscriptions (gaps, positions, recovery), done by **one task per client**
that sleeps on the socket's descriptor with ``loop.add_reader``; waiting
coroutines are woken with asyncio events. What is rare and may wait on the
network (the first ``hello``, joining a queue group, a recovery from
history, acknowledging a job, presence) runs the threaded client's own call
in a worker thread (``asyncio.to_thread``), so the loop never blocks. The
wrapped client's background work (housekeeping, the node watch with
reconnects and ZooKeeper failover, queue-group heartbeats) runs on its
threads, as in a threaded program.

A client of this module is read by its event loop only: make it, and use it,
from one loop, and close it (its reader task runs until then).
"""

import asyncio
import itertools
import logging

import zmq

from . import client as threaded
from .requests import (INTEREST_SETTLE_SECONDS, REPLY_INTEREST_SECONDS, NoResponders, RequestTimeout,
                       inbox_prefix, reply_number, reply_or_raise, response)

log = logging.getLogger("mesh.aio")

RECHECK_SECONDS = 0.25  # a hungry reader looks again for a socket replaced by another thread (a failover)
INTEREST_POLL_SECONDS = 0.005


class Subscription:
    """An awaitable view of a :class:`mesh.subscription.Subscription`:
    ``await get(timeout)``, ``await take(limit)``, ``async for``; its counters
    (``received``, ``gaps``, ``dropped``, ``pending``), ``position`` and
    ``recovery`` are the wrapped subscription's."""

    def __init__(self, client, sub):
        self._client = client
        self.sync = sub

    def __getattr__(self, name):  # pattern, gaps, received, dropped, pending, position, recovery, ...
        return getattr(self.sync, name)

    async def get(self, timeout=None):
        sub = self.sync
        if sub.inbox:  # the hot path: no further coroutine per message
            return sub.pop_waiting()
        if self._client._reader.read_now(sub):  # the socket held more: read here, not by the reader task
            await asyncio.sleep(0)  # one turn of the loop per slice read: a busy socket starves no task
            if sub.inbox:  # (another coroutine of this subscription may have taken it meanwhile)
                return sub.pop_waiting()
        return await self._wait(timeout)

    async def _wait(self, timeout):
        """The next message once the reader has queued one."""
        sub = self.sync
        event = self._client._reader.waiting_for(sub)
        try:
            async with asyncio.timeout(timeout):
                while not sub.pending:
                    if sub.closed:
                        raise RuntimeError("subscription is closed")
                    event.clear()
                    await event.wait()
        except TimeoutError:
            raise TimeoutError(f"no message on {sub.pattern.text!r} within {timeout} s") from None
        finally:
            self._client._reader.done_waiting(sub)
        return sub.poll()

    async def take(self, limit=1024, timeout=None):
        """Every message waiting (at most ``limit``), at least one."""
        batch = [await self.get(timeout)]
        batch.extend(self.sync.take_waiting(limit - 1))
        return batch

    def __aiter__(self):
        return self

    async def __anext__(self):
        sub = self.sync
        if sub.inbox:  # the hot path: get() written out (a coroutine less per message)
            return sub.pop_waiting()
        try:
            return await self._wait(None)
        except RuntimeError:
            if self.sync.closed:
                raise StopAsyncIteration from None
            raise

    async def unsubscribe(self):
        sub = self.sync
        if sub.on_unsubscribe is not None:  # a queue group: leaving asks the node
            await asyncio.to_thread(sub.unsubscribe)
        else:
            sub.unsubscribe()
        self._client._reader.wake(sub)


class _Reader:
    """The one task that reads a client's SUB socket for every subscription."""

    def __init__(self, receiver):
        self.receiver = receiver
        self._signal = asyncio.Event()
        self._waiting = {}  # Subscription -> [asyncio.Event, coroutines waiting on it]
        self._watched = None  # (socket, fd) whose readability wakes the reader task, while someone is hungry
        self._task = asyncio.get_running_loop().create_task(self._run())

    def waiting_for(self, sub):
        entry = self._waiting.get(sub)
        if entry is None:
            entry = self._waiting[sub] = [asyncio.Event(), 0]
        entry[1] += 1
        self._signal.set()  # a reader is hungry: read for it
        return entry[0]

    def done_waiting(self, sub):
        entry = self._waiting.get(sub)
        if entry is not None:
            entry[1] -= 1
            if not entry[1]:
                del self._waiting[sub]

    def wake(self, sub=None):
        """Wake the reader (a new subscription) and the waiters of ``sub``."""
        if sub is not None and sub in self._waiting:
            self._waiting[sub][0].set()
        self._signal.set()

    def wake_all(self):
        for event, _ in self._waiting.values():
            event.set()

    def read_now(self, sub):
        """Read one slice of what the socket holds here, in the caller's turn,
        instead of waiting for the reader task to be scheduled; True when
        ``sub`` then has a message. Reading consumed the socket's
        edge-triggered readiness, so the reader task is woken when the socket
        still holds more, is new (it must watch it), or changed under us."""
        try:
            visit = self.receiver.visit(True)
            if visit is None:  # another thread leads
                return False
            sock, drained, more = visit
            if drained and sock is not None:
                more = bool(sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)
        except zmq.ZMQError:  # replaced or closed by another thread: the reader task sorts it out
            self._signal.set()
            return False
        if more or sock is not (self._watched and self._watched[0]):
            self._signal.set()
        if drained:
            self._ready()
        return bool(sub.inbox)

    def _ready(self):
        for sub, (event, _) in list(self._waiting.items()):
            if sub.pending or sub.closed:
                event.set()

    def _hungry(self):
        """Some coroutine waits on a subscription with nothing queued: read for it.
        Nobody waiting, nothing is read: messages wait in the socket (and its
        high-water mark) as in the threaded client, not in unbounded queues."""
        return any(not sub.pending and not sub.closed for sub in self._waiting)

    async def _run(self):
        receiver, loop = self.receiver, asyncio.get_running_loop()
        loop.add_reader(receiver.wake_fd, self._signal.set)  # changes queued by other threads
        try:
            while not receiver.closed:
                self._signal.clear()
                receiver.clear_wake()  # before looking at the queued changes: a wake-up after this is not lost
                hungry, drained, more = self._hungry(), 0, False
                try:  # the receiver touches the socket only with the lead: another thread may move or close it
                    visit = receiver.visit(hungry)
                    if visit is not None:
                        sock, drained, more = visit
                        watched = self._watched
                        if (watched and watched[0]) is not sock:  # made, moved, or nobody waits
                            if watched is not None:
                                loop.remove_reader(watched[1])
                            watched = self._watched = (sock, sock.getsockopt(zmq.FD)) if sock is not None else None
                            if watched is not None:
                                loop.add_reader(watched[1], self._signal.set)
                except zmq.ZMQError as exc:
                    if not receiver.closed:
                        log.debug("the socket changed under the reader (%s); reading again", exc)
                    drained, more = 0, not receiver.closed
                self._ready()
                if drained:
                    await asyncio.sleep(0)  # let the readers run before the next slice
                    continue
                if more:
                    continue
                try:
                    async with asyncio.timeout(RECHECK_SECONDS if hungry else None):
                        await self._signal.wait()
                except TimeoutError:
                    pass
        except OSError as exc:
            if not receiver.closed:
                log.warning("the reader of a client stopped: %s", exc)
        finally:
            for fd in (receiver.wake_fd, *(() if self._watched is None else (self._watched[1],))):
                try:
                    loop.remove_reader(fd)
                except (ValueError, OSError):
                    pass
            self.wake_all()

    async def stop(self):
        self._signal.set()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


class Client:
    """An asyncio client of one node; make it with ``await Client.connect(address)``
    or ``await Client.from_zookeeper(hosts)``. ``options`` are mesh.Client's."""

    def __init__(self, sync):
        self.sync = sync
        # publish(subject, data): returns the sequence number. A plain method, like
        # ``StreamWriter.write``: it never waits (batches go out from the client's
        # housekeeper), and a coroutine per message would cost a third of the
        # throughput (docs/CLIENT.md). ``await flush()`` sends what is pending now.
        # The publisher's own method: no call frame of either client per message
        # (after a fork the class's ``publish`` below runs instead, and reopens).
        threaded.bind_publish(self, sync)
        self._reader = _Reader(sync.receiver)
        self._ids = itertools.count(1)
        self._pending = {}  # n -> Future of a reply
        self._inbox = None
        self._inbox_task = None
        self._tasks = set()  # callback and serve loops
        self.prefix = inbox_prefix()

    @classmethod
    async def connect(cls, address, **options):
        return cls(await asyncio.to_thread(threaded.Client, address, **options))

    @classmethod
    async def from_zookeeper(cls, hosts, mesh="default", **options):
        """A client on a random node of ``mesh``, moving to another when it
        leaves (mesh.Client.from_zookeeper)."""
        return cls(await asyncio.to_thread(threaded.Client.from_zookeeper, hosts, mesh, **options))

    def __getattr__(self, name):  # node, origin, address, connected, closed, counters, has_interest...
        return getattr(self.sync, name)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    # -- publishing -------------------------------------------------------

    def publish(self, subject, data, headers=None):
        """mesh.Client.publish: never waits; returns the sequence number."""
        return self.sync.publish(subject, data, headers)

    async def flush(self):
        self.sync.flush()

    async def wait_for_interest(self, subject, timeout=5.0, history=False):
        """True once a subscriber somewhere in the mesh covers ``subject``
        (``history``: as ``mesh.Client.wait_for_interest``)."""
        try:
            async with asyncio.timeout(timeout):
                while not self.sync.has_interest(subject, history):
                    await asyncio.sleep(INTEREST_POLL_SECONDS)
        except TimeoutError:
            return False
        return True

    # -- subscribing ------------------------------------------------------

    async def subscribe(self, pattern, callback=None, **options):
        """mesh.Client.subscribe's arguments (``since``, ``recover``, ``queue``,
        ``capacity``, ``ack_deadline``...). Without ``callback``, a
        :class:`Subscription`; with one (a coroutine function or a plain
        one), a task calls it for each message."""
        if options.get("queue") is not None or options.get("since") is not None:
            sub = await asyncio.to_thread(self.sync.subscribe, pattern, **options)
        else:
            sub = self.sync.subscribe(pattern, **options)
        self._reader.wake()
        subscription = Subscription(self, sub)
        if callback is not None:
            self._spawn(self._call_back(subscription, callback))
        return subscription

    async def _call_back(self, subscription, callback):
        async for message in subscription:
            try:
                result = callback(message)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("callback of %s failed", subscription.pattern.text)

    def _spawn(self, coroutine):
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def ack(self, message):
        """Acknowledge a job without waiting for its holder: a Settlement (mesh/settle.py)."""
        return self.sync.ack(message)

    async def extend(self, message, seconds):
        """Give a job ``seconds`` more from now, without waiting for its holder: a Settlement."""
        return self.sync.extend(message, seconds)

    # -- request/reply (mesh/requests.py) ----------------------------------

    async def request(self, subject, data, timeout=5.0):
        """The reply (a Message) to ``data`` on ``subject``; NoResponders at
        once when no subscriber covers it, RequestTimeout, RemoteError."""
        if not await self.wait_for_interest(subject, min(timeout, INTEREST_SETTLE_SECONDS)):
            raise NoResponders(f"no subscriber in the mesh covers {subject!r}")
        await self._open_inbox()
        n = next(self._ids)
        future = self._pending[n] = asyncio.get_running_loop().create_future()
        try:
            self.sync.publish(subject, data, {"reply": f"{self.prefix}.{n}"})
            async with asyncio.timeout(timeout):
                reply = await future
        except TimeoutError:
            raise RequestTimeout(f"no reply on {subject!r} within {timeout} s") from None
        finally:
            del self._pending[n]
        return reply_or_raise(reply)

    async def _open_inbox(self):
        if self._inbox is None:
            self._inbox = self.sync.subscribe(f"{self.prefix}.>")
            self._reader.wake()
            self._inbox_task = self._spawn(self._replies(Subscription(self, self._inbox)))
            deadline = asyncio.get_running_loop().time() + self.sync.timeout
            while not self.sync.has_subscription(self._inbox.pattern.text):
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.001)

    async def _replies(self, inbox):
        async for message in inbox:
            future = self._pending.get(reply_number(message.subject))
            if future is not None and not future.done():
                future.set_result(message)

    async def respond(self, message, data=None, error=None):
        """Answer a request (``message.reply``) with ``data``, or an ``error`` text."""
        reply, payload, headers = response(message, data, error)
        await self.wait_for_interest(reply, REPLY_INTEREST_SECONDS)
        self.sync.publish(reply, payload, headers)

    async def serve(self, pattern, handler, queue=None):
        """Answer every request on ``pattern`` with ``await handler(message)``
        (or its plain result); a handler that raises sends a RemoteError."""
        subscription = await self.subscribe(pattern, queue=queue)

        async def answer(message):
            if not message.reply:
                return
            try:
                result = handler(message)
                if asyncio.iscoroutine(result):
                    result = await result
            except Exception as exc:
                await self.respond(message, error=f"{type(exc).__name__}: {exc}")
                return
            try:
                await self.respond(message, result)
            except (TypeError, ValueError) as exc:
                await self.respond(message, error=f"the reply could not be sent: {exc}")

        self._spawn(self._call_back(subscription, answer))
        return subscription

    # -- the rest ---------------------------------------------------------

    async def presence(self, channel, limit=1000):
        return await asyncio.to_thread(self.sync.presence, channel, limit)

    async def channels(self, limit=1000):
        return await asyncio.to_thread(self.sync.channels, limit)

    async def close(self):
        """Send what is pending, end every subscription and task, close."""
        await self._reader.stop()  # first: it lets go of the descriptors while they are open
        await asyncio.to_thread(self.sync.close)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RuntimeError("client is closed"))
        self._reader.wake_all()  # waiters see their subscriptions closed
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
