"""Webhooks safe to expose (nodes/hooks/targets.py, nodes/hooks/delivery.py, the edge's /hooks
and /pub): no request forgery into inside addresses or the mesh's own ports, in any
spelling, at registration and at every delivery; no redirects followed; no loop
back into the mesh; the registry managed from loopback only when auth is off."""

import json
import socket
import subprocess
import sys
import time
import types
import urllib.request

import pytest
from edgehelpers import http, http_address
from hookhelpers import LOOPBACK, Receiver, ready
from meshtest.nodeproc import linked, wait_until

from mesh import Client, ControlError
from nodes.hooks.delivery import HookDelivery
from nodes.hooks.targets import TargetPolicy, TargetRefused

INSIDE = ["http://10.0.0.5/", "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data/",
          "http://172.17.0.1:2375/containers/json", "http://100.64.0.1/", "http://[::1]:8000/",
          "http://[fe80::1]/", "http://[fd00::1]/", "http://224.0.0.1/", "http://0.0.0.0:8000/",
          "http://[::]:8000/", "http://localhost:8000/", "http://127.1:8000/", "http://2130706433:8000/",
          "http://0x7f000001:8000/", "http://017700000001:8000/", "http://[::ffff:127.0.0.1]:8000/",
          "http://[::ffff:10.0.0.5]/", "http://[2002:a9fe:a9fe::]/", "http://[64:ff9b::7f00:1]/"]


def spellings(port):
    """This machine's loopback, written every way an attacker might."""
    return [f"http://{host}:{port}/pub/x" for host in ("127.0.0.1", "127.1", "2130706433", "0x7f000001",
                                                      "0.0.0.0", "[::ffff:127.0.0.1]", "localhost", "127.0.0.2")]


def ports_of(node):
    fields = dict(part.split("=", 1) for part in node.ready_line.split()[2:])
    return [int(fields["control"].rsplit(":", 1)[1]), int(fields["http"].rsplit(":", 1)[1]),
            *(int(fields[k].rsplit(":", 1)[1]) for k in ("ingress", "out", "remote"))]


def test_inside_addresses_are_refused_at_registration_in_every_spelling(start_node):
    a = start_node("A", "--http", "0")
    with Client(a.address) as client:
        for url in INSIDE + spellings(ports_of(a)[1]):
            with pytest.raises(ControlError, match="refused") as refused:
                client.register_hook("k", url)
            assert "bad_request" in str(refused.value)
        assert client.hooks() == []
    assert a.alive()


def test_with_loopback_opened_the_mesh_s_own_ports_stay_refused(start_node):
    """--hooks-allow 127.0.0.0/8 opens loopback, but neither this node's ports (any
    spelling) nor a peer's (its edge included) may be a target."""
    b = start_node("B", "--http", "0")
    a = start_node("A", "--http", "0", *LOOPBACK, peers=[b])
    wait_until(lambda: linked(a, b), what="A and B linked")
    receiver = Receiver()
    try:
        with Client(a.address) as client:
            for port in ports_of(a):
                for url in spellings(port):
                    with pytest.raises(ControlError, match="this node's own port"):
                        client.register_hook("k", url)
            for port in ports_of(b):
                with pytest.raises(ControlError, match="a mesh node's port"):
                    client.register_hook("k", f"http://127.1:{port}/pub/x")
            assert client.register_hook("k", receiver.url)["url"] == receiver.url  # the rest of loopback is open
            with pytest.raises(ControlError, match="private"):
                client.register_hook("k", "http://10.0.0.5/")  # only what was opened
    finally:
        receiver.close()


