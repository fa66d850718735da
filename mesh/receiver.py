"""The receive side of a client: one SUB socket for all its subscriptions.

Every subscription of a client shares one SUB socket (connected to the
node's ``out`` and ``remote``), so a process may hold tens of thousands of
subscriptions on three descriptors. Batches are matched to subscriptions by
subject through a :class:`~mesh.sublist.Sublist` and appended to each
subscription's bounded queue.

Nobody reads in the background: a caller of ``get()`` whose queue is empty
becomes the *leader* (it reads the socket, on its own thread or greenlet, for
every subscription) or, if another caller already leads, a *follower* that
sleeps until the leader hands it messages or leaves. Waiting costs nothing:
the leader sleeps on the socket and on a wake-up pipe, followers on an Event.
Changes to the socket (subscribe, unsubscribe, move, close) are queued and
applied by whoever holds the lead, since a ZeroMQ socket must not be used by
two threads at once. Before a subscription is added, what the socket already
holds goes to the subscriptions that were there: a new one gets only what
arrived after it. Under gevent the leader yields to the hub every
``FAIR_SLICE_SECONDS`` (mesh/concurrency.py).
"""

import collections
import os
import threading
import time

import zmq

from .envelope import MARKS_TOPIC_END, MalformedMessage, Message, decode_batch, decode_marks
from .sublist import Sublist
from .concurrency import SocketOrPipe, wake_up_pipe

READ_BUDGET = 1024  # messages (not batches) decoded per visit before checking on the caller


