"""Real partitions between hosts: network namespaces on bridges (tests/netns.py),
ZooKeeper on the bridge, one node per host, every host publishing to every host
(tests/meshbed.py). After each heal delivery must resume, and every message sent
must be received or counted as a gap at every subscriber.

Silent cuts take a bridge port out of its bridge: nothing tells TCP. Their
lengths are picked so that the heal falls between two of the kernel's SYN
retries (1, 3, 7, 15, 31 s after a connect began), where links that wait on
them stay down for many seconds. The 60 s flap and the longer schedules are in
bench/partitions.py."""

import pytest

from meshbed import MeshBed, step
from netns import unavailable

why_not = unavailable()
pytestmark = pytest.mark.skipif(why_not is not None, reason=str(why_not))

RESUME_WITHIN = 10.0  # seconds; a link waiting on the kernel's SYN back-off takes 14 s or more here


@pytest.fixture
def mesh():
    bed = MeshBed(3, zk_timeout=4)
    try:
        yield bed
    finally:
        bed.close()


def cut_and_heal(cut, heal, seconds):
    return [(0, step(cut)), (seconds, step(heal, heal=True))]


def check(result, shape):
    sent = result["sent"]
    print(f"[measure] {shape}: sent {sent}, per subscriber {result['subscribers']}, "
          f"resumed {result['resumed']} s after the heal(s)")
    for name, got in result["subscribers"].items():
        assert got["received"] + got["gaps"] == sent, f"{name}: {got} of {sent} sent"
        assert got["dropped"] == 0
    for resumed in result["resumed"]:
        assert resumed is not None and resumed < RESUME_WITHIN, result["resumed"]


def test_a_host_cut_off_longer_than_the_zookeeper_session_comes_back(mesh):
    """h2 vanishes (data and ZooKeeper) for 20 s: the others drop it from the
    membership and take it back when its new session registers it again, while
    its own links closed on heartbeats and had to be made again."""
    h2 = mesh.host("h2")
    result = mesh.run(cut_and_heal(h2.cut, h2.heal, 20))
    check(result, "silent host cut, 20 s > --zk-timeout 4")
    assert result["subscribers"]["h2"]["gaps"] > 0, "the cut should have cost h2 messages"


def test_data_links_cut_while_zookeeper_stays_reachable(mesh):
    """Only h2's data port is cut: the membership never changes, so nothing but
    the links themselves can find the dead connections and make new ones."""
    h2 = mesh.host("h2")
    result = mesh.run(cut_and_heal(lambda: h2.cut(zk=False), lambda: h2.heal(zk=False), 20))
    check(result, "data links cut 20 s, ZooKeeper reachable")
    assert result["subscribers"]["h2"]["gaps"] > 0


def test_a_client_cut_from_its_node_on_another_host(mesh):
    """h3's client uses h2's node; h2 vanishes for 20 s. The client finds its node
    gone (its watch's heartbeats), holds its publishes, and attaches again soon
    after the heal: its subscription is re-made, what it missed counts as gaps."""
    h2 = mesh.host("h2")
    result = mesh.run(cut_and_heal(h2.cut, h2.heal, 20), attach={"h3": "h2"})
    check(result, "client at h3 on node h2, h2 cut 20 s")
    assert result["subscribers"]["h3"]["gaps"] > 0


def test_zookeeper_cut_while_data_links_stay_up(mesh):
    """Only h2's ZooKeeper port is cut, past its session: the others drop h2
    (and unlink from it) although every data path works, then take it back."""
    h2 = mesh.host("h2")
    result = mesh.run(cut_and_heal(lambda: h2.cut(data=False), lambda: h2.heal(data=False), 10))
    check(result, "ZooKeeper cut 10 s, data links up")


def test_a_host_cut_off_shorter_than_the_zookeeper_session(mesh):
    """5 s: longer than the 3 s heartbeat timeout (the links close), shorter than
    the session (the membership stays); the loud variant too (link down)."""
    h2 = mesh.host("h2")
    result = mesh.run([*cut_and_heal(h2.cut, h2.heal, 3.5), (3, step(h2.down)), (3.5, step(h2.up, heal=True))])
    check(result, "silent cut 3.5 s then loud cut 3.5 s, < --zk-timeout 4")


def test_one_host_cut_from_one_peer_only(mesh):
    """h1 and h2 cannot reach each other for 20 s; both reach h3 and ZooKeeper."""
    h1, h2 = mesh.host("h1"), mesh.host("h2")
    result = mesh.run(cut_and_heal(lambda: mesh.bed.cut_pair(h1, h2), lambda: mesh.bed.heal_pair(h1, h2), 20))
    check(result, "h1 and h2 cut from each other 20 s")
    assert result["subscribers"]["h2"]["gaps"] > 0


def test_a_flapping_link(mesh):
    """h2's ports leave the bridge for 4 s and come back for 3 s, four times."""
    h2 = mesh.host("h2")
    schedule = []
    for _ in range(4):
        schedule += [(3, step(h2.cut)), (4, step(h2.heal, heal=True))]
    check(mesh.run(schedule), "h2 flapping 4 s down / 3 s up, 4 times")
