"""pytest fixtures for real ZooKeeper processes (see zkserver.py).

Import them from conftest.py or a test module:
    from zk_fixtures import zk_server, zk_ensemble  # noqa: F401
"""

import pytest

from meshtest.zkserver import ZooKeeperEnsemble, ZooKeeperServer


@pytest.fixture
def zk_server():
    """A standalone ZooKeeper (tickTime 500 ms, so 1 s sessions are allowed),
    serving on a free loopback port; stopped by PID and its temp dir removed after."""
    server = ZooKeeperServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def zk_ensemble():
    """A 3-member ZooKeeper ensemble with a quorum (one leader, two followers);
    every member is stopped by PID and the temp dirs removed after."""
    ensemble = ZooKeeperEnsemble()
    try:
        ensemble.start()
        yield ensemble
    finally:
        ensemble.close()
