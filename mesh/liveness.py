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

* ZMTP heartbeats: a PING every ``HEARTBEAT_IVL``; the connection is closed
  when nothing at all arrived ``HEARTBEAT_TIMEOUT`` after one;
* a TTL in each PING: the far end closes the connection when it heard
  nothing for ``HEARTBEAT_TTL``, even one that set no heartbeats of its own
  (a client in another language);
* ``CONNECT_TIMEOUT``: a connect attempt gives up after it and the next one
  starts ``RECONNECT_IVL`` later, so a healed path is used within about
  ``CONNECT_TIMEOUT``;
* ``HANDSHAKE_IVL``: a connection cut between TCP's handshake and ZeroMQ's
  is closed after this, not after libzmq's default 30 s.

A closed connection makes the connecting side connect again, and ZeroMQ
sends an XSUB's or SUB's subscriptions over each new connection, so
interest comes back by itself. Messages sent while a link was down are lost
to it; subscribers count them as gaps from the sequence numbers.
"""

import zmq

HEARTBEAT_IVL = 1000  # ms
HEARTBEAT_TIMEOUT = 3000
HEARTBEAT_TTL = 3000
CONNECT_TIMEOUT = 2000
RECONNECT_IVL = 100
HANDSHAKE_IVL = 10000

_OPTIONS = ((zmq.HEARTBEAT_IVL, HEARTBEAT_IVL), (zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT),
            (zmq.HEARTBEAT_TTL, HEARTBEAT_TTL), (zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT),
            (zmq.RECONNECT_IVL, RECONNECT_IVL), (zmq.HANDSHAKE_IVL, HANDSHAKE_IVL))


def watch_link(sock):
    """Give ``sock`` the options above; call before it binds or connects."""
    for option, value in _OPTIONS:
        sock.setsockopt(option, value)
    return sock
