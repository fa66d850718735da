"""Everyday events for a client: its node restarts (kill -9 or a clean stop,
then the same port again) or its process forks (mesh/watch.py, mesh/client.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from meshhelpers import collect, warm_up
from meshtest.nodeproc import MESHNODE, ROOT, free_port, wait_until

from mesh import Client, Disconnected


def restart(start_node, node, how, *extra):
    """Stop ``node`` (kill -9 or SIGTERM) and start it again on the same port."""
    port = node.address.rsplit(":", 1)[1]
    if how == "kill":
        node.kill()
    else:
        node.stop()
    return lambda: start_node(node.name, "--port", port, *extra)


def next_message(sub, publisher, subject, timeout=15.0):
    """Publish ``subject`` every 20 ms until ``sub`` gets one; returns (message, published seqs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publisher.publish(subject, "probe")
        try:
            return sub.get(timeout=0.02)
        except TimeoutError:
            pass
    raise AssertionError(f"nothing arrived on {subject!r} within {timeout} s")


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_subscriber_comes_back_after_its_node_restarts_and_counts_what_it_missed(start_node, how):
    port = free_port()
    a = start_node("A", "--port", str(port))
    b = start_node("B", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"], what="link")
    events = []
    with Client(a.address, on_disconnect=lambda c: events.append("down"),
                on_reconnect=lambda c: events.append("up")) as sc, Client(b.address) as pub:
        sub = sc.subscribe("r.>")
        warm_up(pub, "r.x", [sub])
        last_before = pub.publish("r.x", "before")
        assert collect(sub, 1)[0].data == "before"

        start_again = restart(start_node, a, how, "--peer", b.address)
        wait_until(lambda: not sc.connected, timeout=5, what="the subscriber to notice")
        assert events == ["down"]
        assert not sc.has_interest("r.x"), "stale interest while the node is down"
        for i in range(50):
            pub.publish("r.x", i)  # nobody can take these: they must count as missed
        start_again()
        ready = time.monotonic()
        message = next_message(sub, pub, "r.x")
        assert time.monotonic() - ready < 10
        assert events == ["down", "up"] and sc.connected and sc.reconnects == 1
        assert sub.gaps == message.seq - last_before - 1 >= 50


def test_publishes_while_the_node_is_down_wait_and_arrive_in_order(start_node):
    port = free_port()
    a = start_node("A", "--port", str(port))
    b = start_node("B", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"], what="link")
    with Client(a.address) as pub, Client(b.address) as sc:
        sub = sc.subscribe("q.>")
        warm_up(pub, "q.x", [sub])
        start_again = restart(start_node, a, "kill", "--peer", b.address)
        wait_until(lambda: not pub.connected, timeout=5, what="the publisher to notice")
        seqs = [pub.publish("q.x", i) for i in range(100)]
        assert pub.counters()["backlog"] == 100
        start_again()
        got = collect(sub, 100, timeout=20)
        assert [m.data for m in got] == list(range(100)) and [m.seq for m in got] == seqs
        pub.publish("q.x", "after")
        assert collect(sub, 1)[0].data == "after"
        assert sub.gaps == 0 and pub.counters()["backlog"] == 0


def test_a_full_backlog_refuses_publishes_with_a_clear_error(start_node):
    a = start_node("A")
    with Client(a.address, backlog_bytes=2000) as pub:
        a.kill()
        wait_until(lambda: not pub.connected, timeout=5, what="the publisher to notice")
        with pytest.raises(Disconnected, match="backlog is full"):
            for i in range(100):
                pub.publish("full.x", b"x" * 100)
        assert 10 <= pub.counters()["backlog"] < 20


GREEN_SUBSCRIBER = r"""
import json, sys
from gevent import monkey; monkey.patch_all()
sys.path.insert(0, sys.argv[1])
from mesh import Client
client = Client(sys.argv[2], on_reconnect=lambda c: print(json.dumps("reconnected"), flush=True))
sub = client.subscribe("g.>")
print(json.dumps("ready"), flush=True)
for message in sub:
    print(json.dumps([message.data, sub.gaps]), flush=True)
"""


def test_a_gevent_subscriber_and_meshnode_sub_keep_going_across_a_restart(start_node):
    port = free_port()
    a = start_node("A", "--port", str(port))
    b = start_node("B", peers=[a])
    wait_until(lambda: a.peer_names() == ["B"], what="link")
    green = subprocess.Popen([sys.executable, "-c", GREEN_SUBSCRIBER, ROOT, a.address],
                             stdout=subprocess.PIPE, text=True)
    cli = subprocess.Popen([sys.executable, MESHNODE, "sub", "g.>", "--node", a.address],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(green.stdout.readline()) == "ready"
        with Client(b.address) as pub:
            wait_until(lambda: pub.has_interest("g.x"), what="interest")
            time.sleep(0.3)  # the CLI subscriber's interest too
            pub.publish("g.x", "one")
            assert json.loads(green.stdout.readline())[0] == "one"
            assert json.loads(cli.stdout.readline())["data"] == "one"
            restart(start_node, a, "kill", "--peer", b.address)()
            assert json.loads(green.stdout.readline()) == "reconnected"
            wait_until(lambda: a.peer_names() == ["B"], what="relink")
            deadline = time.monotonic() + 15
            while True:  # until both are back: the first messages may find no subscriber yet
                pub.publish("g.x", "two")
                line = json.loads(green.stdout.readline()) if _ready(green) else None
                if line is not None and line[0] == "two":
                    break
                assert time.monotonic() < deadline, "the gevent subscriber did not come back"
                time.sleep(0.1)
            for _ in range(50):
                pub.publish("g.x", "three")
                if _ready(cli, 0.1):
                    break
            assert json.loads(cli.stdout.readline())["data"] in ("two", "three")
    finally:
        for proc in (green, cli):
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    stderr = cli.stderr.read()
    # A node back within a heartbeat is seen as restarted (another instance), not as gone first.
    assert "attached to node A again" in stderr, stderr


def _ready(proc, timeout=0.0):
    import select

    return bool(select.select([proc.stdout], [], [], timeout)[0])


def test_a_client_made_before_fork_publishes_from_the_child_under_its_own_origin(start_node):
    a = start_node("A")
    with Client(a.address) as pub, Client(a.address) as sc:
        sub = sc.subscribe("fk.>")
        warm_up(pub, "fk.x", [sub])
        assert pub.publish("fk.x", "parent-1") > 1
        captured = pub.publish  # taken before the fork, as a callback or functools.partial would be
        child = os.fork()
        if child == 0:  # the child: publish through the inherited client, then leave at once
            try:
                try:
                    sub.get(timeout=1)  # made before the fork: a clear error, never the parent's socket
                    os._exit(2)
                except RuntimeError as exc:
                    if "before os.fork()" not in str(exc):
                        os._exit(3)
                captured("fk.x", "child-captured")  # never on the parent's socket: through the reopened client
                pub.publish("fk.x", "child")
                pub.flush()
                pub.close()
                os._exit(0)
            except BaseException:
                os._exit(1)
        deadline = time.monotonic() + 15
        while (ended := os.waitpid(child, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        status = ended[1]
        if ended[0] == 0:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            raise AssertionError("the forked child hung")
        assert os.waitstatus_to_exitcode(status) == 0
        pub.publish("fk.x", "parent-2")
        got = {m.data: m for m in collect(sub, 4)}
        assert set(got) == {"parent-1", "child-captured", "child", "parent-2"}
        assert got["child-captured"].origin != got["parent-1"].origin and got["child-captured"].seq == 1
        assert got["child"].origin == got["child-captured"].origin and got["child"].seq == 2
        assert got["parent-2"].origin == got["parent-1"].origin
        assert got["parent-2"].seq == got["parent-1"].seq + 1 and sub.gaps == 0


def test_meshnode_pub_waits_for_a_restarting_node(start_node):
    a = start_node("A", "--port", str(free_port()))
    start_again = restart(start_node, a, "kill")
    pub = subprocess.Popen([sys.executable, MESHNODE, "pub", "late.x", '{"n": 1}', "--node", a.address,
                            "--wait", "15"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # it is already asking a node that is not there
        assert pub.poll() is None, pub.communicate()
        again = start_again()
        with Client(again.address) as sc:
            sub = sc.subscribe("late.>")
            out, err = pub.communicate(timeout=20)
            assert pub.returncode == 0, err
            assert json.loads(out)["subscribers"] is True
            assert collect(sub, 1)[0].data == {"n": 1}
    finally:
        if pub.poll() is None:
            pub.kill()
            pub.wait()
