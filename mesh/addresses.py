"""Node addresses as text: ``HOST:PORT`` with IPv6 hosts in brackets
(``[::1]:7400``), and the ZeroMQ TCP endpoints made from them
(``tcp://[::1]:7400``). Pure text; no sockets."""

import ipaddress


def is_ipv6(host):
    """True for an IPv6 address (with or without brackets)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).version == 6
    except ValueError:
        return False


def join_host_port(host, port):
    """``HOST:PORT``, the host in brackets when it is an IPv6 address."""
    host = host.strip("[]") if host.startswith("[") else host
    return f"[{host}]:{port}" if is_ipv6(host) else f"{host}:{port}"


def split_host_port(address):
    """(host, port) of ``HOST:PORT`` or ``[IPV6]:PORT`` (a ``tcp://`` in front is
    allowed), the host without brackets; ValueError if it is not one."""
    text = address.removeprefix("tcp://")
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not is_ipv6(host):
            raise ValueError(f"node address {address!r}: {host!r} in brackets is not an IPv6 address")
    elif ":" in host:
        raise ValueError(f"node address {address!r} is not HOST:PORT (write an IPv6 address in brackets: "
                         f"[{host}]:{port})")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"node address {address!r} is not HOST:PORT")
    return host, int(port)


def tcp_endpoint(host, port):
    """``tcp://HOST:PORT`` (``port`` may be ``*``), an IPv6 host in brackets."""
    return "tcp://" + join_host_port(host, port)
