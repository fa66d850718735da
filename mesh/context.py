"""The process's ZeroMQ context, with IPv6 on: every socket made from it binds
and connects to IPv6 addresses (``tcp://[::1]:7400``) as well as IPv4 ones
(libzmq's sockets take IPv4 only unless their IPV6 option is set)."""

import zmq


def shared_context():
    """``zmq.Context.instance()`` (a forked child gets a new one), with IPv6 on for new sockets."""
    context = zmq.Context.instance()
    context.set(zmq.IPV6, 1)
    return context
