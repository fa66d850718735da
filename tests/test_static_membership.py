"""Static membership (discovery/static.py) with real nodes: a node named once
joins the whole mesh, a departure is dropped everywhere and not taken back,
a seed that is down at start is retried."""

import os
import signal
import time

from meshhelpers import collect, warm_up
from meshtest.nodeproc import NodeProcess, free_port, linked, meshnode, wait_until

from mesh import Client
from mesh.everynode import ask_every_node

PER_PAIR = 50


def test_the_readme_star_delivers_between_every_pair(start_node):
    """README: a; b --peer a; c --peer a. c links to b, and every node's
    publisher reaches every node's subscriber: received + gaps = sent."""
    a = start_node("a")
    b = start_node("b", peers=[a])
    c = start_node("c", "--hooks-allow", "127.0.0.0/8", peers=[a])  # the hook below points at loopback
    started = time.monotonic()
    wait_until(lambda: linked(a, b, c), what="a full mesh from one seed")
    print(f"[measure] README star linked {time.monotonic() - started:.2f} s after c was ready")
    nodes = (a, b, c)
    clients = {n.name: Client(n.address) for n in nodes}
    try:
        subs = {name: client.subscribe("star.>") for name, client in clients.items()}
        for name, client in clients.items():
            warm_up(client, f"star.{name}", list(subs.values()))
        for name, client in clients.items():
            for i in range(PER_PAIR):
                client.publish(f"star.{name}", i)
        for name, sub in subs.items():
            got = collect(sub, PER_PAIR * len(nodes))
            for origin in clients:
                assert [m.data for m in got if m.subject == f"star.{origin}"] == list(range(PER_PAIR)), \
                    f"{origin} -> {name}"
            assert sub.gaps == 0
        # Relayed mesh-wide: a revocation and a webhook made at c reach a and b;
        # a mesh-wide read from c asks a and b.
        reply = c.request("revoke", sub="someone", seconds=60)
        assert reply["ok"] and reply["peers"] == {"a": "ok", "b": "ok"}
        assert b.stats()["revocations"] == 1
        clients["c"].register_hook("acct", "http://127.0.0.1:9/hook")
        wait_until(lambda: all(len(n.request("hook_ls")["hooks"]) == 1 for n in (a, b)), what="the hook at a and b")
        replies, missing = ask_every_node(clients["c"], "ping")
        assert sorted(replies) == ["a", "b", "c"] and not missing
    finally:
        for client in clients.values():
            client.close()


def test_a_departed_node_is_dropped_everywhere_and_not_taken_back(start_node):
    """d names only c (which named a): all four link. d's SIGTERM drops it at
    every node at once, and its own introduction replayed afterwards (a
    request still in flight on another connection) does not bring it back."""
    a = start_node("a")
    b = start_node("b", peers=[a])
    c = start_node("c", peers=[b, a])
    d = start_node("d", peers=[c])
    wait_until(lambda: linked(a, b, c, d), what="four linked")
    record = next(p for p in a.request("peers")["peers"] if p["name"] == "d")
    record.pop("link")
    assert d.stop() == 0
    started = time.monotonic()
    wait_until(lambda: all(n.peer_names() == [x for x in "abc" if x != n.name] for n in (a, b, c)),
               timeout=2, what="d dropped everywhere")
    print(f"[measure] SIGTERMed d dropped by a, b and c {time.monotonic() - started:.3f} s after it exited")
    for node in (a, b, c):
        assert node.request("peer", member=record)["ok"]  # first-hand, but from a departed instance
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert all("d" not in n.peer_names() for n in (a, b, c))
        time.sleep(0.1)


def test_a_stale_copy_from_a_peer_is_only_a_lead(start_node):
    """A record passed on by a peer is dialled, not linked: a member that was
    killed and is listed by a peer that still has it is not linked again."""
    a = start_node("a")
    b = start_node("b", peers=[a])
    wait_until(lambda: linked(a, b), what="a and b")
    ghost = dict(next(p for p in a.request("peers")["peers"] if p["name"] == "b"), name="ghost",
                 instance="0" * 32, control=f"tcp://127.0.0.1:{free_port()}")
    ghost.pop("link")
    reply = a.request("peer", member=dict(ghost, name="liar", instance="1" * 32,
                                          control=f"tcp://127.0.0.1:{free_port()}"), members=[ghost])
    assert reply["ok"]
    wait_until(lambda: a.peer_names() == ["b", "liar"], what="the introducer itself")
    time.sleep(2)
    assert "ghost" not in a.peer_names()


def test_a_seed_down_at_start_is_retried_and_the_mesh_forms(start_node):
    port = free_port()
    seed = f"127.0.0.1:{port}"
    b = start_node("b", peers=[seed])
    c = start_node("c", peers=[seed])
    time.sleep(2)
    assert b.peer_names() == c.peer_names() == []
    a = NodeProcess("a", port=port)
    try:
        wait_until(lambda: linked(a, b, c), what="the mesh, once its seed is up")
    finally:
        a.kill()


def test_a_restarted_node_replaces_its_record_at_once(start_node):
    """kill -9 and a restart on the same port within the expiry: the new
    instance replaces the old record everywhere and delivery works."""
    port = free_port()
    a = start_node("a")
    b = start_node("b", peers=[a])
    c = NodeProcess("c", "--peer", a.address, port=port)
    try:
        wait_until(lambda: linked(a, b, c), what="three linked")
        old = c.request("hello")["member"]["instance"]
        c.kill()
        c = NodeProcess("c", "--peer", a.address, port=port)
        new = c.request("hello")["member"]["instance"]
        instances = lambda n: {p["name"]: p["instance"] for p in n.request("peers")["peers"]}  # noqa: E731
        wait_until(lambda: instances(a)["c"] == instances(b)["c"] == new != old and linked(a, b, c),
                   timeout=4, what="the new instance everywhere")
        with Client(b.address) as pb, Client(c.address) as cc:
            sub = cc.subscribe("again")
            warm_up(pb, "again", [sub])
            pb.publish("again", "x")
            assert collect(sub, 1)[0].data == "x"
    finally:
        c.kill()


