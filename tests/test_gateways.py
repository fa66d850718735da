"""Groups joined by gateways (nodes/gateway.py, discovery/gateways.py), with
real ZooKeeper and real ``meshnode`` processes: delivery between groups, no
duplicates, interest that goes away with its subscribers, and a gateway
killed with SIGKILL whose successor takes over."""

import time

import pytest

from mesh import Client
from meshhelpers import assert_quiet, collect, warm_up
from nodeproc import linked, wait_until


@pytest.fixture
def grouped(zk_server, zk_node):
    """grouped(name, group, gateway=False): a node of ``group`` found through ZooKeeper."""
    def start(name, group, gateway=False):
        return zk_node(name, zk_server.hosts, "--group", group, *(["--gateway"] if gateway else []))
    return start


def gateway_of(node):
    return node.stats().get("gateway", {})


def serving(gateway, groups):
    """The gateway is active and linked to a candidate of each of ``groups``."""
    stats = gateway_of(gateway)
    return stats.get("active") and stats["groups"] == sorted(groups) and stats["gateway_links"]["up"] >= len(groups)


def test_two_groups_exchange_messages_through_their_gateways_once_each(grouped):
    a1, a2 = grouped("a1", "A", gateway=True), grouped("a2", "A")
    b1, b2 = grouped("b1", "B", gateway=True), grouped("b2", "B")
    wait_until(lambda: linked(a1, a2) and linked(b1, b2), what="each group a full mesh of its own")
    assert a2.peer_names() == ["a1"] and b2.peer_names() == ["b1"]  # no links across groups
    wait_until(lambda: serving(a1, ["B"]) and serving(b1, ["A"]), what="both gateways active and linked")
    clients = {n.name: Client(n.address) for n in (a1, a2, b1, b2)}
    try:
        subs = {name: c.subscribe("news.>") for name, c in clients.items()}
        for name, client in clients.items():  # from a gateway and from a plain member of each group
            warm_up(client, f"news.{name}", subs.values())
            for i in range(50):
                client.publish(f"news.{name}", i)
            client.flush()
            for sub_name, sub in subs.items():
                got = [m.data for m in collect(sub, 50)]
                assert got == list(range(50)), f"{name} -> {sub_name}"
        for sub in subs.values():
            assert_quiet(sub)  # nothing twice
        crossed = gateway_of(a1)["messages"]
        assert crossed["to_other_groups"] > 0 and crossed["from_other_groups"] > 0
    finally:
        for c in clients.values():
            c.close()


def test_interest_crosses_only_while_a_subscriber_wants_it(grouped):
    a1, a2 = grouped("a1", "A", gateway=True), grouped("a2", "A")
    b1, b2 = grouped("b1", "B", gateway=True), grouped("b2", "B")
    wait_until(lambda: serving(a1, ["B"]) and serving(b1, ["A"]) and linked(a1, a2) and linked(b1, b2),
               what="two groups")
    publisher, listener = Client(a2.address), Client(b2.address)
    try:
        wait_until(lambda: not publisher.has_interest("only.b"), what="nobody wants only.b yet")
        sub = listener.subscribe("only.b")
        wait_until(lambda: publisher.has_interest("only.b"), what="b2's interest reaching a2 through gateways")
        warm_up(publisher, "only.b", [sub])
        sub.unsubscribe()
        # The gateways' own subscriptions must not keep the interest alive (no echo between gateways).
        wait_until(lambda: not publisher.has_interest("only.b"), what="the interest withdrawn in group A")
        before = gateway_of(a1)["messages"]["to_other_groups"]
        for i in range(20):
            publisher.publish("only.b", i)
        publisher.flush()
        time.sleep(0.5)
        assert gateway_of(a1)["messages"]["to_other_groups"] == before  # nothing crossed for nobody
    finally:
        publisher.close()
        listener.close()
