"""mesh/liveness.py: who pings how often, and that both ends still find a silent
connection dead. The far end is a real process frozen with SIGSTOP (its kernel
keeps the TCP connection open and silent); this end watches its socket's monitor
for the disconnect. What goes on the wire is read from a raw TCP peer that speaks
ZMTP 3.1 (NULL) and reads the TTL in each PING."""

import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from mesh import liveness
from meshtest.nodeproc import linked, wait_until
from rawwire import zmtp_connect, zmtp_handshake

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAR_END = """
import sys, time, zmq
from mesh import liveness
binds, watch = sys.argv[1] == "bind", getattr(liveness, sys.argv[2])
sock = watch(zmq.Context.instance().socket(zmq.XPUB if binds else zmq.SUB), binds=binds)
if binds:
    sock.bind("tcp://127.0.0.1:*")
    print(sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
else:
    sock.connect(sys.stdin.readline().strip())
    print("connecting", flush=True)
time.sleep(600)
"""
INTERVALS = {("watch_link", True): liveness.HEARTBEAT_IVL, ("watch_link", False): liveness.BACKSTOP_IVL,
             ("watch_peers", True): liveness.PEER_BACKSTOP_IVL, ("watch_peers", False): liveness.HEARTBEAT_IVL}
# (bound end, connecting end): a client's link, a peer's, a client's link to a node's out
PAIRS = [("watch_link", "watch_link"), ("watch_peers", "watch_peers"), ("watch_peers", "watch_link")]