class Receiver:
    def __init__(self, make_socket, maybe_yield):
        self._make_socket = make_socket  # () -> a SUB socket connected to the node
        self._yield = maybe_yield
        self._sock = None
        self.waiter = None  # a SocketOrPipe for the socket and the wake-up pipe
        self._wake_r, self._wake_w = wake_up_pipe()
        self._sublist = Sublist()
        self._prefixes = collections.Counter()  # ZeroMQ prefix -> subscriptions using it
        self._by_prefix = {}  # ZeroMQ prefix -> set of subscriptions (malformed counts)
        self._lead = threading.Lock()
        self._ops = collections.deque()  # socket changes waiting for the leader
        self._followers = set()
        self.malformed = 0
        self.closed = False
        self._forked = False
        self._pid = os.getpid()

    @property
    def subscriptions(self):
        return self._sublist.count

    @property
    def wake_fd(self):
        """A descriptor that becomes readable when socket changes are queued
        for the leader (``clear_wake`` after waking on it)."""
        return self._wake_r

    def clear_wake(self):
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass

    # -- subscriptions ----------------------------------------------------

    def add(self, sub):
        self._submit(("add", sub))

    def remove(self, sub):
        self._submit(("remove", sub))
        sub.wake()

    def move(self):
        """The client moved to another node: a new socket, the same subscriptions."""
        self._submit(("move", None))

    def _submit(self, op):
        if self._forked:
            return  # the parent's socket: nothing to change from here
        self._ops.append(op)
        if self._lead.acquire(blocking=False):
            try:
                self._apply_ops()
            finally:
                self._lead.release()
        else:
            self._wake_leader()

    def _apply_ops(self):
        """Apply queued socket changes (lead held)."""
        while self._ops:
            kind, sub = self._ops.popleft()
            if kind == "add":
                if sub.closed:
                    continue
                self._drain_all()
                prefix = sub.pattern.prefix
                self._sublist.add(sub.pattern, sub)
                self._by_prefix.setdefault(prefix, set()).add(sub)
                self._socket().setsockopt(zmq.SUBSCRIBE, prefix)
                self._prefixes[prefix] += 1
            elif kind == "remove":
                prefix = sub.pattern.prefix
                holders = self._by_prefix.get(prefix)
                if holders is None or sub not in holders:
                    continue  # removed before it was added: the add was skipped
                holders.discard(sub)
                if not holders:
                    del self._by_prefix[prefix]
                self._sublist.remove(sub.pattern, sub)
                self._sock.setsockopt(zmq.UNSUBSCRIBE, prefix)
                self._prefixes[prefix] -= 1
                if not self._prefixes[prefix]:
                    del self._prefixes[prefix]
            elif kind == "move" and self._sock is not None:
                self._sock.close()
                self._sock = None
                sock = self._socket()
                for prefix, count in self._prefixes.items():
                    for _ in range(count):  # libzmq counts subscriptions per prefix
                        sock.setsockopt(zmq.SUBSCRIBE, prefix)

    def _drain_all(self):
        """Hand out everything queued in the socket now (lead held), before a
        subscription is added: what arrived before it was subscribed is not
        its. Else a queue nobody read since the last subscription on a prefix
        went away would greet the next one with old messages as if live, and
        a jump to the live ones as gaps."""
        if self._sock is None:
            return
        while self._drain():
            if self._yield is not None:
                self._yield()

    def _socket(self):
        if self._sock is None:
            self._sock = self._make_socket()
            self.waiter = SocketOrPipe(self._sock, self._wake_r)
        return self._sock

    # -- reading ----------------------------------------------------------

    def wait(self, sub, timeout):
        """The next message of ``sub``, reading for everyone while it waits."""
        if self._pid != os.getpid() and not self._forked:
            self.forked()  # a subscription used in a forked child: never read the parent's socket
        try:
            return self._wait(sub, timeout)
        finally:
            # Leaving (a message, closed, timed out) perhaps just after being handed
            # the lead: if nobody leads now, the followers left must not sleep on.
            if self._followers and not self._lead.locked():
                self._hand_off()

    def _wait(self, sub, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if sub.inbox:
                return sub.pop_waiting()
            if sub.closed or self.closed:
                if self._forked:
                    raise RuntimeError("this subscription was made before os.fork(): ZeroMQ sockets do not "
                                       "cross a fork; subscribe again in this process")
                raise RuntimeError("subscription is closed")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"no message on {sub.pattern.text!r} within {timeout} s")
            event = sub.wait_event
            if event is None:
                event = sub.wait_event = threading.Event()
            event.clear()
            sub.waiter = event
            self._followers.add(sub)  # before trying the lead: a leader leaving wakes us
            try:
                if self._lead.acquire(blocking=False):
                    self._followers.discard(sub)
                    try:
                        self._read_for(sub, deadline)
                    finally:
                        self._lead.release()
                        self._after_leading()
                elif not sub.inbox and not sub.closed:
                    event.wait(remaining)
            finally:
                sub.waiter = None
                self._followers.discard(sub)

    def _after_leading(self):
        if self._ops and self._lead.acquire(blocking=False):  # queued while we were leaving
            try:
                self._apply_ops()
            finally:
                self._lead.release()
        self._hand_off()

    def _hand_off(self):
        """Wake one follower who has nothing yet: it will take the lead."""
        for follower in list(self._followers):
            if not follower.inbox:
                follower.wake()
                return

    def _read_for(self, sub, deadline):
        """Lead: read and dispatch until ``sub`` has a message, is closed, or time is up."""
        while True:
            if self._ops:
                self._apply_ops()
            if sub.inbox or sub.closed or self.closed or self._sock is None:
                return
            if self._drain():
                if self._yield is not None:
                    self._yield()
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            self.waiter.wait(remaining)

    def visit(self, reading):
        """One pass without waiting, for a reader that sleeps elsewhere (an
        event loop, mesh/aio.py): unless another caller leads, take the lead,
        apply the queued socket changes and, when ``reading``, dispatch what
        the socket holds (about READ_BUDGET messages). Returns None if
        another leads, else ``(socket, read, more)``: the socket to watch for
        readability (None when not reading or closed), the ZeroMQ messages
        read, and whether nothing was read though the socket holds more,
        which its edge-triggered descriptor will not signal again."""
        if not self._lead.acquire(blocking=False):
            return None
        try:
            if self._ops:
                self._apply_ops()
            sock = self._sock if reading and not self.closed else None
            if sock is None:
                return None, 0, False
            read = self._drain()
            return sock, read, not read and bool(sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)
        finally:
            self._lead.release()

    def _wake_leader(self):
        if self._wake_w < 0:
            return  # closed
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full: a wake-up is pending

    def _drain(self):
        """Read what has arrived (about READ_BUDGET messages) and dispatch it;
        returns how many ZeroMQ messages were read."""
        sock = self._sock
        now = time.monotonic()
        count = decoded = 0
        while decoded < READ_BUDGET:
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            count += 1
            topic = frame.bytes
            if not frame.more:
                self._count_malformed(topic)
                continue
            body = sock.recv(zmq.NOBLOCK, copy=False)
            if body.more:
                while sock.recv(zmq.NOBLOCK, copy=False).more:
                    pass
                self._count_malformed(topic)
                continue
            decoded += self._dispatch(topic, body, now)
        return count

    def _dispatch(self, topic, body, now):
        """Hand one ZeroMQ message to the subscriptions it is for; returns the
        number of messages it carried (1 for marks and anything skipped)."""
        last = topic[-1:]
        if last == b".":
            try:
                subject = topic[:-1].decode("utf-8")
            except UnicodeDecodeError:
                self._count_malformed(topic)
                return 1
            subs = self._sublist.match(subject)
            if not subs:
                return 1  # the prefix let it through, no pattern matches: skip
            try:
                origin, epoch, seq, ts, payloads, headers = decode_batch(body, with_headers=True)
            except MalformedMessage:  # counted where the pattern matched (PROTOCOL.md 5)
                self.malformed += 1
                for sub in subs:
                    sub.malformed += 1
                return 1
            if headers is None:
                messages = Message.numbered(subject, payloads, origin, seq, ts, epoch)
            elif "q" in headers:  # a queue-group delivery: the message as its publisher sent it
                messages = [Message(headers.get("s"), payloads[0], headers.get("o"), headers.get("n"), ts,
                                    headers.get("e", 0), headers=headers)]
            else:  # a request or a reply: one message
                messages = [Message(subject, payloads[0], origin, seq, ts, epoch, headers=headers)]
            key = (origin, subject)
            for sub in subs:
                sub.accept(key, epoch, seq, messages, now)
            return len(messages)
        elif last == MARKS_TOPIC_END:
            try:
                origin, entries = decode_marks(body)
            except MalformedMessage:
                self._count_malformed(topic)
                return 1
            match = self._sublist.match
            for subject, epoch, seq in entries:
                for sub in match(subject):
                    sub.apply_mark((origin, subject), epoch, seq, now)
            return 1 + len(entries) // 8  # applying marks is cheaper than making messages
        self._count_malformed(topic)
        return 1

    def _count_malformed(self, topic):
        """Count a bad message at every subscription whose prefix admitted it."""
        self.malformed += 1
        end = 0
        while end >= 0:
            for sub in self._by_prefix.get(topic[:end], ()):
                sub.malformed += 1
            end = topic.find(b".", end) + 1 or -1

    # -- closing ----------------------------------------------------------

    def forked(self):
        """We are a forked child: the socket is the parent's; never touch it."""
        self._forked = self.closed = True
        self._sock = None

    def close(self):
        """Wake every reader (they get RuntimeError), then close the socket."""
        if self._forked:
            return
        self.closed = True
        for holders in list(self._by_prefix.values()):
            for sub in list(holders):
                sub.closed = True
        for kind, sub in list(self._ops):
            if sub is not None:
                sub.closed = True
        for sub in list(self._followers):
            sub.wake()
        self._wake_leader()
        with self._lead:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            wake_w, self._wake_w = self._wake_w, -1
            os.close(wake_w)
            os.close(self._wake_r)