def test_a_name_that_resolves_inside_is_refused_at_delivery(start_node):
    """A registration that skipped the check (relayed from a peer) still cannot
    make the node POST inside: 'localhost' is refused when delivered, counted,
    dead-lettered, not retried."""
    a = start_node("A", "--http", "0")
    receiver = Receiver()
    url = receiver.url.replace("127.0.0.1", "localhost")

    def refused_total():
        text = urllib.request.urlopen(f"http://{http_address(a)}/metrics", timeout=5).read().decode()
        return [line for line in text.splitlines() if line.startswith("meshnode_hooks_refused_total")]

    try:
        reply = a.request("hook_add", key="kr", url=url, relay=False)  # as a peer relays it: unchecked
        assert reply["ok"], reply
        wait_until(lambda: ready([a], 1), what="the deliverer")
        with Client(a.address) as client:
            dead = client.subscribe("$dead.hooks.>")
            client.wait_for_subscription("$dead.hooks.>", 5)
            client.publish("hooks.kr.x", "to localhost")
            letter = dead.get(timeout=15)
            assert letter.data["error"].startswith("refused: ") and "loopback" in letter.data["error"]
            [listed] = client.hooks("kr")
        assert listed["refused"] == 1 and listed["failed"] == 1 and listed["retried"] == 0
        assert listed["last_error"] == letter.data["error"]
        assert receiver.requests == []
        assert refused_total() == ["meshnode_hooks_refused_total 1.0"]
        assert a.request("hook_rm", key="kr", url=url)["ok"]
        assert refused_total() == ["meshnode_hooks_refused_total 1.0"]  # a counter outlives its hook
    finally:
        receiver.close()


def test_each_delivery_resolves_again():
    """DNS rebinding: a name that passed once is checked again, and refused once it points inside."""
    answers = iter(["93.184.215.14", "127.0.0.1"])

    def resolve(host, port, **_):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    policy = TargetPolicy(resolve=resolve)
    assert policy.target("https://hooks.example/x?y=1").address == "93.184.215.14"
    with pytest.raises(TargetRefused, match="loopback"):
        policy.target("https://hooks.example/x?y=1")


def test_the_post_goes_to_the_checked_address_under_the_url_s_name():
    """urllib3 is handed the address the policy passed, never the name (which
    could resolve differently a second time); the Host header keeps the name."""
    receiver = Receiver()
    port = receiver.server.server_port
    policy = TargetPolicy(allow=["127.0.0.0/8"],
                          resolve=lambda host, p, **_: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p))]
                          if host == "hooks.example" else pytest.fail(f"resolved {host!r}"))
    delivery = HookDelivery(types.SimpleNamespace(targets=policy, listeners=[]))
    try:
        response = delivery.post(f"http://hooks.example:{port}/in?a=1", b"{}", {"Content-Type": "application/json"})
        assert response.status == 200
        headers, body = receiver.requests[0]
        assert headers["Host"] == f"hooks.example:{port}" and receiver.paths == ["/in?a=1"]
    finally:
        delivery.stop()
        receiver.close()


def test_redirects_are_not_followed(start_node):
    a = start_node("A", *LOOPBACK)
    elsewhere = Receiver()
    redirecting = Receiver(lambda n: (302, {"Location": elsewhere.url}))
    try:
        with Client(a.address) as client:
            dead = client.subscribe("$dead.hooks.>")
            client.register_hook("k3xx", redirecting.url)
            wait_until(lambda: ready([a], 1), what="the deliverer")
            client.publish("hooks.k3xx.x", 1)
            letter = dead.get(timeout=15)
        assert letter.data["error"] == "HTTP 302"
        assert len(redirecting.requests) == 1 and elsewhere.requests == []
    finally:
        elsewhere.close()
        redirecting.close()


def relay_to(edge, subject):
    """What a receiver that publishes back into the mesh does: POST /pub, passing on the hooks header."""
    def relay(headers, body):
        request = urllib.request.Request(f"http://{edge}/pub/{subject}", data=body, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "meshnode-hooks": headers["meshnode-hooks"]})
        urllib.request.urlopen(request, timeout=5).read()
    return relay


