"""A mesh of hosts (network namespaces on bridges, tests/netns.py; one node and
one client per host, every host publishing to every host, tests/meshbed.py):
a rolling restart of every node under traffic, a host whose clock is off by
3 s against history recovery, and the README's static example.

Every subscriber must end with received + gaps = sent; where nothing is lost
for good (recovery, the static mesh), every message once and in order."""

import time

import pytest
from meshbed import MeshBed, resumed_after
from netns import unavailable
from skewclock import unavailable as clocks_unavailable

why_not = unavailable()
pytestmark = pytest.mark.skipif(why_not is not None, reason=str(why_not))


def check_accounts(result, what):
    sent = result["sent"]
    print(f"[measure] {what}: sent {sent}, per subscriber {result['subscribers']}")
    for name, got in result["subscribers"].items():
        assert got["received"] + got["gaps"] == sent, f"{name}: {got} of {sent} sent"
        assert got["dropped"] == 0, name


def streams_in_order(result, subscriber):
    """Per publisher, the sequence numbers ``subscriber`` received: each must be
    every message of the stream once, in order."""
    log = result["logs"][subscriber]
    for publisher, sent in result["sent_by"].items():
        seqs = [seq for subject, _, _, _, seq, _ in log if subject == f"part.{publisher}"]
        assert seqs == list(range(1, sent + 1)), \
            f"{publisher} -> {subscriber}: {len(seqs)} of {sent}, first {seqs[:3]}, out of order or repeated"


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "kill-9"])
def test_a_rolling_restart_of_every_host_under_traffic(kill):
    """Each host's node in turn is stopped (SIGTERM, or kill -9 while its
    ZooKeeper session lives on) and started again at once under the same name
    and address. The killed node's name is still registered: it must take it
    back at once, not be refused. Its client reattaches, the others relink;
    delivery resumes from every publisher to every subscriber after each
    restart, and what a restarting node's subscriber missed counts as gaps."""
    mesh = MeshBed(3, zk_timeout=4, mesh="roll")
    try:
        names = [host.name for host in mesh.hosts]
        restarts = []  # (host, what MeshBed.restart measured)

        def restart(name):
            return lambda: restarts.append((name, mesh.restart(name, kill=kill)))

        result = mesh.run([(2, restart(name)) for name in names])
        resumed = [resumed_after(times["ready_at"], list(result["logs"].values()), names) for _, times in restarts]
        how = "kill -9" if kill else "SIGTERM"
        for (name, times), after in zip(restarts, resumed):
            print(f"[measure] {how} {name}: new node ready {times['ready']} s after the stop, every link up after "
                  f"{times['linked']} s, delivery from every host to every host {after} s after it was ready")
        check_accounts(result, f"rolling restart ({how})")
        assert None not in resumed, f"delivery did not resume after every restart: {resumed}"
    finally:
        mesh.close()


@pytest.mark.skipif(clocks_unavailable() is not None, reason=str(clocks_unavailable()))
def test_a_host_whose_clock_is_3_s_ahead_against_history_recovery():
    """h1's clock is 3 s ahead (its node and its client: libfaketime). h2's
    client publishes through h1's node, which so records messages stamped
    3 s behind its own clock; history keeps 4 s. h1's client uses h3's node.
    The readers at h1 (position taken on the fast clock) and h3 leave for 2 s
    while h1 and h2 publish and h3 starts a new stream, which their positions
    do not name (recovered from the position's time). Back with ``since=``,
    every stream is complete: each subscriber has every message once, in
    order. (Age counted from the publisher's timestamp kept h2's messages
    1 s: ``evicted``, the loss counted as gaps.)"""
    mesh = MeshBed(3, zk_timeout=4, mesh="skew", node_args=["--history", "part.>=100000/4s"], skew={"h1": 3})
    try:
        mesh.start_clients(attach={"h1": "h3", "h2": "h1"})
        h1, h2, h3 = (mesh.client(name) for name in ("h1", "h2", "h3"))
        h1.tell("go")
        h2.tell("go")
        time.sleep(2)
        for reader in (h1, h3):
            reader.tell("leave")
        left = {reader.name: reader.answer("left")["left"] for reader in (h1, h3)}
        print(f"[measure] position times: h1 {left['h1']:.2f}, h3 {left['h3']:.2f} (h1 ahead by "
              f"{left['h1'] - left['h3']:.2f} s)")
        assert left["h1"] - left["h3"] > 2, "h1's clock should be ahead"
        time.sleep(0.5)
        h3.tell("go")
        time.sleep(1.5)
        for reader in (h1, h3):
            reader.tell("back")
        backs = {reader.name: reader.answer("back", timeout=30)["back"] for reader in (h1, h3)}
        time.sleep(2)
        result = mesh.account()
        for name, back in backs.items():
            print(f"[measure] {name} back from 2 s away: replayed {back['replayed']}, streams {back['streams']}")
        check_accounts(result, "h1 3 s ahead, readers at h1 and h3 away 2 s")
        for name, back in backs.items():
            assert back["recovered"], f"{name}: {back}"
            assert sorted(subject for _, subject, _ in back["streams"]) == ["part.h1", "part.h2", "part.h3"], back
        for name in result["logs"]:
            streams_in_order(result, name)
            assert result["subscribers"][name]["gaps"] == 0, name
        for name in ("h1", "h3"):  # the new stream's first messages came from history
            assert any(replayed for subject, *_, replayed in result["logs"][name] if subject == "part.h3"), name
    finally:
        mesh.close()


def test_the_readme_static_example_across_three_hosts():
    """README: a; b --peer a; c --peer a; no ZooKeeper, one host each (h1 is
    a). b and c find each other through a, and every host's publisher
    reaches every host's subscriber: every message once, in order."""
    mesh = MeshBed(3, zookeeper=False)
    try:
        result = mesh.run([], settle=2)
        check_accounts(result, "README static example, three hosts")
        for name in result["logs"]:
            streams_in_order(result, name)
            assert result["subscribers"][name]["gaps"] == 0
    finally:
        mesh.close()
