"""The Python client: publish and subscribe through one meshnode.

``Client("HOST:PORT")`` asks the node's control socket where its data sockets
are, then publishes through one XPUB socket connected to the node's
``ingress`` (mesh/publisher.py: batching, marks, interest) and receives
through one SUB socket connected to the node's ``out`` (local publishers) and
``remote`` (publishers on peers), shared by all its subscriptions
(mesh/receiver.py). Reading and decoding happen on the caller's own thread or
greenlet; one housekeeper (a thread, or a greenlet under gevent) sends aged
batches and marks and forgets idle streams, and sleeps when there is nothing
to do. A watch (mesh/watch.py) notices when the node goes away or restarts
and attaches the client again.
"""

import functools
import logging
import os
import socket
import threading
import time
import uuid
import weakref

import zmq

from .context import shared_context
from .control import ControlChannel
from .curve import apply_client
from .envelope import PROTOCOL_VERSION, BatchEncoder
from .liveness import watch_link
from . import presence as mesh_presence
from .marks import hand_over
from .publisher import DEFAULT_BACKLOG_BYTES, DEFAULT_STREAM_IDLE, Publisher
from .receiver import Receiver
from .recovery import DEFAULT_MAX_REPLAY, HISTORY_TIMEOUT, Position
from .recovery import recover as recover_from_history
from .queues import Membership, Memberships
from .requests import Requests
from .subjects import Pattern
from .subscription import DEFAULT_PENDING_LIMIT, Subscription
from .concurrency import fair_yielder, pick_waiter, start_background
from .watch import BACKLOG_GRACE, NodeWatch

log = logging.getLogger("mesh.client")

DEFAULT_HWM = 100_000


