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
peers pauses the proxy, reads its counters, stops it, reconnects, restarts it.
Messages wait in the socket queues meanwhile; none are lost.

A monitor on ``mesh_in`` tracks each peer link (ZMTP heartbeats every second,
3 s timeout), so a dead link shows within seconds, long before a membership
backend would notice.
"""

import logging
import struct

import gevent
import gevent.lock
import zmq
from zmq.utils.monitor import recv_monitor_message

from mesh.curve import apply_client
from mesh.subjects import MAX_SUBJECT_BYTES
from mesh.waiting import pick_waiter, recv_multipart

log = logging.getLogger("meshnode.dataplane")

# Room for the topic frame and the envelope header around the payload limit.
_FRAME_OVERHEAD = MAX_SUBJECT_BYTES + 256
# What subscribers may send to out/remote: subscribe/cancel frames of a pattern
# prefix (at most MAX_SUBJECT_BYTES + 2). libzmq keeps a trie node per byte of a
# subscription and frees it recursively: one 128 KiB frame overflowed a proxy
# thread's stack and crashed the node (tests/test_hostile_input.py).
_MAX_SUBSCRIPTION_FRAME = MAX_SUBJECT_BYTES + 64
COALESCE_SECONDS = 0.1  # after a peer change is applied, the next ones wait this long and go together
_STAT_NAMES = ("frontend_frames_in", "frontend_bytes_in", "frontend_frames_out", "frontend_bytes_out",
               "backend_frames_in", "backend_bytes_in", "backend_frames_out", "backend_bytes_out")


class _Proxy:
    """One steerable ``zmq.proxy`` between two sockets, run in a pool thread."""

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

    def start(self):
        self._running = gevent.get_hub().threadpool.spawn(
            zmq.proxy_steerable, self._frontend, self._backend, None, self._steer_far)

    def _command(self, word):
        self._steer.send(word)
        return recv_multipart(self._steer, self._wait, timeout=10)

    def counters(self):
        frames = self._command(b"STATISTICS")
        now = [struct.unpack("=Q", f)[0] for f in frames]
        return dict(zip(_STAT_NAMES, (a + b for a, b in zip(self._earlier, now))))

    def stop(self):
        """Pause, keep the counters, terminate, and wait for the thread."""
        self._command(b"PAUSE")
        frames = self._command(b"STATISTICS")
        self._earlier = [a + struct.unpack("=Q", f)[0] for a, f in zip(self._earlier, frames)]
        self._command(b"TERMINATE")
        self._running.get()
        self._running = None

    def close(self):
        self._steer.close(linger=0)
        self._steer_far.close(linger=0)


class DataPlane:
    """Binds the node's data sockets on ``host`` and forwards between them."""

    def __init__(self, context, host, *, hwm, max_payload, curve=None, heartbeat_ivl_ms=1000,
                 heartbeat_timeout_ms=3000):
        self._context = context
        max_frame = max_payload + _FRAME_OVERHEAD

        def make(kind, bind, **options):
            sock = context.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.RCVHWM, hwm)
            for name, value in options.items():  # before bind: listeners copy options then
                sock.setsockopt(getattr(zmq, name), value)
            if bind:
                if curve is not None:
                    curve.serve(sock)
                sock.bind(f"tcp://{host}:*")
            else:
                apply_client(curve, sock)
            return sock

        # Clients are held to the payload limit here; peers already held theirs.
        self.ingress = make(zmq.XSUB, True, MAXMSGSIZE=max_frame)
        heartbeats = {"HEARTBEAT_IVL": heartbeat_ivl_ms, "HEARTBEAT_TIMEOUT": heartbeat_timeout_ms}
        self.out = make(zmq.XPUB, True, MAXMSGSIZE=_MAX_SUBSCRIPTION_FRAME, **heartbeats)
        self.remote = make(zmq.XPUB, True, MAXMSGSIZE=_MAX_SUBSCRIPTION_FRAME)
        self.mesh_in = make(zmq.XSUB, False, **heartbeats)
        self.peer_endpoints = set()
        self._wanted = set()  # the peers asked for, applied within COALESCE_SECONDS
        self._applying = None  # the greenlet that will apply them
        self.proxy_restarts = 0  # mesh proxy restarts for peer changes (one per burst)
        self._reconnecting = gevent.lock.Semaphore()  # one set_peers at a time
        self.links = {}  # peer out endpoint -> "up" | "down"
        self.link_failures = 0
        self.on_link = None  # called with (peer out endpoint, "up" | "down") when a link changes
        # Attach the monitor before the proxy thread owns mesh_in.
        self._link_events = self.mesh_in.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self._link_watcher = None
        self._local = _Proxy(context, "local", self.ingress, self.out)
        self._mesh = _Proxy(context, "mesh", self.mesh_in, self.remote)

    def endpoints(self, advertise_host):
        """Where clients and peers connect, with the host others should use."""
        def ep(sock):
            port = sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1]
            return f"tcp://{advertise_host}:{port}"
        return {"ingress": ep(self.ingress), "out": ep(self.out), "remote": ep(self.remote)}

    def start(self):
        self._local.start()
        self._mesh.start()
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
                continue  # a peer we already let go
            if event["event"] == zmq.EVENT_CONNECTED:
                changed = self.links[endpoint] != "up"
                self.links[endpoint] = "up"
            else:
                changed = self.links[endpoint] == "up"
                if changed:
                    self.link_failures += 1
                    log.warning("link to peer %s is down", endpoint)
                self.links[endpoint] = "down"
            if changed and self.on_link is not None:
                self.on_link(endpoint, self.links[endpoint])

    def _steer(self, work, *args):
        """Run ``work`` under the steering lock, in a greenlet of its own.

        A steering command is a request and a reply on one socket; if the
        caller were killed between the two (discovery greenlets are killed on
        shutdown), the next command would read this one's reply. A separate
        greenlet always finishes what it started, whatever happens to the caller.
        """
        def locked():
            with self._reconnecting:
                return work(*args)
        return gevent.spawn(locked).get()

    def set_peers(self, out_endpoints):
        """Connect ``mesh_in`` to exactly these peers' ``out`` endpoints: at
        once (in a greenlet) if no change was applied in the last
        COALESCE_SECONDS, else at the end of that pause, together with every
        change that came meanwhile. A burst of joins or leaves costs a restart
        of the mesh proxy or two, not one each; a lone change waits for nothing."""
        self._wanted = set(out_endpoints)
        if self._applying is None:
            self._applying = gevent.spawn(self._apply_wanted)

    def _apply_wanted(self):
        try:
            applied = None
            while self._wanted != applied:
                applied = set(self._wanted)
                self._steer(self._set_peers, applied)
                gevent.sleep(COALESCE_SECONDS)  # what comes meanwhile is applied together, after it
        finally:
            self._applying = None

    def _set_peers(self, wanted):
        gone = self.peer_endpoints - wanted
        new = wanted - self.peer_endpoints
        if not gone and not new:
            return
        self.proxy_restarts += 1
        self._mesh.stop()
        try:
            for endpoint in gone:
                self.links.pop(endpoint, None)
                try:
                    self.mesh_in.disconnect(endpoint)
                except zmq.ZMQError as exc:
                    log.warning("disconnect from %s failed: %s", endpoint, exc)
            for endpoint in new:
                try:
                    self.mesh_in.connect(endpoint)
                    self.links[endpoint] = "down"  # until the monitor reports it connected
                except zmq.ZMQError as exc:
                    log.warning("cannot connect to peer endpoint %r: %s", endpoint, exc)
                    wanted.discard(endpoint)
        finally:
            self._mesh.start()
        self.peer_endpoints = wanted
        log.info("peers now %s (+%d -%d)", sorted(wanted), len(new), len(gone))

    def counters(self):
        """Frame and byte counts of both proxies (a message is 2 frames)."""
        return self._steer(lambda: {"local": self._local.counters(), "mesh": self._mesh.counters()})

    def stop(self):
        if self._applying is not None:
            self._applying.kill()
        self._reconnecting.acquire()
        if self._link_watcher is not None:
            self._link_watcher.kill()
        self.mesh_in.disable_monitor()
        self._link_events.close(linger=0)
        for proxy in (self._local, self._mesh):
            proxy.stop()
            proxy.close()
        for sock in (self.ingress, self.out, self.remote, self.mesh_in):
            sock.close(linger=0)