@pytest.fixture
def far_end():
    procs = []

    def start(role, watch):
        proc = subprocess.Popen([sys.executable, "-c", FAR_END, role, watch], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": ROOT})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(10)


def next_event(monitor, wanted, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if monitor.poll(100):
            event = recv_monitor_message(monitor)["event"]
            if event in wanted:
                return event, time.monotonic()
    raise AssertionError(f"no {wanted} within {timeout} s")


def frozen_seen(monitor, proc, pair, at_once=False):
    """Wait for the handshake, check the connection lives through a few
    heartbeats of the slower end (unless ``at_once``: before the far end's first
    PING), freeze the far end: seconds until this end drops it."""
    slow = max(INTERVALS[pair[0], True], INTERVALS[pair[1], False])
    next_event(monitor, {zmq.EVENT_HANDSHAKE_SUCCEEDED}, 10)
    if not at_once:
        with pytest.raises(AssertionError):  # alive and answering: nothing closes it
            next_event(monitor, {zmq.EVENT_DISCONNECTED}, slow / 1000 + liveness.TTL_MARGIN / 1000 + 1)
    os.kill(proc.pid, signal.SIGSTOP)
    frozen = time.monotonic()
    _, at = next_event(monitor, {zmq.EVENT_DISCONNECTED}, (slow + liveness.HEARTBEAT_TIMEOUT) / 1000 + 3)
    return at - frozen


@pytest.fixture
def this_end():
    """A watched socket of this process and its monitor: ``this_end(kind, binds, watch)``."""
    ctx = zmq.Context()
    made = []

    def make(kind, binds, watch):
        sock = getattr(liveness, watch)(ctx.socket(kind), binds=binds)
        made.append(sock)
        made.append(sock.get_monitor_socket())
        return made[-2], made[-1]

    yield make
    for sock in reversed(made):
        sock.close(linger=0)
    ctx.term()


def _ids(pair):
    names = {"watch_link": "client", "watch_peers": "peer"}
    return f"{names[pair[0]]}-{names[pair[1]]}"


@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
@pytest.mark.parametrize("at_once", [False, True], ids=["after-pings", "before-its-first-ping"])
def test_the_bound_end_drops_a_frozen_connecting_end(far_end, this_end, pair, at_once):
    """The TTL of the connecting end's PINGs closes it; one frozen before its
    first PING armed no TTL, and the bound end's own PINGs find it. Also: an
    idle connection lives through the slower end's PINGs (each PING's TTL
    outlasts its sender's interval: with a TTL equal to the interval, a client
    on a node's ``out``, which pings every 10 s, closed by itself)."""
    sock, monitor = this_end(zmq.XPUB, True, pair[0])
    sock.bind("tcp://127.0.0.1:*")
    proc = far_end("connect", pair[1])
    proc.stdin.write(sock.getsockopt_string(zmq.LAST_ENDPOINT) + "\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "connecting"
    print(f"[measure] {_ids(pair)}: bound end dropped a connecting end frozen {'at once' if at_once else 'later'} "
          f"after {frozen_seen(monitor, proc, pair, at_once):.2f} s")


@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
@pytest.mark.parametrize("at_once", [False, True], ids=["after-pings", "before-its-first-ping"])
def test_the_connecting_end_drops_a_frozen_bound_end(far_end, this_end, pair, at_once):
    """The connecting end's own PINGs find it, or the TTL in the bound end's
    PINGs (a client's link to ``ingress`` or ``remote``, whose bound end pings
    every second)."""
    sock, monitor = this_end(zmq.XSUB, False, pair[1])
    proc = far_end("bind", pair[0])
    sock.connect(proc.stdout.readline().strip())
    print(f"[measure] {_ids(pair)}: connecting end dropped a bound end frozen {'at once' if at_once else 'later'} "
          f"after {frozen_seen(monitor, proc, pair, at_once):.2f} s")


def test_the_interval_rule():
    """1 s per link up to ``pings`` links, then the socket's PINGs stay at ``pings`` a second."""
    assert liveness.PEER_PINGS == 16
    assert [liveness.peer_interval(n) for n in (0, 1, 16)] == [1000, 1000, 1000]
    assert liveness.peer_interval(17) == 1063  # 17,000 / 16 = 1,062.5, rounded up
    assert liveness.peer_interval(127) == 7938
    assert liveness.peer_interval(127, pings=32) == 3969
    assert liveness.peer_interval(3, pings=1) == 3000
    with pytest.raises(ValueError):
        liveness.peer_interval(3, pings=0)


def _first_ping_ttl(sock, timeout=10):
    """The TTL (ms) in the first PING that comes over ``sock``."""
    sock.settimeout(timeout)
    got = b""
    while b"\x04PING" not in got or len(got) < got.index(b"\x04PING") + 7:
        chunk = sock.recv(4096)
        assert chunk, "the connection closed before a PING"
        got += chunk
    at = got.index(b"\x04PING") + 5
    return struct.unpack(">H", got[at:at + 2])[0] * 100


def test_pace_reaches_connections_made_after_it_and_a_listener_keeps_its_bind_time_options():
    """libzmq copies heartbeat options into a connection when it is made: a
    connecting socket's ``connect()`` takes them when it is called (so
    PeerLinks paces before each connect), a bound socket's listener at ``bind()``."""
    ctx = zmq.Context()
    server = socket.create_server(("127.0.0.1", 0))
    peers = []
    try:
        sub = liveness.watch_peers(ctx.socket(zmq.XSUB), binds=False)
        liveness.pace(sub, 1500)
        sub.connect(f"tcp://127.0.0.1:{server.getsockname()[1]}")
        liveness.pace(sub, 300)  # after the connect: not for this connection
        peer, _ = server.accept()
        peers.append(zmtp_handshake(peer, b"XPUB", minor=1))
        assert _first_ping_ttl(peer) == 1500 + liveness.TTL_MARGIN

        pub = liveness.watch_peers(ctx.socket(zmq.XPUB), binds=True)
        liveness.pace(pub, 1500)
        pub.bind("tcp://127.0.0.1:*")
        liveness.pace(pub, 300)  # after the bind: reaches no connection
        peer = zmtp_connect(pub.getsockopt_string(zmq.LAST_ENDPOINT), b"XSUB", minor=1)
        peers.append(peer)
        assert _first_ping_ttl(peer) == 1500 + liveness.TTL_MARGIN
        for sock in (sub, pub):
            sock.close(linger=0)
    finally:
        for peer in peers:
            peer.close()
        server.close()
        ctx.term()


def test_a_mesh_paces_each_link_by_the_links_its_node_has(zk_server, zk_node):
    """With ``--heartbeat-pings 1``, a node with 3 peers pings each every 3 s:
    D joins a mesh of three and links to all three at once (3 s each); each of
    them links to D as its third peer (3 s), and keeps the intervals of the
    links it made when it had fewer. The links live through those slow PINGs
    (their TTL outlasts them) and a frozen D is still found dead by the others."""
    nodes = []
    for name in "ABCD":
        nodes.append(zk_node(name, zk_server.hosts, "--heartbeat-pings", "1", timeout="10"))
        wait_until(lambda: linked(*nodes), timeout=20, what=f"{name} linked")
    a, b, c, d = nodes
    beats = {node.name: node.stats()["links"]["heartbeats"] for node in nodes}
    assert beats["D"] == {"pings_per_second": 1.0, "interval_ms_min": 3000, "interval_ms_max": 3000}, beats
    assert all(beat["interval_ms_max"] == 3000 for beat in beats.values()), beats
    assert beats["A"]["interval_ms_min"] == 1000, beats  # its link to B, made when B was its only peer
    time.sleep((3000 + liveness.TTL_MARGIN) / 1000 + 2)  # idle, past a TTL of 3 s: nothing closes
    assert [node.stats()["links"]["failures"] for node in nodes] == [0, 0, 0, 0]
    os.kill(d.pid, signal.SIGSTOP)
    try:
        # within 3 + 3 s, before its 10 s ZooKeeper session ends (that would drop D from the membership)
        wait_until(lambda: [node.stats()["links"]["failures"] for node in (a, b, c)] == [1, 1, 1], timeout=9,
                   what="the others to find the frozen D")
    finally:
        os.kill(d.pid, signal.SIGCONT)