class Client:
    """A connection to one node. ``publish`` is thread-safe; each Subscription
    is read by one thread (or greenlet) at a time.

    ``stream_idle``: seconds after which a stream (a publisher's subject) that
    saw no message is forgotten, here and at subscribers (docs/PROTOCOL.md 4.5).
    ``pending_limit``: messages a subscription holds for its reader before it
    drops (counted in ``Subscription.dropped``).
    ``backlog_bytes``: how much a client holds of what it publishes while its
    node is unreachable (mesh/watch.py); past it ``publish`` raises
    ``mesh.Disconnected``.
    ``on_disconnect(client)``, ``on_reconnect(client)``: called (from the
    watch's thread or greenlet) when the node stops answering and when the
    client is attached again.
    """

    def __init__(self, address, *, name=None, timeout=5.0, hwm=DEFAULT_HWM, curve=None,
                 stream_idle=DEFAULT_STREAM_IDLE, pending_limit=DEFAULT_PENDING_LIMIT,
                 backlog_bytes=DEFAULT_BACKLOG_BYTES, on_disconnect=None, on_reconnect=None):
        if not stream_idle > 0:
            raise ValueError("stream_idle must be a positive number of seconds")
        self._context = shared_context(address)
        self._wait = pick_waiter()
        self._hwm = hwm
        self._timeout = timeout
        self._curve = curve  # mesh.CurveKeys when the mesh uses CurveZMQ
        self.stream_idle = stream_idle
        self.pending_limit = pending_limit
        self.backlog_bytes = backlog_bytes
        self.on_disconnect = on_disconnect
        self.on_reconnect = on_reconnect
        self._control, info = self._hello(address)
        self.address = self._control.address
        self._adopt(info)
        self._name = name
        self.failover = None  # the ZooKeeperFailover that moves this client (mesh/failover.py), closed with it
        self.failovers = 0
        self.reconnects = 0
        self.disconnects = 0
        self.connected = True
        self.closed = False
        self._attach_lock = threading.Lock()
        self._recovering = weakref.WeakSet()  # subscriptions made with recover=True
        self._open()

    def _open(self):
        """Sockets, origin and background workers (again in a forked child)."""
        self._pid = os.getpid()
        self.origin = self._name or f"{self.node}/{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self._yield = fair_yielder()
        self._kick = kick = threading.Event()
        self._publisher = Publisher(self._publish_socket(), BatchEncoder(self.origin, self.max_payload),
                                    self.stream_idle, kick, self._yield, self.backlog_bytes)
        bind_publish(self, self)
        self._learn_interest()
        self._receiver = Receiver(self._subscribe_socket, self._yield)
        self._watch = NodeWatch(self)
        self._requests = Requests(self)
        self._memberships = Memberships(self)
        weakref.finalize(self, kick.set)  # a client dropped without close() lets its workers end
        weakref.finalize(self, self._watch.wake)
        start_background(functools.partial(_housekeep, weakref.ref(self), kick), f"mesh-house-{self.origin}")
        start_background(self._watch.run, f"mesh-watch-{self.origin}")

    @classmethod
    def from_zookeeper(cls, hosts, mesh="default", *, group=None, zk_auth=None, zk_timeout=10.0,
                       on_failover=None, **options):
        """A Client on a random node of ``mesh`` (of its ``group`` when given;
        else of the nodes without a group, or of one group taken at random),
        found through ZooKeeper.

        When that node leaves the mesh (its znode goes: at once on a clean stop,
        after its session timeout on a crash) the client moves to another node,
        re-creates its subscriptions there and calls ``on_failover(old, new)``.
        Messages missed meanwhile show up in each ``Subscription.gaps``.
        """
        from .failover import ZooKeeperFailover

        return ZooKeeperFailover.connect(cls, hosts, mesh, group, zk_auth, zk_timeout, on_failover, options)

    @property
    def timeout(self):
        """Seconds a request to the node may take (the ``timeout`` option)."""
        return self._timeout

    @property
    def receiver(self):
        """The receive side shared by this client's subscriptions (mesh/receiver.py),
        for a reader that waits elsewhere (mesh/aio.py)."""
        return self._receiver

    @property
    def publisher(self):
        """The publish side (mesh/publisher.py), for the node watch's held publishes."""
        return self._publisher

    def _hello(self, address):
        control = self.control_channel(address)
        try:
            info = control.request("hello")
            if info.get("protocol") != PROTOCOL_VERSION:
                raise RuntimeError(f"node at {address} speaks data protocol {info.get('protocol')!r}, "
                                   f"this library {PROTOCOL_VERSION}")
        except BaseException:
            control.close()
            raise
        return control, info

    def _adopt(self, info):
        self.node = info["name"]
        self.endpoints = info["endpoints"]
        self.max_payload = info["max_payload"]
        self.instance = info["member"]["instance"]

    def _publish_socket(self):
        sock = watch_link(self._context.socket(zmq.XPUB), binds=False)
        sock.setsockopt(zmq.SNDHWM, self._hwm)
        sock.setsockopt(zmq.LINGER, 2000)
        apply_client(self._curve, sock)
        sock.connect(self.endpoints["ingress"])
        return sock

    def _learn_interest(self):
        """Before the first publish: wait until the node has sent the new
        publish socket the subscriptions it already has, or a message
        published at once would be dropped for want of them (the slow
        joiner, for subscribers that were there first). A throwaway SUB on
        ``out`` subscribes to a prefix no subject can have; its notice comes
        after the node's subscriptions (mesh/publisher.py wait_for_snapshot).
        It begins with 0xff (never in UTF-8): an XSUB sends a new connection
        its subscriptions in byte order, so even when the sentinel got there
        before our connection did, it comes last."""
        sentinel = b"\xffjoined." + self.origin.encode()
        sock = self._context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        apply_client(self._curve, sock)
        try:
            sock.connect(self.endpoints["out"])
            sock.setsockopt(zmq.SUBSCRIBE, sentinel)
            if not self._publisher.wait_for_snapshot(sentinel, self._wait, self._timeout):
                log.warning("node %s did not pass on its subscriptions within %s s: the first publishes "
                            "may miss subscribers", self.node, self._timeout)
        finally:
            sock.close(linger=0)

    def _subscribe_socket(self):
        sock = watch_link(self._context.socket(zmq.SUB), binds=False)
        sock.setsockopt(zmq.RCVHWM, self._hwm)
        # Subscriptions travel out through the send queue, and libzmq drops
        # them silently at its limit (1,000 by default): 5,000 subscriptions
        # made at once lost all but the first ~1,000. Unbounded.
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        apply_client(self._curve, sock)
        sock.connect(self.endpoints["out"])
        sock.connect(self.endpoints["remote"])
        return sock

    def move_to(self, address):
        """Attach to the node at ``address`` (ZooKeeper failover, mesh/failover.py)."""
        control, info = self._hello(address)
        old_control, self._control = self._control, control
        self.address = control.address
        old_control.close()
        self.attach(info)
        self._watch.wake()  # it follows us to the new address

    def attach(self, info):
        """Attach to the node that answered ``info`` (after a restart or a move):
        new data sockets, every subscription re-created, publishes held until
        the interest is back (mesh/watch.py)."""
        recovering = []
        with self._attach_lock:
            for sub in list(self._recovering):
                if not sub.closed and not sub.holding:
                    recovering.append((sub, sub.begin_hold()))  # from now on live messages wait for the replay
            self._publisher.disconnect()
            self._adopt(info)
            self._publisher.replace_socket(self._publish_socket(), self.max_payload)
            self._receiver.move()
            self.connected = True
            self.reconnects += 1
            self._watch.flush_soon()
        for sub, position in recovering:
            try:
                self.wait_for_subscription(sub.pattern.text, self._timeout)
                recover_from_history(self, sub, position, sub.max_replay, sub.history_timeout)
            finally:
                sub.end_hold_if_held()
        self._call(self.on_reconnect)

    def lost_node(self):
        """The node stopped answering: hold publishes until it is back (mesh/watch.py)."""
        with self._attach_lock:
            if not self.connected:
                return
            self.connected = False
            self.disconnects += 1
            self._publisher.disconnect()
        self._call(self.on_disconnect)

    def _call(self, callback):
        if callback is not None:
            try:
                callback(self)
            except Exception:
                log.exception("connection callback %r failed", callback)

    # -- publishing -------------------------------------------------------

    def publish(self, subject, data, headers=None):
        """Publish ``data`` (anything msgpack can carry) on a concrete subject.

        Raises ValueError for an invalid subject, PayloadTooLarge (a ValueError)
        over the node's limit, TypeError for data msgpack cannot encode.
        Returns the message's sequence number on this subject. Messages
        published in quick succession travel in batches; see ``flush``.
        ``headers`` (a dict with str keys, PROTOCOL.md 4.2) sends the message
        in a batch of its own with them; such a publish is not held while the
        node is unreachable (Disconnected).
        """
        # Not on the per-message path: the instance's own ``publish`` is the
        # publisher's (bind_publish). This runs in a forked child until the client
        # reopens, and for what Publisher.after_fork redirects here.
        if self._pid != _pid[0]:
            self._reopen_after_fork()
        return self._publisher.publish(subject, data, headers)

    def ack(self, message):
        """Acknowledge a job (``message.job``): it is done and will not come
        again. Returns at once, before the holding node answers, with a
        Settlement: ``.result(timeout)`` for the answer (mesh/settle.py)."""
        return self._memberships.settle(message, "job_ack")

    def extend(self, message, seconds):
        """Give a job ``seconds`` more from now before it goes to another
        member. Returns at once with a Settlement, as ``ack`` does."""
        return self._memberships.settle(message, "job_extend", seconds=seconds)

    # -- webhooks (nodes/hooks/registry.py, docs/QUEUES.md) --------------------

    def register_hook(self, key, url, secret=None, pattern=None, max_age=None):
        """Have every message on ``pattern`` (default ``hooks.<key>.>``) POSTed
        to ``url``, signed with ``secret`` (``whsec_<base64>``, made for you if
        None; a list during a rotation). Returns the hook, secrets included."""
        fields = {"key": key, "url": url}
        if secret is not None:
            fields["secrets"] = [secret] if isinstance(secret, str) else list(secret)
        if pattern is not None:
            fields["pattern"] = pattern
        if max_age is not None:
            fields["max_age"] = max_age
        return self._control.request("hook_add", **fields)["hook"]

    def unregister_hook(self, key, url):
        self._control.request("hook_rm", key=key, url=url)

    def hooks(self, key=None):
        """The hooks (of ``key``) with this node's delivery counters; no secrets."""
        return self._control.request("hook_ls", **({} if key is None else {"key": key}))["hooks"]

    # -- request/reply (mesh/requests.py) -----------------------------------

    def request(self, subject, data, timeout=5.0):
        """Publish ``data`` as a request on ``subject`` and return the reply
        (a Message; ``.data`` is the answer). Raises NoResponders at once when
        no subscriber in the mesh covers the subject, RequestTimeout when none
        answered within ``timeout`` seconds, RemoteError when the responder failed."""
        return self._requests.request(subject, data, timeout)

    def respond(self, message, data=None, error=None):
        """Answer a request (a message whose ``reply`` is set) with ``data``,
        or with ``error`` (text: the requester gets RemoteError)."""
        self._requests.respond(message, data, error)

    def serve(self, pattern, handler, queue=None):
        """Answer every request on ``pattern`` with ``handler(message)``'s
        return value (a raised exception goes back as RemoteError). With
        ``queue``, as a member of that queue group: each request reaches one
        member. Returns the Subscription; unsubscribe it to stop."""
        return self._requests.serve(pattern, handler, queue)

    def stream_position(self, subject, seq):
        """The Position just after this client's message ``seq`` on
        ``subject`` (what ``publish`` returned): its stream's epoch with it."""
        return Position({(self.origin, subject): (self._publisher.epoch_of(subject) or 0, seq)}, time.time())

    def flush(self):
        """Send what waits in the open batch now (it would go within 0.5 ms anyway)."""
        self._publisher.flush()

    def has_interest(self, subject, history=False):
        """True if some subscriber in the mesh currently covers ``subject``.
        A node's history recorder is no subscriber; with ``history=True`` one
        that records ``subject`` counts too (docs/PROTOCOL.md 6)."""
        return self._publisher.has_interest(subject, history)

    def wait_for_interest(self, subject, timeout=5.0, history=False):
        """Wait until a subscriber somewhere in the mesh covers ``subject``
        (with ``history=True``: or this node's history recorder records it).

        Subscriptions travel to publishers asynchronously (the ZeroMQ
        "slow joiner"); messages published before they arrive are not
        delivered. Returns True once interest is seen, False on timeout.
        """
        deadline = time.monotonic() + timeout
        while not self.has_interest(subject, history):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def has_subscription(self, pattern):
        """True once a subscription to ``pattern`` (this client's, or anyone's)
        has reached this client's node (``wait_for_subscription`` without waiting)."""
        return self._publisher.has_prefix(Pattern(pattern).prefix)

    def wait_for_subscription(self, pattern, timeout=5.0):
        """Wait until a subscription to ``pattern`` (this client's, or anyone's)
        has reached this client's node: from then on a message published
        through this node that matches it is delivered to it. Returns False on
        timeout. (Publishers on other nodes get it once it crossed their link.)"""
        deadline = time.monotonic() + timeout
        while not self.has_subscription(pattern):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    # -- subscribing ------------------------------------------------------

    def subscribe(self, pattern, callback=None, *, pending_limit=None, since=None, recover=False,
                  max_replay=DEFAULT_MAX_REPLAY, history_timeout=HISTORY_TIMEOUT, queue=None, capacity=1000,
                  ack_deadline=None, max_attempts=5):
        """Subscribe to a pattern (``*`` one token, ``>`` the rest).

        Without ``callback``, returns a Subscription to read with ``get()``,
        ``take()`` or iteration. With ``callback``, a reader thread (a greenlet
        under gevent) calls ``callback(message)`` for each message.

        ``since``: a ``Subscription.position`` (or its ``to_json()`` text)
        from before: what was published after it and is still in the mesh's
        history comes first, marked ``replayed``, then live messages, with no
        gap or duplicate between them; ``subscription.recovery`` says whether
        every stream was recovered (docs/HISTORY.md). At most ``max_replay``
        messages. Every node is asked at once and has ``history_timeout``
        seconds to answer each page; one that does not is named in
        ``recovery.unreachable``. ``recover``: after every reconnect (the node
        restarted, or a ZooKeeper failover) recover the same way from where
        the reader was.

        ``queue``: join the queue group of that name on ``pattern``: each
        message goes to one member of the group in the whole mesh (at most
        once), members with fewer messages waiting first; ``capacity`` is how
        many may wait here before this member counts as full (mesh/queues.py).
        With ``ack_deadline`` (seconds) the group's messages are **jobs**: at
        least once; acknowledge each with ``client.ack(message)`` (or extend
        it with ``client.extend``); one not acknowledged in time, or whose
        worker died, goes to another member, at most ``max_attempts`` times,
        then to ``$dead.<group>.<subject>`` (docs/QUEUES.md).
        """
        if self.closed:
            raise RuntimeError("client is closed")
        if self._pid != _pid[0]:
            self._reopen_after_fork()
        if isinstance(since, str):
            since = Position.from_json(since)
        if isinstance(history_timeout, bool) or not isinstance(history_timeout, (int, float)) \
                or not history_timeout > 0:
            raise ValueError("history_timeout must be positive seconds")
        membership = None
        if queue is not None:
            if since is not None or recover:
                raise ValueError("a queue-group member does not recover history")
            Pattern(pattern)
            jobs = None
            if ack_deadline is not None:
                if not ack_deadline > 0 or type(max_attempts) is not int or max_attempts < 1:
                    raise ValueError("ack_deadline must be positive seconds and max_attempts an int >= 1")
                jobs = {"deadline": float(ack_deadline), "attempts": max_attempts}
            membership = Membership(queue, pattern, capacity, jobs)
            pattern = membership.inbox_pattern  # only what a dispatcher chose for this member
        sub = Subscription(self._receiver, Pattern(pattern),
                           self.pending_limit if pending_limit is None else pending_limit,
                           self.stream_idle, self._yield)
        if since is not None:
            sub.begin_hold()  # live messages wait until the replay is queued
        self._receiver.add(sub)
        if since is not None:
            try:
                self.wait_for_subscription(pattern, self._timeout)  # what the node forwards from now on is held
                recover_from_history(self, sub, since, max_replay, history_timeout)
            finally:
                sub.end_hold_if_held()  # a recovery that failed still lets live messages through
        if recover:
            sub.max_replay, sub.history_timeout = max_replay, history_timeout
            self._recovering.add(sub)
        if membership is not None:
            self.wait_for_subscription(pattern, self._timeout)  # the inbox exists before anyone is sent to it
            self._memberships.join(membership, sub)
        if callback is not None:
            start_background(functools.partial(_call_back, sub, callback), f"mesh-sub-{pattern}")
        return sub

    @property
    def control(self):
        """The control channel to this client's node (a new one when the client moves to another node)."""
        return self._control

    def control_channel(self, address=None, timeout=None, heartbeat=None):
        """A new control channel to ``address`` (default: this client's node) with this client's
        keys, timeout and way of waiting; the caller closes it."""
        return ControlChannel(self._context, self.address if address is None else address, self._wait,
                              self._timeout if timeout is None else timeout, self._curve, heartbeat=heartbeat)

    def stats(self):
        """The node's counters (see docs/PROTOCOL.md, command ``stats``)."""
        return self._control.request("stats")

    def revoke(self, sub, seconds=None):
        """Make every edge of the mesh close the connections whose token has
        this ``sub`` and refuse its tokens for ``seconds`` (default: the node's
        --auth-max-lifetime). Returns which peers confirmed (docs/EDGE.md)."""
        return self._control.request("revoke", sub=sub, **({} if seconds is None else {"seconds": seconds}))

    def presence(self, channel, limit=1000):
        """Who is in ``channel`` across the mesh: the edge connections (and their
        tokens' ``sub``) subscribed to it on every node that answers within a
        second (mesh/presence.py; nodes that did not are in ``unreachable``)."""
        Pattern(channel)  # a clear ValueError before asking anyone
        return mesh_presence.presence(self, channel, limit)

    def channels(self, limit=1000):
        """Per pattern edge clients subscribe to, across the mesh: subscribers,
        messages, delivered, last message time (mesh/presence.py)."""
        return mesh_presence.channels(self, limit)

    def counters(self):
        """This client's own counters: connection, streams held, batches and marks sent."""
        publisher = self._publisher
        return {"connected": self.connected, "reconnects": self.reconnects, "disconnects": self.disconnects,
                "backlog": publisher.backlog, "published": publisher.published, "batches": publisher.batches,
                "mark_messages": publisher.mark_messages, "streams": publisher.streams,
                "streams_forgotten": publisher.forgotten, "subscriptions": self._receiver.subscriptions,
                "malformed": self._receiver.malformed, "settled": self._memberships.settler.counters()}

    def close(self):
        """Send what is pending (batch, marks), hand the last marks to the
        node to repeat, end every subscription, close."""
        if self.closed:
            return
        if self._pid != _pid[0]:
            self.closed = True
            return  # a forked child never touches its parent's sockets
        deadline = time.monotonic() + BACKLOG_GRACE
        while self._publisher.backlog and self.connected and time.monotonic() < deadline:
            time.sleep(0.01)  # just attached: the watch sends the backlog once the interest is back
        self._memberships.stop()  # leave every queue group while the node still hears us
        self.closed = True
        if self.failover is not None:
            self.failover.close()
        final_marks = self._publisher.close()
        if final_marks:  # the node repeats them, as this client would have, until the streams are forgotten
            hand_over(self._control, self.origin, final_marks, self.stream_idle)
        if self._publisher.dropped_at_close:
            log.warning("closed with %d publishes still waiting for node %s: not published",
                        self._publisher.dropped_at_close, self.node)
        self._kick.set()  # the housekeeper and the watch see the client closed and end
        self._watch.wake()
        self._receiver.close()
        self._control.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


    # -- fork -------------------------------------------------------------

    def _reopen_after_fork(self):
        """In a forked child: ZeroMQ sockets must not cross a fork, and the
        parent's sequence numbers must not be reused. Open our own sockets
        under a new origin; subscriptions made before the fork stay behind
        (their ``get`` raises)."""
        with _fork_lock[0]:
            if self._pid == _pid[0]:
                return
            self._attach_lock = threading.Lock()  # the parent's may have been held at the fork
            self._context = shared_context(self.address)  # pyzmq gives a forked child a new one
            self._control, info = self._hello(self.address)
            self._adopt(info)
            self._receiver.forked()
            self._open()
            log.info("client reopened in forked process %d as %s", self._pid, self.origin)


