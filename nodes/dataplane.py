"""The data plane: four sockets and two ``zmq.proxy`` loops in real threads.

    local publishers --> [ingress XSUB] ==proxy==> [out XPUB] --> local subscribers
                                                              \\-> peers' mesh_in
    peers' out XPUB --> [mesh_in XSUB] ==proxy==> [remote XPUB] --> local subscribers

Messages move inside libzmq; Python never touches one. A message from a peer
enters through ``mesh_in`` and leaves only through ``remote``, so it is never
forwarded again (one hop, no loops, no duplicates). Subscriptions flow the
other way for free: XPUB passes a topic's first subscribe and last
unsubscribe upstream, XSUB re-sends its subscriptions to each new connection.

``mesh_in`` belongs to its proxy thread while it runs, so changing the set of
peers pauses the proxy, reads its counters, stops it, reconnects, restarts it
(:class:`PeerLinks`, which nodes/gateway.py uses too). Messages wait in the
socket queues meanwhile; none are lost.

Every data socket watches its links (mesh/liveness.py: ZMTP heartbeats with
a TTL, bounded connect attempts), so a link whose path went silent closes
within seconds and is made again within seconds of the path healing, with
its subscriptions. A socket that links to peers paces its PINGs by how many
links it has (:class:`PeerLinks`), so a large mesh idles cheaply. A monitor
on ``mesh_in`` tracks each peer link, so a dead link shows long before a
membership backend would notice.
"""

import logging
import struct

import gevent
import gevent.lock
import zmq
from zmq.utils.monitor import recv_monitor_message

from mesh.addresses import tcp_endpoint
from mesh.curve import apply_client
from mesh.liveness import PEER_PINGS, pace, peer_interval, watch_link, watch_peers
from mesh.subjects import MAX_SUBJECT_BYTES
from mesh.concurrency import pick_waiter, recv_multipart

log = logging.getLogger("meshnode.dataplane")

# Room for the topic frame and the envelope header around the payload limit.
_FRAME_OVERHEAD = MAX_SUBJECT_BYTES + 256
# What subscribers may send to an XPUB: subscribe/cancel frames of a pattern
# prefix (at most MAX_SUBJECT_BYTES + 2). libzmq keeps a trie node per byte of a
# subscription and frees it recursively: one 128 KiB frame overflowed a proxy
# thread's stack and crashed the node (tests/test_hostile_input.py).
MAX_SUBSCRIPTION_FRAME = MAX_SUBJECT_BYTES + 64
COALESCE_SECONDS = 0.1  # after a peer change is applied, the next ones wait this long and go together
_STAT_NAMES = ("frontend_frames_in", "frontend_bytes_in", "frontend_frames_out", "frontend_bytes_out",
               "backend_frames_in", "backend_bytes_in", "backend_frames_out", "backend_bytes_out")


def data_socket(context, kind, host, *, hwm, curve, bind, peers=False, **options):
    """A data-plane socket: no linger, ``hwm`` both ways, its links watched
    (mesh/liveness.py) as peer links if ``peers`` (other nodes link to it, or
    it links to them) else as client links, ``options`` (zmq option names) set
    before binding (listeners copy options then), bound on a port the system
    picks when ``bind``, CurveZMQ server or client side."""
    sock = (watch_peers if peers else watch_link)(context.socket(kind), binds=bind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    if bind:
        if curve is not None:
            curve.serve(sock)
        sock.bind(tcp_endpoint(host, "*"))
    else:
        apply_client(curve, sock)
    return sock


def endpoint_of(sock, advertise_host):
    """Where others connect to a bound socket, with the host they should use."""
    port = sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1]
    return tcp_endpoint(advertise_host, port)


