"""A network namespace joined to this one by a veth pair, for partition tests.

Only this machine is touched: the namespace, the veth pair and the
10.77.N.0/24 addresses on it are created for a test and deleted after it.
"""

import itertools
import os
import subprocess

_numbers = itertools.count(os.getpid() % 200)


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class NetnsHost:
    def __init__(self):
        n = next(_numbers) % 250
        self.name = f"meshtest{os.getpid()}x{n}"
        self.host_link = f"mh{os.getpid() % 10000}x{n}"[:15]
        self.ns_link = f"mn{os.getpid() % 10000}x{n}"[:15]
        self.host_ip = f"10.77.{n}.1"
        self.ns_ip = f"10.77.{n}.2"
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.ns_link)
            _ip("link", "set", self.ns_link, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
            _ip("netns", "exec", self.name, "ip", "addr", "add", f"{self.ns_ip}/24", "dev", self.ns_link)
            _ip("netns", "exec", self.name, "ip", "link", "set", self.ns_link, "up")
            _ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise

    @property
    def prefix(self):
        """Command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def cut(self):
        _ip("link", "set", self.host_link, "down")

    def heal(self):
        _ip("link", "set", self.host_link, "up")

    def delete(self):
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
