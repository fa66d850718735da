"""CurveZMQ: encrypted, authenticated links; only listed public keys get in."""

import os
import shutil

import pytest

from mesh import Client, CurveKeys
from meshhelpers import collect, warm_up
from meshtest.nodeproc import meshnode, wait_until



@pytest.fixture
def keys(tmp_path):
    """A mesh key directory with keys for the mesh, nodes A and B and client alice."""
    directory = tmp_path / "keys"
    for name in ("mesh", "A", "B", "alice"):
        result = meshnode("keygen", str(directory), name)
        assert result.returncode == 0, result.stderr
    return directory


def test_keygen_writes_a_keypair_and_never_overwrites(tmp_path):
    result = meshnode("keygen", str(tmp_path), "carol")
    assert result.returncode == 0
    assert (tmp_path / "carol.key").exists() and (tmp_path / "carol.key_secret").exists()
    assert oct((tmp_path / "carol.key_secret").stat().st_mode & 0o777) == "0o600"
    again = meshnode("keygen", str(tmp_path), "carol")
    assert again.returncode == 1 and "not overwriting" in again.stderr


def test_listed_keys_link_and_deliver(start_node, keys):
    a = start_node("A", "--curve-keys", str(keys))
    b = start_node("B", "--curve-keys", str(keys), peers=[a])
    alice = CurveKeys.load(str(keys), "alice")
    with Client(a.address, curve=alice) as pub, Client(b.address, curve=alice) as cb:
        wait_until(lambda: pub.stats()["peers"] == 1 and cb.stats()["peers"] == 1, what="curve link")
        sub = cb.subscribe("secret.>")
        warm_up(pub, "secret.warm", [sub])
        pub.publish("secret.plan", {"x": 1})
        assert collect(sub, 1)[0].data == {"x": 1}
        assert pub.stats()["curve"]["allowed"] >= 3


def test_unlisted_keys_and_plaintext_clients_cannot_read(start_node, keys, tmp_path):
    a = start_node("A", "--curve-keys", str(keys))
    stranger_dir = tmp_path / "stranger"
    stranger_dir.mkdir()
    shutil.copy(keys / "mesh.key", stranger_dir / "mesh.key")  # knows the mesh's public key, is not listed
    assert meshnode("keygen", str(stranger_dir), "mallory").returncode == 0
    mallory = CurveKeys.load(str(stranger_dir), "mallory")
    with pytest.raises(TimeoutError):
        Client(a.address, curve=mallory, timeout=1.0)
    with pytest.raises(TimeoutError):
        Client(a.address, timeout=1.0)  # no CURVE at all
    with Client(a.address, curve=CurveKeys.load(str(keys), "alice")) as alice:
        stats = alice.stats()
    assert stats["curve"]["denied"] >= 1 and a.alive()


def test_a_node_without_the_mesh_keys_cannot_join(start_node, keys, tmp_path):
    a = start_node("A", "--curve-keys", str(keys))
    b = start_node("B", "--curve-keys", str(keys), peers=[a])
    other = tmp_path / "other"
    for name in ("mesh", "C"):
        assert meshnode("keygen", str(other), name).returncode == 0
    c = start_node("C", "--curve-keys", str(other), peers=[a])
    alice = CurveKeys.load(str(keys), "alice")
    with Client(a.address, curve=alice) as ca:
        wait_until(lambda: ca.stats()["peers"] == 1, what="A to link B")
        import time

        time.sleep(3)  # C keeps trying for three introduction rounds
    listed = meshnode("peers", "--node", a.address, "--curve-keys", str(keys), "--curve-name", "alice")
    assert [line.split('"name": ')[1].split('"')[1] for line in listed.stdout.splitlines()] == ["B"]
    assert c.alive() and b.alive()


def test_revoking_a_key_keeps_that_client_out(start_node, keys):
    os.remove(keys / "alice.key")  # alice's public key is no longer listed
    a = start_node("A", "--curve-keys", str(keys))
    with pytest.raises(TimeoutError):
        Client(a.address, curve=CurveKeys.load(str(keys), "alice"), timeout=1.0)


def test_cli_clients_use_keys(start_node, keys):
    a = start_node("A", "--curve-keys", str(keys))
    result = meshnode("stats", "--node", a.address, "--curve-keys", str(keys), "--curve-name", "alice")
    assert result.returncode == 0 and '"curve"' in result.stdout
    refused = meshnode("stats", "--node", a.address, timeout=30)
    assert refused.returncode == 1 and "did not answer" in refused.stderr


def test_non_loopback_bind_needs_keys_or_insecure():
    result = meshnode("run", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 1 and "--curve-keys" in result.stderr and "--insecure" in result.stderr


def test_missing_key_files_are_clear_errors(tmp_path):
    result = meshnode("run", "--port", "0", "--curve-keys", str(tmp_path))
    assert result.returncode == 1 and "mesh.key is missing" in result.stderr
