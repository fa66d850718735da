"""Webhooks, targets: which addresses a webhook may be delivered to.

A webhook makes the node an HTTP client that POSTs wherever a registration
says, so the address it connects to is checked, not the URL's text: the host
is resolved (``getaddrinfo``, which also reads every spelling of an IPv4
address: ``127.1``, ``2130706433``, ``0x7f000001``), IPv4-mapped IPv6
addresses are read as the IPv4 address they carry, and the POST goes to the
first resolved address that passes, never to the name again (a second lookup
could answer differently). This runs at registration and at every delivery,
so a name that later resolves inside is refused then.

Refused unless an operator's ``--hooks-allow CIDR`` covers the address:
loopback, private (RFC 1918, 100.64.0.0/10, fc00::/7), link-local
(169.254.0.0/16, fe80::/10), unspecified, multicast and reserved addresses,
and IPv6 addresses that carry one of those (6to4, NAT64).
Refused always, allow-list or not: a port of a mesh node (this node's ports on
any address of this host, and the ports every member it knows publishes), so
a hook can never feed the mesh's own ports.
"""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, not in is_private
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class TargetRefused(ValueError):
    """A webhook target this node will not connect to; the message says why."""


@dataclass(frozen=True)
class Target:
    """Where one delivery goes: the checked ``address`` to connect to, and the URL's parts."""
    scheme: str
    host: str  # as the URL writes it: the Host header and, for https, the certificate's name
    port: int
    path: str  # path and query
    address: str  # the resolved address that passed the checks


def parse_url(url):
    """(scheme, host, port, path) of an http(s) URL with a host; TargetRefused if it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused(f"url {url!r} is not an http or https URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TargetRefused(f"url {url!r} has a bad port") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, path


def plain_address(text):
    """An ip_address from a resolved address, IPv4-mapped IPv6 read as IPv4 and a zone dropped."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def inside_kind(address):
    """What kind of inside address this is ("loopback", "private", ...), or None for a public one.
    An IPv6 address that carries an IPv4 one (6to4, NAT64) is that IPv4 address's kind too."""
    carried = embedded_ipv4(address)
    if carried is not None and inside_kind(carried) is not None:
        return f"{inside_kind(carried)} (carried in {address})"
    for kind in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved", "site_local"):
        if getattr(address, f"is_{kind}", False):
            return kind.replace("_", "-")
    if address.version == 4 and address in SHARED_ADDRESS_SPACE:
        return "shared (100.64.0.0/10)"
    return None


def embedded_ipv4(address):
    """The IPv4 address a 6to4 (2002::/16) or NAT64 (64:ff9b::/96) address carries, else None."""
    if address.version != 6:
        return None
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return ipaddress.ip_address(int(address) & 0xFFFFFFFF)
    return None


def is_local_address(address):
    """True when ``address`` belongs to this host (it can be bound to)."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


class TargetPolicy:
    def __init__(self, allow=(), own_ports=(), member_ports=lambda: (), resolve=None):
        """``allow``: networks (CIDR text or ip_network) the operator opened;
        ``own_ports``: this node's ports (a set it may add to later);
        ``member_ports()``: (host, port) pairs the mesh's other nodes publish;
        ``resolve``: getaddrinfo's signature (default: the socket module's, looked up at
        each call, so gevent's cooperative one once the process is patched)."""
        self.allow = [ipaddress.ip_network(network, strict=False) for network in allow]
        self.own_ports = own_ports if isinstance(own_ports, set) else set(own_ports)
        self._member_ports = member_ports
        self._resolve = resolve or (lambda *args, **kwargs: socket.getaddrinfo(*args, **kwargs))

    def target(self, url):
        """The Target a delivery to ``url`` connects to; TargetRefused naming the reason."""
        scheme, host, port, path = parse_url(url)
        addresses = self.addresses(host, port)
        reasons = []
        for address in addresses:
            reason = self.refusal(address, port)
            if reason is None:
                return Target(scheme, host, port, path, str(address))
            reasons.append(reason)
        raise TargetRefused(f"{host}:{port} is refused: {'; '.join(dict.fromkeys(reasons))}")

    def addresses(self, host, port):
        """The addresses ``host`` resolves to, in the resolver's order; TargetRefused if none."""
        try:
            found = self._resolve(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise TargetRefused(f"{host!r} does not resolve: {exc}") from None
        return list(dict.fromkeys(plain_address(info[4][0]) for info in found))

    def refusal(self, address, port):
        """Why a connection to ``address``:``port`` is refused, or None if it is allowed."""
        if port in self.own_ports and (address.is_loopback or address.is_unspecified or is_local_address(address)):
            return f"{address}:{port} is this node's own port"
        if (address, port) in self._mesh_ports():
            return f"{address}:{port} is a mesh node's port"
        kind = inside_kind(address)
        if kind is not None and not any(address in network for network in self.allow):
            article = "an" if kind[0] in "aeiou" else "a"
            return f"{address} is {article} {kind} address (open it with --hooks-allow)"
        return None

    def _mesh_ports(self):
        ports = set()
        for host, port in self._member_ports():
            try:
                ports.update((address, port) for address in self.addresses(host, port))
            except TargetRefused:
                continue
        return ports
