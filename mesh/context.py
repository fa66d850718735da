"""The process's ZeroMQ context, with IPv6 on when the process uses IPv6
addresses: then every socket made from it binds and connects to IPv6
addresses (``tcp://[::1]:7400``) as well as IPv4 ones (libzmq's sockets take
IPv4 only unless their IPV6 option is set). It stays off otherwise: with it
on, a link closed by a heartbeat timeout to an IPv4 peer did not connect
again here (tests/test_mesh.py's frozen peer), so IPv4 meshes keep it off."""

import zmq

from .addresses import is_ipv6, split_host_port


def shared_context(*addresses):
    """``zmq.Context.instance()`` (a forked child gets a new one); IPv6 turned on for
    new sockets when one of ``addresses`` (hosts, ``HOST:PORT``, ``tcp://...``) is IPv6."""
    context = zmq.Context.instance()
    if any(uses_ipv6(address) for address in addresses if address):
        context.set(zmq.IPV6, 1)
    return context


def uses_ipv6(address):
    """True when ``address`` (a host, ``HOST:PORT``, ``[IPV6]:PORT`` or ``tcp://...``) is IPv6."""
    if is_ipv6(address):
        return True
    try:
        return is_ipv6(split_host_port(address)[0])
    except ValueError:
        return False
