"""Hosts as network namespaces on Linux bridges, for partition tests and the bench.

A :class:`Testbed` makes N namespaces (the hosts) and two bridges in this
namespace: the data bridge (10.77.S.1..N, where the nodes bind and talk) and
the ZooKeeper bridge (hosts at 10.77.S.129.., the bridge itself at
10.77.S.254, where ZooKeeper listens). Each host has one veth on each bridge,
so its data links and its ZooKeeper session can be cut apart:

* silent cut: the host's bridge port leaves the bridge (``nomaster``): packets
  vanish, the carrier stays up, as on a failed switch; nothing tells TCP;
* loud cut: the bridge port goes down: the host sees its carrier drop;
* pair cut: two hosts' data ports are made *isolated* bridge ports, which
  cannot reach each other but still reach every other port (one host cut
  from one peer only; the bridge's own address is unaffected).

This namespace reaches the data bridge at 10.77.S.126 (the tests' control
requests), so a host whose data port is cut cannot be asked anything. The
data bridge carries IPv6 too: host N is also fd77:S::N (``ip6``), this
namespace fd77:S::7e.

Only this machine is touched and only what is made here: the namespaces,
veths and bridges are deleted by :meth:`Testbed.close`, also when making them
failed half way. ``S`` is picked so that no interface here uses 10.77.S yet
(tests running at once get different subnets). :func:`unavailable` says why
a test bed cannot be made here (not root, no ``ip netns``), for skips.
"""

import itertools
import os
import subprocess

DATA_PREFIX = 25  # 10.77.S.0/25 data, 10.77.S.128/25 ZooKeeper
ZK_BRIDGE_HOST = 254
ROOT_DATA_HOST = 126
_serial = itertools.count()


def _ip(*args):
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode:
        raise OSError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def unavailable():
    """Why a test bed cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the partition tests as root)"
    probe = f"meshprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (OSError, FileNotFoundError) as exc:
        return f"ip netns is not permitted here: {exc}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _free_subnet():
    """A third octet S such that no interface here has an address in 10.77.S.0/24."""
    taken = {int(word.split(".")[2]) for word in _ip("-o", "-4", "addr").split() if word.startswith("10.77.")}
    start = (os.getpid() * 7 + next(_serial) * 31) % 250
    for step in range(250):
        candidate = (start + step) % 250 + 1
        if candidate not in taken:
            return candidate
    raise OSError("every 10.77.S.0/24 subnet is in use")


class Host:
    """One namespace with a veth on each bridge."""

    def __init__(self, bed, index):
        self.bed = bed
        self.name = f"h{index + 1}"
        self.netns = f"{bed.tag}{self.name}"
        self.ip = f"10.77.{bed.subnet}.{index + 1}"
        self.zk_ip = f"10.77.{bed.subnet}.{129 + index}"
        self.ip6 = f"fd77:{bed.subnet:x}::{index + 1:x}"
        self.data_port = f"{bed.tag}{self.name}d"  # the bridge side of each veth, in this namespace
        self.zk_port = f"{bed.tag}{self.name}z"

    def _make(self):
        _ip("netns", "add", self.netns)
        self.bed.made_netns.append(self.netns)
        for port, bridge, inside, address in ((self.data_port, self.bed.data_bridge, "data0", self.ip),
                                               (self.zk_port, self.bed.zk_bridge, "zk0", self.zk_ip)):
            _ip("link", "add", port, "type", "veth", "peer", "name", inside, "netns", self.netns)
            self.bed.made_links.append(port)
            _ip("link", "set", port, "master", bridge, "up")
            self.run_ip("addr", "add", f"{address}/{DATA_PREFIX}", "dev", inside)
            self.run_ip("link", "set", inside, "up")
        self.run_ip("-6", "addr", "add", f"{self.ip6}/64", "dev", "data0", "nodad")
        self.run_ip("link", "set", "lo", "up")

    @property
    def prefix(self):
        """Command prefix that runs a program inside this host."""
        return ["ip", "netns", "exec", self.netns]

    def run_ip(self, *args):
        return _ip("-n", self.netns, *args)

    # -- partitions -------------------------------------------------------

    def cut(self, data=True, zk=True):
        """Silent: take the host's bridge ports out of their bridges."""
        for port in self._ports(data, zk):
            _ip("link", "set", port, "nomaster")

    def heal(self, data=True, zk=True):
        for port, bridge in zip(self._ports(data, zk), self._bridges(data, zk)):
            _ip("link", "set", port, "master", bridge)

    def down(self, data=True, zk=True):
        """Loud: the host's bridge ports go down; it sees its carrier drop."""
        for port in self._ports(data, zk):
            _ip("link", "set", port, "down")

    def up(self, data=True, zk=True):
        for port in self._ports(data, zk):
            _ip("link", "set", port, "up")

    def isolate(self, on=True):
        """Make the data port isolated: no traffic with other isolated ports (see Testbed.cut_pair)."""
        subprocess.run(["bridge", "link", "set", "dev", self.data_port, "isolated", "on" if on else "off"],
                       check=True, capture_output=True)

    def _ports(self, data, zk):
        return [port for port, wanted in ((self.data_port, data), (self.zk_port, zk)) if wanted]

    def _bridges(self, data, zk):
        return [bridge for bridge, wanted in ((self.bed.data_bridge, data), (self.bed.zk_bridge, zk)) if wanted]

    def __repr__(self):
        return f"<Host {self.name} {self.ip} netns={self.netns}>"


class Testbed:
    """``count`` hosts on a data bridge and a ZooKeeper bridge (see the module)."""

    def __init__(self, count):
        self.subnet = _free_subnet()
        self.tag = f"m{os.getpid() % 100000}{next(_serial)}x"[:10]
        self.data_bridge = f"{self.tag}bd"
        self.zk_bridge = f"{self.tag}bz"
        self.zk_address = f"10.77.{self.subnet}.{ZK_BRIDGE_HOST}"
        self.root_data_address = f"10.77.{self.subnet}.{ROOT_DATA_HOST}"
        self.made_links = []
        self.made_netns = []
        self.hosts = [Host(self, index) for index in range(count)]
        try:
            for bridge, address in ((self.data_bridge, self.root_data_address), (self.zk_bridge, self.zk_address)):
                _ip("link", "add", bridge, "type", "bridge")
                self.made_links.append(bridge)
                _ip("addr", "add", f"{address}/{DATA_PREFIX}", "dev", bridge)
                _ip("link", "set", bridge, "up")
            _ip("-6", "addr", "add", f"fd77:{self.subnet:x}::{ROOT_DATA_HOST:x}/64", "dev", self.data_bridge, "nodad")
            for host in self.hosts:
                host._make()
        except BaseException:
            self.close()
            raise

    def cut_pair(self, a, b):
        """Silent: ``a`` and ``b`` cannot reach each other; both still reach the rest."""
        a.isolate()
        b.isolate()

    def heal_pair(self, a, b):
        a.isolate(False)
        b.isolate(False)

    def close(self):
        """Delete everything made here (deleting a veth's one end deletes both)."""
        for link in reversed(self.made_links):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        for netns in self.made_netns:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        self.made_links.clear()
        self.made_netns.clear()
