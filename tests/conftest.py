import pytest

from meshtest.nodeproc import NodeProcess, linked, start_mesh3, wait_until


@pytest.fixture
def start_node():
    """Factory for real node processes; every one is stopped (by PID) after the test."""
    started = []

    def start(name, *extra, peers=(), prefix=(), exact=False):
        args = list(extra)
        for peer in peers:
            args += ["--peer", peer.address if isinstance(peer, NodeProcess) else peer]
        node = NodeProcess(name, *args, prefix=prefix, exact=exact)
        started.append(node)
        return node

    yield start
    for node in started:
        node.kill()
        # Shown by pytest only when the test failed.
        print(f"--- {node.name} (pid {node.pid}) stderr ---\n{node.stderr_text[-4000:]}")


@pytest.fixture
def edge_pair(start_node):
    """A plain node A and an edge node E (--http) linked to it."""
    a = start_node("A")
    e = start_node("E", "--http", "0", peers=[a])
    wait_until(lambda: linked(a, e), what="link")
    return a, e


@pytest.fixture
def mesh3(start_node):
    """Three linked nodes A, B, C (B and C name A; links are symmetric)."""
    return start_mesh3(start_node)


from zk_fixtures import zk_ensemble, zk_server  # noqa: E402,F401  (real ZooKeeper fixtures)


@pytest.fixture
def zk_node(start_node):
    """Start a node that finds its peers through ZooKeeper: zk_node(name, zk_hosts, *extra)."""
    def start(name, hosts, *extra, mesh="test", timeout="2"):
        return start_node(name, "--zk", hosts, "--mesh", mesh, "--zk-timeout", timeout, *extra)
    return start
from browser_fixtures import chromium, page  # noqa: E402,F401  (real headless Chromium)
