"""IPv6 (mesh/addresses.py, mesh/context.py): nodes on ::1 bind, advertise,
link, deliver and print their addresses as [::1]:PORT; peers given as
[ADDR]:PORT, through static membership and through ZooKeeper records; the
edge's HTTP port on ::1."""

import subprocess
import sys

import pytest

from edgehelpers import http, http_address
from meshtest.nodeproc import MESHNODE, linked, wait_until

from mesh import Client


def ready(node):
    return dict(part.split("=", 1) for part in node.ready_line.split()[2:])


def test_nodes_on_ipv6_loopback_link_deliver_and_serve_http(start_node):
    a = start_node("A", "--host", "::1")
    assert a.address.startswith("[::1]:")
    assert all(ready(a)[key].startswith("tcp://[::1]:") for key in ("ingress", "out", "remote"))
    b = start_node("B", "--host", "::1", "--advertise", "::1", peers=[a])
    e = start_node("E", "--host", "::1", "--http", "0", peers=[a])
    assert http_address(e).startswith("[::1]:")
    wait_until(lambda: linked(a, b, e), what="the mesh on ::1")
    assert {p["control"] for p in b.request("peers")["peers"]} == {f"tcp://{a.address}", f"tcp://{e.address}"}
    with Client(a.address) as here, Client(b.address) as there:
        sub = there.subscribe("v6.>")
        assert here.wait_for_interest("v6.x")
        here.publish("v6.x", "over ::1")
        assert sub.get(timeout=5).data == "over ::1"
    status, body = http("GET", f"http://{http_address(e)}/healthz")
    assert status == 200 and body["name"] == "E"
    peers = subprocess.run([sys.executable, MESHNODE, "peers", "--node", b.address], capture_output=True,
                           text=True, timeout=20)
    assert peers.returncode == 0 and f"{a.address}" in peers.stdout, peers.stderr


def test_nodes_on_ipv6_find_each_other_through_zookeeper(zk_server, zk_node):
    a = zk_node("A", zk_server.hosts, "--host", "::1")
    b = zk_node("B", zk_server.hosts, "--host", "::1", "--http", "0")
    wait_until(lambda: linked(a, b), timeout=20, what="the ZooKeeper mesh on ::1")
    record = next(p for p in a.request("peers")["peers"] if p["name"] == "B")
    assert record["control"] == f"tcp://{b.address}" and record["http"] == f"http://{http_address(b)}"
    with Client(b.address) as there, Client(a.address) as here:
        sub = there.subscribe("zk6.>")
        assert here.wait_for_interest("zk6.x")
        here.publish("zk6.x", 1)
        assert sub.get(timeout=5).data == 1


def test_an_ipv6_peer_without_brackets_is_a_clear_error():
    result = subprocess.run([sys.executable, MESHNODE, "run", "--port", "0", "--peer", "::1:7400"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "write an IPv6 address in brackets: [::1]:7400" in result.stderr


def test_nodes_in_two_namespaces_link_over_ipv6(start_node):
    from netns import Testbed, unavailable

    why_not = unavailable()
    if why_not is not None:
        pytest.skip(str(why_not))
    bed = Testbed(2)
    try:
        h1, h2 = bed.hosts
        a = start_node("A", "--host", h1.ip6, "--insecure", prefix=h1.prefix)
        assert a.address.startswith(f"[{h1.ip6}]:")
        b = start_node("B", "--host", h2.ip6, "--insecure", "--peer", a.address, prefix=h2.prefix)
        wait_until(lambda: linked(a, b), timeout=15, what="a link between the namespaces over IPv6")
        with Client(a.address) as here, Client(b.address) as there:
            sub = there.subscribe("ns6.>")
            assert here.wait_for_interest("ns6.x")
            for i in range(100):
                here.publish("ns6.x", i)
            assert [sub.get(timeout=5).data for _ in range(100)] == list(range(100))
            assert sub.gaps == 0
    finally:
        bed.close()