def test_a_hook_that_publishes_back_ends_after_one_round(start_node):
    """A hook whose receiver publishes onto the hook's own pattern, and two hooks
    feeding each other: one publish makes one delivery per hook, then the
    message that names the hook is not delivered to it again (counted looped)."""
    a = start_node("A", "--http", "0", *LOOPBACK)
    edge = http_address(a)
    itself = Receiver(then=relay_to(edge, "hooks.kself.again"))
    to_b = Receiver(then=relay_to(edge, "hooks.kb.from-a"))
    to_a = Receiver(then=relay_to(edge, "hooks.ka.from-b"))
    try:
        with Client(a.address) as client:
            watch = client.subscribe("hooks.>")
            client.register_hook("kself", itself.url)
            client.register_hook("ka", to_b.url)
            client.register_hook("kb", to_a.url)
            wait_until(lambda: ready([a], 3), what="the deliverers")
            client.publish("hooks.kself.start", 1)
            client.publish("hooks.ka.start", 2)
            wait_until(lambda: {h["key"]: h["looped"] for h in client.hooks()} == {"kself": 1, "ka": 1, "kb": 0},
                       timeout=15, what="each loop to end")
            time.sleep(1)  # nothing more comes
            seen = []
            while True:
                try:
                    seen.append(watch.get(timeout=0.5).subject)
                except TimeoutError:
                    break
        assert len(itself.requests) == 1 and len(to_b.requests) == 1 and len(to_a.requests) == 1
        assert sorted(seen) == sorted(["hooks.kself.start", "hooks.kself.again", "hooks.ka.start",
                                       "hooks.kb.from-a", "hooks.ka.from-b"])
        assert [h["meshnode-hooks"].count(",") for h, _ in to_a.requests] == [1]  # the chain grew: ka,kb
    finally:
        for receiver in (itself, to_b, to_a):
            receiver.close()


def test_a_bad_hooks_header_at_pub_is_a_clear_error(start_node):
    a = start_node("A", "--http", "0")
    status, reply = http("POST", f"http://{http_address(a)}/pub/x.y", b"1",
                         {"Content-Type": "application/json", "meshnode-hooks": "not-a-hook-id"})
    assert status == 400 and "meshnode-hooks" in reply["message"]
    assert a.alive()


def test_an_unregistered_hook_is_not_listed_again_from_zookeeper(zk_server, zk_node):
    a = zk_node("A", zk_server.hosts, *LOOPBACK)
    receiver = Receiver()
    try:
        with Client(a.address) as client:
            for _ in range(40):
                client.register_hook("kz", receiver.url)
                client.unregister_hook("kz", receiver.url)
                until = time.monotonic() + 0.3
                while time.monotonic() < until:
                    assert client.hooks("kz") == []
                    time.sleep(0.02)
    finally:
        receiver.close()


@pytest.fixture
def other_host():
    """One host in a network namespace on a bridge this namespace reaches at ``bed.root_data_address``."""
    from netns import Testbed, unavailable

    why_not = unavailable()
    if why_not:
        pytest.skip(why_not)
    bed = Testbed(1)
    yield bed
    bed.close()


def test_without_auth_the_registry_is_managed_from_loopback_only(start_node, other_host):
    """A client on another host gets 403 at /hooks unless the node runs with --hooks-open."""
    here = other_host.root_data_address
    closed = start_node("C", "--host", here, "--insecure", "--http", "0")
    opened = start_node("O", "--host", here, "--insecure", "--http", "0", "--hooks-open")
    ask = ("import sys, urllib.request, urllib.error\n"
           "try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n"
           "except urllib.error.HTTPError as exc:\n    print(exc.code, exc.read().decode())\n")

    def status_from_the_other_host(node):
        out = subprocess.run([*other_host.hosts[0].prefix, sys.executable, "-c", ask,
                              f"http://{http_address(node)}/hooks/k"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or out.stderr

    refused = status_from_the_other_host(closed)
    assert refused.startswith("403") and "--hooks-open" in json.loads(refused[4:])["message"]
    assert status_from_the_other_host(opened) == "200"


def test_without_auth_loopback_clients_manage_the_registry(start_node):
    a = start_node("A", "--http", "0", *LOOPBACK)
    receiver = Receiver()
    try:
        base = f"http://{http_address(a)}/hooks/kl"
        status, reply = http("POST", base, json.dumps({"url": receiver.url}).encode())
        assert status == 200 and reply["hook"]["url"] == receiver.url
        status, reply = http("POST", base, json.dumps({"url": "http://169.254.169.254/"}).encode())
        assert status == 400 and "link-local" in reply["message"]
    finally:
        receiver.close()
