"""The meshnode command end to end: run, pub, sub, stats, peers, demo, --help."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from meshtest.nodeproc import MESHNODE, meshnode, wait_until



@pytest.fixture
def popen():
    procs = []

    def start(*args):
        proc = subprocess.Popen([sys.executable, MESHNODE, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_pub_reaches_sub_across_nodes(start_node, popen):
    a = start_node("A")
    b = start_node("B", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"], what="link")
    sub = popen("sub", "cli.>", "--node", b.address, "--count", "3", "--timeout", "20")
    for data in ('{"k": 1}', "plain words", "42"):
        result = meshnode("pub", "cli.test", data, "--node", a.address, "--wait", "10")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["subscribers"] is True
    out, err = sub.communicate(timeout=20)
    assert sub.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["data"] for line in lines] == [{"k": 1}, "plain words", 42]
    assert all(line["subject"] == "cli.test" and line["origin"].startswith("A/") for line in lines)


def test_pub_from_stdin_and_string_flag(start_node, popen):
    a = start_node("A")
    sub = popen("sub", "lines", "--node", a.address, "--count", "3", "--timeout", "20")
    result = meshnode("pub", "lines", "-", "--string", "--node", a.address, "--wait", "10",
                      input="1\n2\n[3]\n")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == [1, 2, 3]
    out, _ = sub.communicate(timeout=20)
    assert [json.loads(line)["data"] for line in out.splitlines()] == ["1", "2", "[3]"]


def test_pub_without_subscribers_says_the_message_was_dropped(start_node):
    a = start_node("A")
    result = meshnode("pub", "nobody.here", "1", "--node", a.address, "--wait", "0.2")
    assert result.returncode == 0
    assert json.loads(result.stdout)["subscribers"] is False
    assert "dropped" in result.stderr


def test_sub_timeout_exits_nonzero(start_node):
    a = start_node("A")
    result = meshnode("sub", "silence", "--node", a.address, "--timeout", "0.3")
    assert result.returncode == 1
    assert "no message within 0.3 s" in result.stderr


@pytest.mark.parametrize("args,needle", [
    (["pub", "a.*", "1"], "wildcard"),
    (["sub", "a..b"], "empty token"),
])
def test_bad_subjects_are_clear_errors(start_node, args, needle):
    a = start_node("A")
    result = meshnode(*args, "--node", a.address)
    assert result.returncode == 1
    assert needle in result.stderr


def test_unreachable_node_is_a_clear_error():
    result = meshnode("stats", "--node", "127.0.0.1:1", timeout=30)
    assert result.returncode == 1
    assert "did not answer" in result.stderr


def test_run_stops_cleanly_on_sigterm_and_sigint(popen):
    for signum in (signal.SIGTERM, signal.SIGINT):
        proc = popen("run", "--name", "solo", "--port", "0")
        ready = proc.stdout.readline()
        assert ready.startswith("meshnode ready name=solo control=127.0.0.1:")
        os.kill(proc.pid, signum)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "meshnode stopped name=solo" in out


def test_run_refuses_a_short_auth_secret():
    result = meshnode("run", "--port", "0", "--http", "0", "--auth-secret", "short", timeout=20)
    assert result.returncode == 2 and "argument --auth-secret: must be at least 32 bytes" in result.stderr


@pytest.mark.parametrize("flag", ["--auth-public-key", "--auth-jwks"])
def test_run_refuses_a_missing_key_file_in_one_line_naming_the_flag_and_path(tmp_path, flag):
    path = str(tmp_path / "absent")
    result = meshnode("run", "--port", "0", "--http", "0", flag, path, timeout=20)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"meshnode run: error: argument {flag}: cannot read {path}: No such file or directory"


def test_run_refuses_a_taken_port(start_node):
    a = start_node("A")
    port = a.address.rsplit(":", 1)[1]
    result = meshnode("run", "--port", port, timeout=20)
    assert result.returncode == 1
    assert f"cannot bind on 127.0.0.1:{port}" in result.stderr


def test_stats_and_peers(start_node):
    a = start_node("A")
    b = start_node("B", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"], what="link")
    stats = json.loads(meshnode("stats", "--node", a.address).stdout)
    assert stats["name"] == "A" and stats["peers"] == 1
    assert set(stats["messages"]) >= {"published_here", "from_peers"}
    peers = [json.loads(line) for line in meshnode("peers", "--node", a.address).stdout.splitlines()]
    assert [p["name"] for p in peers] == ["B"]
    assert peers[0]["control"] == f"tcp://{b.address}"


@pytest.mark.parametrize("command,needles", [
    ([], ["run", "pub", "sub", "stats", "peers", "demo"]),
    (["run"], ["--peer", "--port", "--host", "--max-payload", "ready"]),
    (["pub"], ["SUBJECT", "--node", "--wait", "JSON"]),
    (["sub"], ["PATTERN", "--count", "--timeout"]),
    (["demo"], ["--nodes", "--seconds"]),
])
def test_help_explains_each_command(command, needles):
    result = meshnode(*command, "--help")
    assert result.returncode == 0
    for needle in needles:
        assert needle in result.stdout


def test_demo_shows_messages_flowing():
    result = meshnode("demo", "--seconds", "2", "--base-port", "7471", "--http", "0", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("meshnode ready") == 3
    assert "node-2 received demo.tick #1" in result.stdout
    assert "node-3 received demo.tick #1" in result.stdout
    assert "all nodes shut down" in result.stdout
    assert re.search(r"Open http://127\.0\.0\.1:\d+/ in a browser", result.stdout)
