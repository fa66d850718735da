"""Waiting on a ZeroMQ socket, and background work, in the caller's own thread or greenlet.

Plain pyzmq blocking calls would freeze a gevent hub, and ``zmq.green`` is slow
(about 50k msg/s per socket against 155k for a plain socket waited on this
way: docs/ARCHITECTURE.md), so the library uses plain sockets, reads with NOBLOCK, and waits
through the function this module picks: ``zmq.Socket.poll`` in a threaded
program, ``gevent.socket.wait_read`` on the socket's edge-triggered FD in a
gevent-patched one.
"""

import os
import sys
import threading
import time

import zmq


def running_under_gevent():
    """True when gevent has patched the socket module (the program is green)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey and monkey.is_module_patched("socket"))


def _wait_thread(sock, timeout):
    sock.poll(None if timeout is None else max(1, int(timeout * 1000)), zmq.POLLIN)


def _wait_green(sock, timeout):
    from gevent.socket import wait_read

    if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
        return
    try:
        wait_read(sock.getsockopt(zmq.FD), timeout=timeout)
    except OSError:  # socket.timeout: nothing arrived in time
        pass


def pick_waiter():
    """The wait function for this program: wait(sock, timeout_seconds_or_None)."""
    return _wait_green if running_under_gevent() else _wait_thread


class SocketOrPipe:
    """Sleeping until a socket may have a message or a wake-up pipe is
    written to, in a thread (a Poller kept for the pair: zmq.select builds one
    per call, 7.7 us against 1.6) or in a greenlet."""

    def __init__(self, sock, pipe_fd):
        self.sock = sock
        self.pipe_fd = pipe_fd
        self._poller = None
        if not running_under_gevent():
            self._poller = zmq.Poller()
            self._poller.register(sock, zmq.POLLIN)
            self._poller.register(pipe_fd, zmq.POLLIN)

    def wait(self, timeout=None):
        """Until a message may be there, a wake-up, or ``timeout`` seconds (None: forever)."""
        if self._poller is not None:
            ready = dict(self._poller.poll(None if timeout is None else max(1, int(timeout * 1000))))
            if self.pipe_fd not in ready:
                return
        else:
            from gevent.select import select

            if self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return
            select([self.sock.getsockopt(zmq.FD), self.pipe_fd], [], [], timeout)
        try:
            os.read(self.pipe_fd, 4096)
        except BlockingIOError:
            pass


def wake_up_pipe():
    """A non-blocking pipe (read end, write end) for waking a waiter."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    return read_fd, write_fd


def recv_multipart(sock, wait, timeout=None):
    """Receive one multipart message, waiting at most ``timeout`` seconds.

    Raises TimeoutError when nothing arrived in time.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            return sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            pass
        remaining = None
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"nothing received within {timeout} s")
        wait(sock, remaining)


FAIR_SLICE_SECONDS = 0.002
# gevent.sleep(0) only runs greenlets that are already ready, not timers or
# I/O: a greenlet sleeping 5 ms in a loop woke 5 times in 0.5 s beside a loop
# yielding with sleep(0) every 2 ms, and 82 times with a 1 us sleep, which
# takes one full turn of the event loop.
_YIELD_SECONDS = 0.000001
_last_yield = [0.0]


def fair_yielder():
    """Under gevent, a function that yields to the hub when library code has
    run for FAIR_SLICE_SECONDS since the last yield (so a stream drained or
    published in a loop never freezes the other greenlets); None in a
    threaded program, where the interpreter switches threads by itself."""
    if not running_under_gevent():
        return None
    import gevent

    def maybe_yield(clock=time.monotonic, last=_last_yield):
        if clock() - last[0] >= FAIR_SLICE_SECONDS:
            gevent.sleep(_YIELD_SECONDS)
            last[0] = clock()

    return maybe_yield


def yield_to_hub():
    """One full turn of gevent's loop (I/O and timers included, unlike sleep(0))."""
    import gevent

    gevent.sleep(_YIELD_SECONDS)


def start_background(work, name):
    """Run ``work`` beside the program: a greenlet under gevent, else a daemon thread."""
    if running_under_gevent():
        import gevent

        return gevent.spawn(work)
    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    return thread
