"""How a ZeroMQ link finds a silent path dead, and uses it again soon after it heals.

A partition that drops packets without a word (a failed switch, a host cut
off) leaves two traps in TCP:

* the end that does not send never learns that the connection is dead (TCP
  keepalive waits two hours), so it keeps a subscriber's pipe, or waits on
  one, that nothing will ever cross again;
* a ``connect()`` made while the path is cut waits in the kernel's SYN
  back-off (tries 1, 3, 7, 15, 31 and 63 s after the first, gives up after
  127 s): after the heal the link stays down until the next try, up to a
  minute later, and a node whose links closed during a partition stays deaf
  that long.

So every socket that carries messages between nodes, or between a client
and its node, gets, before it binds or connects (the options are copied
into each connection when it is made):

* ZMTP heartbeats: the bound side sends a PING every ``HEARTBEAT_IVL``, the
  connecting side every ``BACKSTOP_IVL``; either closes the connection when
  nothing at all arrived ``HEARTBEAT_TIMEOUT`` after its PING;
* a TTL in each PING: the far end closes the connection when it heard
  nothing for ``HEARTBEAT_TTL`` (libzmq arms that timer at each PING it
  gets), even one that set no heartbeats of its own (a client in another
  language);
* ``CONNECT_TIMEOUT``: a connect attempt gives up after it and the next one
  starts ``RECONNECT_IVL`` later, so a healed path is used within about
  ``CONNECT_TIMEOUT``;
* ``HANDSHAKE_IVL``: a connection cut between TCP's handshake and ZeroMQ's
  is closed after this, not after libzmq's default 30 s.

Why the connecting side pings less: each heartbeat wakes libzmq's I/O
thread on both ends, and a node in a full mesh holds two connections per
peer, so heartbeats are most of an idle node's CPU (docs/SCALING.md). The
bound side's PINGs and their TTL find a silent connection dead at both ends
within about ``HEARTBEAT_IVL + HEARTBEAT_TIMEOUT`` (bound end: no PONG) and
``HEARTBEAT_TTL`` (connecting end: no PING); pings every second from the
connecting side too found nothing sooner and cost as much again. Its slow
PINGs are a backstop for one case the TTL cannot see: a bound end that went
silent before its first PING (the TTL is armed by a PING), which is then
found within ``BACKSTOP_IVL + HEARTBEAT_TIMEOUT``.

A closed connection makes the connecting side connect again, and ZeroMQ
sends an XSUB's or SUB's subscriptions over each new connection, so
interest comes back by itself. Messages sent while a link was down are lost
to it; subscribers count them as gaps from the sequence numbers.
"""

import zmq

HEARTBEAT_IVL = 1000  # ms
HEARTBEAT_TIMEOUT = 3000
HEARTBEAT_TTL = 3000
BACKSTOP_IVL = 3000  # the connecting side's PINGs
CONNECT_TIMEOUT = 2000
RECONNECT_IVL = 100
HANDSHAKE_IVL = 10000

_OPTIONS = ((zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT), (zmq.HEARTBEAT_TTL, HEARTBEAT_TTL),
            (zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT), (zmq.RECONNECT_IVL, RECONNECT_IVL),
            (zmq.HANDSHAKE_IVL, HANDSHAKE_IVL))


def watch_link(sock, *, binds):
    """Give ``sock`` the options above, as the side that ``binds`` or connects;
    call before it binds or connects."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL if binds else BACKSTOP_IVL)
    for option, value in _OPTIONS:
        sock.setsockopt(option, value)
    return sock
