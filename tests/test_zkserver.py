"""The real-ZooKeeper test fixtures (zkserver.py, zk_fixtures.py) work with kazoo."""

import os
import socket
import time

import pytest
from kazoo.client import KazooClient

from zk_fixtures import zk_ensemble, zk_server  # noqa: F401
from meshtest.zkserver import ZooKeeperError, ZooKeeperServer, four_letter_word


def pid_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); ours are reaped by Popen.wait().
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.fixture
def kazoo_client():
    """Factory for started kazoo clients; each is stopped and closed after the test."""
    clients = []

    def make(hosts, timeout=4.0):
        client = KazooClient(hosts=hosts, timeout=timeout)
        clients.append(client)
        client.start(timeout=10)
        return client

    yield make
    for client in clients:
        client.stop()
        client.close()


def write_until_ok(client, path, value, deadline_s=10.0):
    """Create ``path``; retry transient failures (connection loss during failover)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return client.create(path, value, makepath=True)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_standalone_serves_kazoo_then_stops(zk_server, kazoo_client):
    assert zk_server.hosts == f"127.0.0.1:{zk_server.port}"
    assert zk_server.is_serving()
    assert zk_server.mode() == "standalone"
    conf = four_letter_word(zk_server.port, "conf")
    assert "tickTime=500" in conf and "minSessionTimeout=1000" in conf

    client = kazoo_client(zk_server.hosts, timeout=1.0)  # 1 s session: allowed by tickTime 500
    client.create("/meshnode/probe", b"hello", makepath=True)
    value, stat = client.get("/meshnode/probe")
    assert value == b"hello" and stat.version == 0
    assert client.get_children("/meshnode") == ["probe"]
    client.stop()

    pid = zk_server.pid
    assert pid_exists(pid)
    zk_server.stop()
    assert not pid_exists(pid)
    assert not zk_server.running()
    assert not zk_server.is_serving()
    assert not port_open(zk_server.port)


def test_restart_and_crash_keep_data_and_port(zk_server, kazoo_client):
    writer = kazoo_client(zk_server.hosts)
    writer.create("/keep/a", b"1", makepath=True)
    writer.stop()
    port, old_pid = zk_server.port, zk_server.pid

    zk_server.restart()  # SIGTERM, then start on the same port and data dir
    assert zk_server.port == port and zk_server.pid != old_pid
    assert not pid_exists(old_pid)
    reader = kazoo_client(zk_server.hosts)
    assert reader.get("/keep/a")[0] == b"1"
    reader.set("/keep/a", b"2")
    reader.stop()

    crashed_pid = zk_server.pid
    zk_server.kill()  # SIGKILL: data written before must survive too
    assert not pid_exists(crashed_pid) and not zk_server.is_serving()
    zk_server.start()
    reader = kazoo_client(zk_server.hosts)
    value, stat = reader.get("/keep/a")
    assert value == b"2" and stat.version == 1


def test_context_manager_removes_everything():
    with ZooKeeperServer() as server:
        assert server.is_serving()
        pid, directory = server.pid, server.dir
        assert os.path.exists(os.path.join(directory, "zoo.cfg"))
        assert os.path.getsize(server.log_path) > 0  # slf4j-simple gives us logs
    assert not pid_exists(pid)
    assert not os.path.exists(directory)


def test_failed_start_is_clear_and_leaves_no_process():
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    server = ZooKeeperServer(port=blocker.getsockname()[1])  # an explicit port: no retry
    try:
        with pytest.raises(ZooKeeperError, match="Address already in use"):
            server.start(timeout=20)
        assert server.pid is not None and not pid_exists(server.pid)
    finally:
        server.close()
        blocker.close()
    assert not os.path.exists(server.dir)


def test_ensemble_quorum_survives_leader_kill(zk_ensemble, kazoo_client):
    ens = zk_ensemble
    modes = sorted(ens.modes().values())
    assert modes == ["follower", "follower", "leader"]
    assert ens.hosts == ",".join(f"127.0.0.1:{m.port}" for m in ens)
    assert len({m.pid for m in ens}) == 3

    client = kazoo_client(ens.hosts)
    client.create("/ens/before", b"b", makepath=True)

    leader = ens.leader()
    assert leader is not None
    survivors = [m for m in ens if m is not leader]
    killed_pid = leader.pid
    started = time.monotonic()
    leader.kill()
    assert not pid_exists(killed_pid)
    new_leader = ens.wait_for_quorum(timeout=15, members=survivors)
    reelection = time.monotonic() - started
    assert new_leader is not leader and new_leader in survivors
    assert ens.leader() is new_leader
    print(f"re-election took {reelection:.2f} s")

    # Writes still commit with two of three members (through the same client).
    write_until_ok(client, "/ens/after", b"a")
    assert client.get("/ens/before")[0] == b"b"
    assert client.get("/ens/after")[0] == b"a"

    # The old leader comes back (same port, same data) as a follower and catches up.
    leader.start()
    assert ens.wait_for_quorum(timeout=15) is new_leader
    assert leader.mode() == "follower"
    only_old = kazoo_client(leader.hosts)
    only_old.sync("/ens")
    assert sorted(only_old.get_children("/ens")) == ["after", "before"]
