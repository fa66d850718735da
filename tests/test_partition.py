"""A real network partition: node C in its own network namespace, cut off by
taking its veth link down, then healed."""

import json
import subprocess
import sys
import threading
import time

import pytest

from mesh import Client
from netns import NetnsHost
from meshtest.nodeproc import MESHNODE, wait_until


@pytest.fixture
def netns_host():
    host = NetnsHost()
    yield host
    host.delete()


def test_partition_loss_is_reported_and_the_mesh_heals(start_node, netns_host):
    ip = netns_host.host_ip
    a = start_node("A", "--host", ip, "--insecure")
    b = start_node("B", "--host", ip, "--insecure", peers=[a])
    c = start_node("C", "--host", netns_host.ns_ip, "--insecure", peers=[a, b], prefix=netns_host.prefix)
    wait_until(lambda: a.peer_names() == ["B", "C"] and c.peer_names() == ["A", "B"], what="mesh")
    # The subscriber lives next to C, inside the namespace: the cut is between nodes.
    sub = subprocess.Popen([*netns_host.prefix, sys.executable, MESHNODE, "sub", "part.>", "--node", c.address,
                            "--timeout", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    got = []
    reader = threading.Thread(target=lambda: got.extend(json.loads(line) for line in sub.stdout))
    reader.start()
    published = []
    stop = threading.Event()
    try:
        with Client(a.address) as pub:
            def publish():
                while not stop.is_set():
                    published.append(pub.publish("part.x", time.time()))
                    time.sleep(0.01)

            publisher = threading.Thread(target=publish)
            publisher.start()
            wait_until(lambda: got, timeout=15, what="delivery before the cut")
            netns_host.cut()
            cut_at = len(published)
            wait_until(lambda: a.peer_names() == ["B"], timeout=15, what="A to drop C during the cut")
            time.sleep(1)
            netns_host.heal()
            healed = time.monotonic()
            healed_seq = published[-1]
            wait_until(lambda: got and got[-1]["seq"] > healed_seq, timeout=30, interval=0.01,
                       what="delivery after the heal")
            recovery = time.monotonic() - healed
            wait_until(lambda: a.peer_names() == ["B", "C"], timeout=15, what="A to relink C")
            stop.set()
            publisher.join()
        sub.wait(30)
        reader.join(10)
    finally:
        stop.set()
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    seqs = [m["seq"] for m in got]
    assert seqs == sorted(set(seqs)), "duplicates or reordering"
    missing = seqs[-1] - seqs[0] + 1 - len(seqs)
    assert missing > 0, "the cut should have lost messages"
    stderr = sub.stderr.read()
    assert f"meshnode sub: {missing} messages missed" in stderr, stderr
    print(f"[measure] partition: {len(published)} published, {cut_at} before the cut, {missing} lost and "
          f"reported as gaps, delivery resumed {recovery:.2f} s after the heal")
    assert recovery < 15
