"""mesh/liveness.py: the connecting end pings only as a backstop, and both ends
still find a silent connection dead. The far end is a real process frozen with SIGSTOP (its kernel
keeps the TCP connection open and silent); this end watches its socket's monitor
for the disconnect."""

import os
import signal
import subprocess
import sys
import time

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAR_END = """
import sys, time, zmq
from mesh.liveness import watch_link
binds = sys.argv[1] == "bind"
sock = watch_link(zmq.Context.instance().socket(zmq.XPUB if binds else zmq.SUB), binds=binds)
if binds:
    sock.bind("tcp://127.0.0.1:*")
    print(sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
else:
    sock.connect(sys.stdin.readline().strip())
    print("connecting", flush=True)
time.sleep(600)
"""


@pytest.fixture
def far_end():
    procs = []

    def start(role):
        proc = subprocess.Popen([sys.executable, "-c", FAR_END, role], stdin=subprocess.PIPE,
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


def frozen_seen(monitor, proc, at_once=False):
    """Wait for the handshake, check the connection lives through a few
    heartbeats (unless ``at_once``: before the far end's first PING), freeze
    the far end: seconds until this end drops it."""
    from mesh.liveness import BACKSTOP_IVL, HEARTBEAT_IVL, HEARTBEAT_TIMEOUT

    next_event(monitor, {zmq.EVENT_HANDSHAKE_SUCCEEDED}, 10)
    if not at_once:
        with pytest.raises(AssertionError):  # alive and answering: nothing closes it
            next_event(monitor, {zmq.EVENT_DISCONNECTED}, (HEARTBEAT_IVL + HEARTBEAT_TIMEOUT) / 1000 + 1)
    os.kill(proc.pid, signal.SIGSTOP)
    frozen = time.monotonic()
    _, at = next_event(monitor, {zmq.EVENT_DISCONNECTED}, (BACKSTOP_IVL + HEARTBEAT_TIMEOUT) / 1000 + 3)
    return at - frozen


@pytest.fixture
def this_end():
    """A watched socket of this process and its monitor: ``this_end(kind, binds)``."""
    from mesh.liveness import watch_link

    ctx = zmq.Context()
    made = []

    def make(kind, binds):
        sock = watch_link(ctx.socket(kind), binds=binds)
        made.append(sock)
        made.append(sock.get_monitor_socket())
        return made[-2], made[-1]

    yield make
    for sock in reversed(made):
        sock.close(linger=0)
    ctx.term()


def test_the_bound_end_drops_a_frozen_connecting_end(far_end, this_end):
    """The connecting end pings only every 3 s: the bound end's PINGs go unanswered."""
    sock, monitor = this_end(zmq.XPUB, binds=True)
    sock.bind("tcp://127.0.0.1:*")
    proc = far_end("connect")
    proc.stdin.write(sock.getsockopt_string(zmq.LAST_ENDPOINT) + "\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "connecting"
    print(f"[measure] bound end dropped a frozen connecting end after {frozen_seen(monitor, proc):.2f} s")


@pytest.mark.parametrize("at_once", [False, True], ids=["after-pings", "before-its-first-ping"])
def test_the_connecting_end_drops_a_frozen_bound_end(far_end, this_end, at_once):
    """The TTL in the bound end's PINGs closes it; a bound end frozen before its
    first PING armed no TTL, and the connecting end's own slow PINGs find it."""
    sock, monitor = this_end(zmq.XSUB, binds=False)
    proc = far_end("bind")
    sock.connect(proc.stdout.readline().strip())
    print(f"[measure] connecting end dropped a bound end frozen {'at once' if at_once else 'later'} "
          f"after {frozen_seen(monitor, proc, at_once):.2f} s")