class Proxy:
    """One steerable ``zmq.proxy`` between two sockets, run in a pool thread.

    A steering command is a request and a reply on one socket; if the caller
    were killed between the two (discovery greenlets are killed on shutdown),
    the next command would read this one's reply. So each use runs under a
    lock in a greenlet of its own, which always finishes what it started."""

    def __init__(self, context, name, frontend, backend):
        self.name = name
        self._frontend = frontend
        self._backend = backend
        self._wait = pick_waiter()
        self._steer = context.socket(zmq.PAIR)
        self._steer.bind(f"inproc://meshnode-steer-{name}-{id(self)}")
        self._steer_far = context.socket(zmq.PAIR)
        self._steer_far.connect(f"inproc://meshnode-steer-{name}-{id(self)}")
        self._earlier = [0] * len(_STAT_NAMES)  # counters of runs already stopped
        self._running = None
        self._lock = gevent.lock.Semaphore()
        self._closed = False

    def _locked(self, work, *args):
        def run():
            with self._lock:
                return work(*args)
        return gevent.spawn(run).get()

    def start(self):
        self._running = gevent.get_hub().threadpool.spawn(
            zmq.proxy_steerable, self._frontend, self._backend, None, self._steer_far)

    def _command(self, word):
        while self._steer.poll(0):  # a late reply to a command that timed out: never read it as this one's
            self._steer.recv_multipart()
        self._steer.send(word)
        return recv_multipart(self._steer, self._wait, timeout=10)

    def counters(self):
        def read():
            if self._running is None:
                now = [0] * len(_STAT_NAMES)
            else:
                now = [struct.unpack("=Q", f)[0] for f in self._command(b"STATISTICS")]
            return dict(zip(_STAT_NAMES, (a + b for a, b in zip(self._earlier, now))))
        return self._locked(read)

    def _halt(self):
        """Pause, keep the counters, terminate, and wait for the thread."""
        if self._running is None:
            return
        self._command(b"PAUSE")
        frames = self._command(b"STATISTICS")
        self._earlier = [a + struct.unpack("=Q", f)[0] for a, f in zip(self._earlier, frames)]
        self._command(b"TERMINATE")
        self._running.get()
        self._running = None

    def while_stopped(self, change):
        """Stop the proxy, run ``change()`` (it may touch the frontend and
        backend sockets), start it again; nothing once the proxy is closed."""
        def run():
            if self._closed:
                return
            self._halt()
            try:
                change()
            finally:
                self.start()
        self._locked(run)

    def close(self):
        """Stop for good and close the steering sockets."""
        def run():
            self._closed = True
            self._halt()
        self._locked(run)
        self._steer.close(linger=0)
        self._steer_far.close(linger=0)


class PeerLinks:
    """An XSUB connected to a changing set of endpoints, whose messages a
    :class:`Proxy` forwards to ``backend`` (and whose subscriptions flow back).

    A change of endpoints is applied at once (in a greenlet) if none was
    applied in the last COALESCE_SECONDS, else at the end of that pause,
    together with every change that came meanwhile: a burst of joins or
    leaves costs a proxy restart or two, not one each; a lone change waits
    for nothing. A monitor tracks each link: ``links`` maps an endpoint to
    "up" or "down", and ``on_link(endpoint, state)`` hears of each change.

    Each new link is pinged every ``peer_interval(links, pings)`` (mesh/liveness.py)
    of the number of links wanted when it is made; it keeps that interval."""

    def __init__(self, context, name, xsub, backend, *, pings=PEER_PINGS):
        self.name = name
        self.xsub = xsub
        self.pings = pings
        self.intervals = {}  # endpoint -> ms between its PINGs
        self.endpoints = set()
        self._wanted = set()  # the endpoints asked for, applied within COALESCE_SECONDS
        self._applying = None  # the greenlet that will apply them
        self.restarts = 0  # proxy restarts for changes (one per burst)
        self.links = {}  # endpoint -> "up" | "down"
        self.failures = 0
        self.on_link = None
        # Attach the monitor before the proxy thread owns the socket.
        # Up at ZMTP's handshake, not TCP's: a frozen peer's kernel still accepts
        # the reconnection that follows a heartbeat's verdict, and it must stay down.
        self._link_events = xsub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._link_watcher = None
        self.proxy = Proxy(context, name, xsub, backend)

    def start(self):
        self.proxy.start()
        self._link_watcher = gevent.spawn(self._watch_links)

    def _watch_links(self):
        wait = pick_waiter()
        while True:
            try:
                event = recv_monitor_message(self._link_events, zmq.NOBLOCK)
            except zmq.Again:
                wait(self._link_events, None)
                continue
            endpoint = event["endpoint"].decode()
            if endpoint not in self.links:
                continue  # one we already let go
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                changed = self.links[endpoint] != "up"
                self.links[endpoint] = "up"
            else:
                changed = self.links[endpoint] == "up"
                if changed:
                    self.failures += 1
                    log.warning("%s link to %s is down", self.name, endpoint)
                self.links[endpoint] = "down"
            if changed and self.on_link is not None:
                self.on_link(endpoint, self.links[endpoint])

    def set_endpoints(self, endpoints):
        """Be connected to exactly these endpoints, soon (see the class)."""
        self._wanted = set(endpoints)
        if self._applying is None:
            self._applying = gevent.spawn(self._apply_wanted)

    def _apply_wanted(self):
        try:
            applied = None
            while self._wanted != applied:
                applied = set(self._wanted)
                self._apply(set(applied))  # it drops endpoints libzmq refuses: keep what was asked to compare
                gevent.sleep(COALESCE_SECONDS)  # what comes meanwhile is applied together, after it
        finally:
            self._applying = None

    def _apply(self, wanted):
        gone = self.endpoints - wanted
        new = wanted - self.endpoints
        if not gone and not new:
            return

        def change():
            for endpoint in gone:
                self.links.pop(endpoint, None)
                self.intervals.pop(endpoint, None)
                try:
                    self.xsub.disconnect(endpoint)
                except zmq.ZMQError as exc:
                    log.warning("%s: disconnect from %s failed: %s", self.name, endpoint, exc)
            interval = peer_interval(len(wanted), self.pings)
            pace(self.xsub, interval)
            for endpoint in new:
                try:
                    self.xsub.connect(endpoint)
                    self.links[endpoint] = "down"  # until the monitor reports its handshake
                    self.intervals[endpoint] = interval
                except zmq.ZMQError as exc:
                    log.warning("%s: cannot connect to %r: %s", self.name, endpoint, exc)
                    wanted.discard(endpoint)
            self.endpoints = wanted
        self.restarts += 1
        self.proxy.while_stopped(change)
        log.info("%s links now %s (+%d -%d)", self.name, sorted(wanted), len(new), len(gone))

    def heartbeats(self):
        """PINGs a second over all links, and the shortest and longest interval (ms; 0 without links)."""
        intervals = list(self.intervals.values())
        return {"pings_per_second": round(sum(1000 / ms for ms in intervals), 2),
                "interval_ms_min": min(intervals, default=0), "interval_ms_max": max(intervals, default=0)}

    def stop(self):
        """Stop changing, watching and forwarding (the sockets stay open)."""
        if self._applying is not None:
            self._applying.kill()
        if self._link_watcher is not None:
            self._link_watcher.kill()
        self.proxy.close()
        self.xsub.disable_monitor()
        self._link_events.close(linger=0)