def test_a_bad_exchange_is_refused_whole_and_the_node_keeps_serving(start_node):
    a = start_node("a")
    b = start_node("b", peers=[a])
    wait_until(lambda: linked(a, b), what="a and b")
    good = dict(next(p for p in a.request("peers")["peers"] if p["name"] == "b"), name="z", instance="2" * 32,
                control=f"tcp://127.0.0.1:{free_port()}")
    good.pop("link")
    for fields, says in (({"members": "x"}, "members is a list"), ({"members": [{"name": "q"}]}, "member q"),
                         ({"members": [good] * 201}, "at most 200"), ({"departed": [["z"]]}, "departed is a list"),
                         ({"departed": [["bad name", "i"]]}, "node name 'bad name'")):
        reply = a.request("peer", member=good, **fields)
        assert not reply["ok"] and reply["error"] == "bad_member" and says in reply["message"], (fields, reply)
    assert a.peer_names() == ["b"] and a.request("ping")["ok"]


def test_every_node_given_the_whole_list_in_any_order_itself_included(start_node):
    """The config-file way: one list of every node for all, each node's own
    address in it (a's spelled differently from what it advertises), some
    seeds down when the first nodes start."""
    ports = [free_port() for _ in range(3)]
    seeds = [f"127.0.0.1:{p}" for p in ports]
    nodes = []
    try:
        nodes.append(NodeProcess("a", "--advertise", "localhost", *sum((["--peer", s] for s in seeds), []),
                                 port=ports[0]))
        nodes.append(NodeProcess("b", *sum((["--peer", s] for s in reversed(seeds)), []), port=ports[1]))
        time.sleep(1.5)
        nodes.append(NodeProcess("c", "--peer", seeds[2], "--peer", seeds[0], port=ports[2]))
        wait_until(lambda: linked(*nodes), what="the mesh from one list")
        time.sleep(1.5)
    finally:
        for node in nodes:
            node.kill()
    for node in nodes:
        assert "refused or sent a bad record" not in node.stderr_text, node.stderr_text
    assert "own control address" in nodes[0].stderr_text


def test_a_departure_passed_on_drops_that_instance_only(start_node):
    """``departed`` in an exchange drops the member if it is that instance and
    holds it off; a departure of another instance of the name changes nothing."""
    a = start_node("a")
    b = start_node("b", peers=[a])
    wait_until(lambda: linked(a, b), what="a and b")
    record = next(p for p in a.request("peers")["peers"] if p["name"] == "b")
    teller = dict(record, name="teller", instance="3" * 32, control=f"tcp://127.0.0.1:{free_port()}")
    teller.pop("link")
    assert a.request("peer", member=teller, departed=[["b", "4" * 32]])["ok"]
    time.sleep(1.5)
    assert "b" in a.peer_names()
    assert a.request("peer", member=teller, departed=[["b", record["instance"]]])["ok"]
    assert "b" not in a.peer_names()
    time.sleep(2)  # b introduces itself every second meanwhile
    assert "b" not in a.peer_names()


def test_a_name_held_by_a_running_node_is_refused_and_a_dead_holders_is_taken(start_node):
    """One name, one running node: a second 'b' does not start while b runs
    (found through the seed), nor while b is frozen; once b is dead the name
    is taken at once. A 'peer' introduction under a running node's own name
    is refused with name_taken."""
    a = start_node("a")
    b = start_node("b", peers=[a])
    wait_until(lambda: linked(a, b), what="a and b linked")
    twin = meshnode("run", "--name", "b", "--port", "0", "--peer", a.address)
    assert twin.returncode == 1 and "meshnode ready" not in twin.stdout
    assert f"node name 'b' is already taken by the node at tcp://{b.address} (it is alive)" in twin.stderr
    os.kill(b.pid, signal.SIGSTOP)  # frozen: it may come back
    try:
        frozen = meshnode("run", "--name", "b", "--port", "0", "--peer", a.address)
        assert frozen.returncode == 1 and "it did not answer" in frozen.stderr
    finally:
        os.kill(b.pid, signal.SIGCONT)
    record = {**a.request("hello")["member"], "name": "b", "instance": "f" * 32}  # endpoints elsewhere
    refused = b.request("peer", member=record)
    assert refused["error"] == "name_taken" and f"tcp://{b.address}" in refused["message"]
    b.kill()
    again = start_node("b", peers=[a])  # a still lists the dead b for up to 5 s: nothing listens there
    wait_until(lambda: linked(a, again), what="the new b linked")


def test_an_introduction_before_discovery_starts_is_answered_not_failed():
    """A node's control socket answers before its discovery starts (it first
    asks its seeds whether its name is taken): a peer's introduction then gets
    an answer, not an internal error, and the node learns the peer by its own
    dial once started."""
    import zmq

    from discovery.static import StaticDiscovery

    context = zmq.Context()
    try:
        discovery = StaticDiscovery(context, [])
        peer = {"name": "a", "instance": "i1", "control": "tcp://127.0.0.1:1"}
        assert discovery.announce(peer, {"view": "x"}) == {}
    finally:
        context.destroy(linger=0)