_pid = [os.getpid()]  # this process; a client made in another one was forked
_fork_lock = [threading.Lock()]


_bound_publish = weakref.WeakSet()  # objects whose own ``publish`` is a client's publisher's


def bind_publish(owner, client):
    """Make ``owner.publish`` (``owner`` a Client, or a wrapper of one whose
    class has a ``publish`` of its own) the publisher's method of ``client``:
    a publish then costs no call frame of the client's. A fork takes it back
    in the child, so the class's ``publish`` runs there first and reopens
    the client (ZeroMQ sockets must not cross a fork); a ``publish`` taken
    before the fork is sent the same way (Publisher.after_fork)."""
    owner.publish = client._publisher.publish
    _bound_publish.add(owner)


def _after_fork_in_child():
    _pid[0] = os.getpid()
    _fork_lock[0] = threading.Lock()
    for owner in list(_bound_publish):
        owner.__dict__.pop("publish", None)
        if isinstance(owner, Client):
            owner._publisher.after_fork(functools.partial(Client.publish, owner))
    _bound_publish.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _call_back(sub, callback):
    for message in sub:
        try:
            callback(message)
        except Exception:
            log.exception("subscription callback for %r failed", sub.pattern.text)


def _housekeep(client_ref, kick):
    """Send aged batches and marks, forget idle streams; sleep until the next
    duty (or a kick); end when the client is closed or collected."""
    delay = None
    while True:
        kick.wait(delay)
        kick.clear()
        client = client_ref()
        if client is None or client.closed:
            return
        delay = client._publisher.housekeep()
        del client