class DataPlane:
    """Binds the node's data sockets on ``host`` and forwards between them."""

    def __init__(self, context, host, *, hwm, max_payload, curve=None, pings=PEER_PINGS):
        """``pings``: ``mesh_in``'s PING budget, PINGs a second to all its peers (:class:`PeerLinks`)."""
        max_frame = max_payload + _FRAME_OVERHEAD

        def make(kind, bind, **options):
            return data_socket(context, kind, host, hwm=hwm, curve=curve, bind=bind, **options)

        # Clients are held to the payload limit here; peers already held theirs.
        self.ingress = make(zmq.XSUB, True, MAXMSGSIZE=max_frame)
        self.out = make(zmq.XPUB, True, peers=True, MAXMSGSIZE=MAX_SUBSCRIPTION_FRAME)
        self.remote = make(zmq.XPUB, True, MAXMSGSIZE=MAX_SUBSCRIPTION_FRAME)
        self.mesh_in = make(zmq.XSUB, False, peers=True)
        self._local = Proxy(context, "local", self.ingress, self.out)
        self._mesh = PeerLinks(context, "mesh", self.mesh_in, self.remote, pings=pings)

    @property
    def links(self):
        """Peer out endpoint -> "up" | "down"."""
        return self._mesh.links

    @property
    def link_failures(self):
        return self._mesh.failures

    def heartbeats(self):
        """``mesh_in``'s PINGs to its peers (:meth:`PeerLinks.heartbeats`)."""
        return self._mesh.heartbeats()

    @property
    def proxy_restarts(self):
        """Mesh proxy restarts for peer changes (one per burst)."""
        return self._mesh.restarts

    @property
    def peer_endpoints(self):
        return self._mesh.endpoints

    @property
    def on_link(self):
        return self._mesh.on_link

    @on_link.setter
    def on_link(self, callback):
        """Called with (peer out endpoint, "up" | "down") when a link changes."""
        self._mesh.on_link = callback

    def endpoints(self, advertise_host):
        """Where clients and peers connect, with the host others should use."""
        return {name: endpoint_of(getattr(self, name), advertise_host) for name in ("ingress", "out", "remote")}

    def start(self):
        self._local.start()
        self._mesh.start()

    def set_peers(self, out_endpoints):
        """Connect ``mesh_in`` to exactly these endpoints (peers' ``out``, and
        the gateways' group faces): see :class:`PeerLinks` for when."""
        self._mesh.set_endpoints(out_endpoints)

    def counters(self):
        """Frame and byte counts of both proxies (a message is 2 frames)."""
        return {"local": self._local.counters(), "mesh": self._mesh.proxy.counters()}

    def stop(self):
        self._mesh.stop()
        self._local.close()
        for sock in (self.ingress, self.out, self.remote, self.mesh_in):
            sock.close(linger=0)
