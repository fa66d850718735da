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
and its node, gets, before it binds or connects:

* ZMTP heartbeats: a PING every so often (below); a socket closes a
  connection when nothing at all arrived ``HEARTBEAT_TIMEOUT`` after its PING;
* a TTL in each PING, its sender's interval plus ``TTL_MARGIN``: the far
  end closes the connection when it heard nothing for that long (libzmq
  arms that timer at each PING it gets), even one that set no heartbeats of
  its own (a client in another language);
* ``CONNECT_TIMEOUT``: a connect attempt gives up after it and the next one
  starts ``RECONNECT_IVL`` later, so a healed path is used within about
  ``CONNECT_TIMEOUT``;
* ``HANDSHAKE_IVL``: a connection cut between TCP's handshake and ZeroMQ's
  is closed after this, not after libzmq's default 30 s.

Who pings how often. Each heartbeat wakes libzmq's I/O thread at both ends,
and a node in a full mesh holds two connections per peer, so heartbeats are
most of an idle node's CPU and grow with the mesh (docs/SCALING.md).

* Client links (a client's sockets, :func:`watch_link`): the node's bound
  end pings every ``HEARTBEAT_IVL``, the client every ``BACKSTOP_IVL``.
* Peer links (:func:`watch_peers`): the connecting end (``mesh_in``, a
  gateway's ``collect`` and ``inbound``) pings each of its links every
  :func:`peer_interval` of the number of links the socket has when it
  connects: 1 s up to ``pings`` links (default ``PEER_PINGS``), then longer,
  so that a socket sends about ``pings`` PINGs a second however large the
  mesh. The bound end (``out``, a gateway's ``group_face`` and
  ``gateway_out``; clients link to ``out`` too) pings every
  ``PEER_BACKSTOP_IVL`` only.

So a silent peer link is found dead, with ``I`` its interval, within
``I + HEARTBEAT_TIMEOUT`` at the connecting end (its PING unanswered) and
within ``I + TTL_MARGIN`` at the bound end (the TTL), and never later than
the bound end's backstop allows (its TTL, ``PEER_BACKSTOP_IVL + TTL_MARGIN``,
at the connecting end; ``PEER_BACKSTOP_IVL + HEARTBEAT_TIMEOUT`` at the bound
end). With the default of 16 PINGs a second: 4 and 3 s up to 16 peers; 7
and 6 s at 64 (I = 4 s); 10.9 and 9.9 s at 127 (I = 7.9 s); at most 12
and 13 s beyond. Detection time grows with the mesh in that proportion;
``--heartbeat-pings`` trades it for idle CPU. The bound end's PINGs are also
what finds a connecting end that went silent before its first PING (the TTL
is armed by a PING): within 13 s.

libzmq copies these options into a connection when it is made: a bound
socket's listener takes them at ``bind()`` (set on the bound socket later,
they reach no connection, new or old), and a ``connect()`` takes them when
it is called and keeps them for its reconnections. So the connecting end
sets its interval before each ``connect()``, for the number of links the
socket has then (:func:`pace`), and a link made while the mesh was smaller
keeps its shorter interval.

A closed connection makes the connecting side connect again, and ZeroMQ
sends an XSUB's or SUB's subscriptions over each new connection, so
interest comes back by itself. Messages sent while a link was down are lost
to it; subscribers count them as gaps from the sequence numbers.
"""

import zmq

HEARTBEAT_IVL = 1000  # ms: a node's client sockets, and the most often a peer link is pinged
HEARTBEAT_TIMEOUT = 3000
TTL_MARGIN = 2000  # a PING's TTL is its sender's interval plus this
BACKSTOP_IVL = 3000  # a client's connecting sockets
PEER_BACKSTOP_IVL = 10000  # a bound socket that peers link to
PEER_PINGS = 16  # PINGs a second a connecting peer socket sends at most, by default
CONNECT_TIMEOUT = 2000
RECONNECT_IVL = 100
HANDSHAKE_IVL = 10000

_OPTIONS = ((zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT), (zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT),
            (zmq.RECONNECT_IVL, RECONNECT_IVL), (zmq.HANDSHAKE_IVL, HANDSHAKE_IVL))


def peer_interval(links, pings=PEER_PINGS):
    """Milliseconds between PINGs on each of a connecting socket's ``links``:
    ``HEARTBEAT_IVL``, or longer so that all of them together make at most
    ``pings`` PINGs a second."""
    if pings <= 0:
        raise ValueError(f"pings must be positive, not {pings!r}")
    return max(HEARTBEAT_IVL, -(-links * 1000 // pings))


def pace(sock, interval):
    """PING every ``interval`` ms, with a TTL to match, on the connections
    ``sock`` makes from now on (a connecting socket: call before ``connect``)."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, interval)
    sock.setsockopt(zmq.HEARTBEAT_TTL, interval + TTL_MARGIN)


def _watch(sock, interval):
    pace(sock, interval)
    for option, value in _OPTIONS:
        sock.setsockopt(option, value)
    return sock


def watch_link(sock, *, binds):
    """A client link: give ``sock`` the options above, as the side that
    ``binds`` (a node) or connects (a client); call before it binds or connects."""
    return _watch(sock, HEARTBEAT_IVL if binds else BACKSTOP_IVL)


def watch_peers(sock, *, binds):
    """A peer link: give ``sock`` the options above, as the bound side (the
    backstop) or the connecting side (``HEARTBEAT_IVL`` until :func:`pace`
    says otherwise); call before it binds or connects."""
    return _watch(sock, PEER_BACKSTOP_IVL if binds else HEARTBEAT_IVL)
