"""The client library in a threaded program and under gevent."""

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from mesh import Client
from meshhelpers import warm_up
from meshtest.nodeproc import ROOT, wait_until


def test_get_times_out_with_timeout_error(start_node):
    a = start_node("A")
    with Client(a.address) as client:
        sub = client.subscribe("nothing")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            sub.get(timeout=0.2)
        assert time.monotonic() - started >= 0.19


def test_callback_style_and_publishing_from_many_threads(start_node):
    a = start_node("A")
    with Client(a.address) as client:
        got, done = [], threading.Event()

        def on_message(message):
            if message.subject == "t.data":
                got.append((message.data["thread"], message.data["i"]))
                if len(got) == 4 * 250:
                    done.set()

        sub = client.subscribe("t.>", callback=on_message)
        assert client.wait_for_interest("t.data")

        def publish(thread):
            for i in range(250):
                client.publish("t.data", {"thread": thread, "i": i})

        threads = [threading.Thread(target=publish, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert done.wait(10)
        for thread in range(4):
            assert [i for t, i in got if t == thread] == list(range(250))
        assert sub.gaps == 0


def test_iteration_ends_when_another_thread_unsubscribes(start_node):
    a = start_node("A")
    with Client(a.address) as client:
        sub = client.subscribe("it")
        warm_up(client, "it", [sub])
        seen = []
        reader = threading.Thread(target=lambda: seen.extend(m.data for m in sub))
        reader.start()
        for i in range(5):
            client.publish("it", i)
        time.sleep(0.3)
        sub.unsubscribe()
        reader.join(5)
        assert not reader.is_alive()
        assert [d for d in seen if d != "warm-up"] == list(range(5))
        with pytest.raises(RuntimeError, match="closed"):
            sub.get(timeout=0)
        wait_until(lambda: not client.has_interest("it"), what="interest to be withdrawn")


def test_closed_client_refuses_work(start_node):
    a = start_node("A")
    client = Client(a.address)
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.publish("x", 1)
    with pytest.raises(RuntimeError, match="closed"):
        client.subscribe("x")


def test_unreachable_node_raises_timeout_error():
    with pytest.raises(TimeoutError, match="did not answer"):
        Client("127.0.0.1:1", timeout=0.3)


def test_bad_address_is_a_value_error():
    with pytest.raises(ValueError, match="HOST:PORT"):
        Client("no-port-here")


GEVENT_PROGRAM = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import sys, gevent
    sys.path.insert(0, {root!r})
    from mesh import Client
    client = Client(sys.argv[1])
    got = []
    ticker = []
    gevent.spawn(lambda: [ticker.append(gevent.sleep(0.01)) for _ in range(1000)])
    sub = client.subscribe("g.>", callback=lambda m: got.append(m.data))
    pull = client.subscribe("g.>")
    assert client.wait_for_interest("g.x", timeout=5)
    gevent.sleep(0.2)
    for i in range(500):
        client.publish("g.x", i)
    pulled = [pull.get(timeout=5).data for _ in range(500)]
    with gevent.Timeout(5):
        while len(got) < 500:
            gevent.sleep(0.01)
    assert got == list(range(500)), got[:10]
    assert pulled == list(range(500))
    # The hub kept running while subscriptions waited: the ticker advanced.
    assert len(ticker) > 10, len(ticker)
    client.close()
    print("gevent ok", len(ticker))
""")


def test_client_under_gevent_does_not_block_the_hub(start_node):
    a = start_node("A")
    result = subprocess.run([sys.executable, "-c", GEVENT_PROGRAM.format(root=ROOT), a.address],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "gevent ok" in result.stdout


def test_a_new_client_publishing_at_once_reaches_existing_subscribers(mesh3):
    """No slow joiner for a publisher that is new to its node: the subscriptions
    the node already has are known to a Client before its constructor returns,
    so ``Client(address).publish(...)`` straight away is delivered (a script,
    a request handler with a client per request)."""
    a, b, c = mesh3
    with Client(a.address) as subscriber:
        sub = subscriber.subscribe("fresh.>")
        for node in (a, b, c):  # the subscription has reached every node
            with Client(node.address) as probe:
                assert probe.wait_for_interest("fresh.x")
        for i in range(60):
            with Client((a, b, c)[i % 3].address) as publisher:
                publisher.publish("fresh.x", i)
        assert sorted(sub.get(timeout=5).data for _ in range(60)) == list(range(60))  # 60 publishers: no order
        assert sub.gaps == 0
