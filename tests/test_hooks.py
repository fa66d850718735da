"""Webhooks across real nodes, POSTed to real HTTP receivers on loopback
(nodes/hooks/registry.py, nodes/hooks/delivery.py): once per URL mesh-wide,
signed, retried, unregistered on 410, never held up by another receiver."""

import base64
import json
import time

import pytest
from hookhelpers import LOOPBACK, Receiver, ready, verified
from meshtest.nodeproc import linked, start_mesh3, wait_until

from mesh import Client, ControlError


@pytest.fixture
def mesh3(start_node):
    """Three linked nodes A, B, C whose hooks may reach the loopback receivers."""
    return start_mesh3(start_node, *LOOPBACK)


def test_each_receiver_gets_each_message_once_signed(mesh3):
    a, b, c = mesh3
    first, second = Receiver(), Receiver()
    try:
        with Client(a.address) as at_a, Client(b.address) as at_b:
            hook1 = at_a.register_hook("acct1", first.url)
            hook2 = at_b.register_hook("acct1", second.url, secret="whsec_" + base64.b64encode(b"k" * 24).decode())
            wait_until(lambda: ready(mesh3, 2), timeout=20, what="every node to deliver both hooks")
            publishers = [Client(n.address) for n in mesh3]
            for i in range(1000):
                publishers[i % 3].publish("hooks.acct1.done", {"i": i})
            for p in publishers:
                p.flush()
            wait_until(lambda: len(first.requests) >= 1000 and len(second.requests) >= 1000, timeout=60,
                       what="1,000 deliveries to each receiver")
            time.sleep(1)
            for p in publishers:
                p.close()
            listed = {h["url"]: h for h in at_a.hooks("acct1")}
        for receiver, hook in ((first, hook1), (second, hook2)):
            assert len(receiver.requests) == 1000 and len(set(receiver.ids())) == 1000  # once each
            assert sorted(json.loads(body)["data"]["i"] for _, body in receiver.requests) == list(range(1000))
            assert all(verified(hook["secrets"][0], headers, body) for headers, body in receiver.requests)
        assert set(listed) == {first.url, second.url} and "secrets" in listed[first.url]
    finally:
        first.close()
        second.close()


def test_retries_keep_the_id_and_410_unregisters(start_node):
    a = start_node("A", *LOOPBACK)
    flaky = Receiver(lambda n: 503 if n <= 3 else 200)
    gone = Receiver(lambda n: 410)
    limited = Receiver(lambda n: (429, {"Retry-After": "1"}) if n == 1 else 200)
    try:
        with Client(a.address) as client:
            for receiver in (flaky, gone, limited):
                client.register_hook("k2", receiver.url)
            wait_until(lambda: ready([a], 3), what="the deliverers")
            started = time.monotonic()
            client.publish("hooks.k2.x", "hello")
            wait_until(lambda: len(flaky.requests) == 4 and len(limited.requests) == 2, timeout=30,
                       what="the retries")
            assert len(set(flaky.ids())) == 1 and len(set(limited.ids())) == 1  # one id on every attempt
            assert time.monotonic() - started >= 1  # Retry-After was honoured
            wait_until(lambda: gone.url not in [h["url"] for h in client.hooks()], what="the 410 to unregister")
            # the receiver notes the request before it answers: the deliverer counts once the answer is in
            counters = wait_until(lambda: next(h for h in client.hooks() if h["url"] == flaky.url and h["delivered"]),
                                  what="the delivery counted")
            assert counters["delivered"] == 1 and counters["retried"] == 3
            assert counters["last_error"] is None  # the success after the 503s clears it
    finally:
        for receiver in (flaky, gone, limited):
            receiver.close()


def test_a_hanging_receiver_does_not_delay_another_and_final_failures_are_dead_letters(start_node):
    a = start_node("A", *LOOPBACK)
    hanging = Receiver(delay=5.0)
    quick = Receiver()
    refusing = Receiver(lambda n: 400)
    try:
        with Client(a.address) as client:
            dead = client.subscribe("$dead.hooks.>")
            client.register_hook("k3", hanging.url)
            client.register_hook("k3", quick.url)
            client.register_hook("k4", refusing.url)
            wait_until(lambda: ready([a], 3), what="the deliverers")
            for i in range(20):
                client.publish("hooks.k3.x", i)
            client.publish("hooks.k4.x", "refused")
            started = time.monotonic()
            wait_until(lambda: len(quick.requests) == 20, timeout=10, what="the quick receiver")
            assert time.monotonic() - started < 4  # not behind the hanging one
            letter = dead.get(timeout=10)
            assert letter.data["url"] == refusing.url and letter.data["error"] == "HTTP 400"
    finally:
        for receiver in (hanging, quick, refusing):
            receiver.close()


def test_bad_registrations_are_clear_errors(start_node):
    a = start_node("A", "--http", "0", *LOOPBACK)
    http_port = int(dict(p.split("=", 1) for p in a.ready_line.split()[2:])["http"].rsplit(":", 1)[1])
    control_port = int(a.address.rsplit(":", 1)[1])
    with Client(a.address) as client:
        for key, url, message in (("k", "not a url", "not an http"), ("k", "ftp://x/y", "not an http"),
                                  ("bad key", "http://x/", "key must"), ("k", f"http://127.0.0.1:{http_port}/", "own"),
                                  ("k", f"http://localhost:{control_port}/", "own"),
                                  ("k", "http://x/" + "a" * 3000, "at most")):
            with pytest.raises(ControlError, match=message):
                client.register_hook(key, url)
        with pytest.raises(ControlError, match="secrets"):
            client.register_hook("k", "http://example.invalid/", secret="plain")
        with pytest.raises(ControlError, match="unknown_hook"):
            client.unregister_hook("never", "http://example.invalid/")
    assert a.alive()


def test_a_delivering_node_that_dies_mid_retry_is_replaced_with_the_same_id(mesh3):
    """The receiver fails for a while; a node retrying a delivery is killed;
    another node's deliverer delivers it (same webhook-id): nothing is lost."""
    a, b, c = mesh3
    opened_at = time.monotonic() + 6
    receiver = Receiver(lambda n: 503 if time.monotonic() < opened_at else 200)
    try:
        with Client(a.address) as client:
            client.register_hook("k5", receiver.url, max_age=120)
            wait_until(lambda: ready(mesh3, 1), timeout=20, what="every node to deliver")
            for i in range(12):  # jobs held at A, spread over the three deliverers
                client.publish("hooks.k5.x", i)
            client.flush()

            def retrying(node):
                return any(h["retried"] for h in node.stats().get("hooks", []))

            wait_until(lambda: retrying(b) or retrying(c), timeout=15, what="B or C to retry a delivery")
            doomed = b if retrying(b) else c
            doomed.kill()
            def delivered_data():
                return {json.loads(body)["data"] for _, body in receiver.requests}

            wait_until(lambda: time.monotonic() > opened_at + 1 and delivered_data() >= set(range(12))
                       and a.stats()["queues"]["jobs"]["held"] == 0, timeout=60, what="every message delivered")
            delivered = {}
            for headers, body in receiver.requests:
                delivered.setdefault(json.loads(body)["data"], set()).add(headers["webhook-id"])
        assert sorted(delivered) == list(range(12))
        assert all(len(ids) == 1 for ids in delivered.values())  # one id per message, on every attempt
        assert a.stats()["queues"]["jobs"]["redelivered"] >= 1  # the killed node's deliveries moved
    finally:
        receiver.close()


def test_hooks_live_in_zookeeper_across_restarts(zk_server, zk_node):
    first = zk_node("A", zk_server.hosts, *LOOPBACK)
    receiver = Receiver()
    try:
        with Client(first.address) as client:
            client.register_hook("kz", receiver.url)
        first.stop()
        again = zk_node("A", zk_server.hosts, *LOOPBACK)
        wait_until(lambda: ready([again], 1), timeout=20, what="the restarted node to know the hook")
        with Client(again.address) as client:
            assert [h["url"] for h in client.hooks("kz")] == [receiver.url]
            client.publish("hooks.kz.x", "after the restart")
            wait_until(lambda: receiver.requests, timeout=15, what="the delivery")
        assert json.loads(receiver.requests[0][1])["data"] == "after the restart"
    finally:
        receiver.close()


def test_without_zookeeper_a_restarted_or_new_node_learns_the_hooks_from_its_peers(start_node):
    a = start_node("A", *LOOPBACK)
    b = start_node("B", *LOOPBACK, peers=[a])
    wait_until(lambda: linked(a, b), what="link")
    url = "http://127.0.0.1:9/hook"
    with Client(a.address) as client:
        record = client.register_hook("km", url)
    wait_until(lambda: ready([a, b], 1), what="both nodes to know the hook")
    b.kill()
    b = start_node("B", *LOOPBACK, peers=[a])  # a new instance: it knew nothing
    c = start_node("C", *LOOPBACK, peers=[a])  # started after the registration
    for node in (b, c):
        with Client(node.address) as client:
            listed = wait_until(lambda client=client: client.hooks("km"), what=f"{node.name} to learn the hook")
        assert [h["url"] for h in listed] == [url] and listed[0]["created"] == record["created"]


def test_hooks_over_http_at_an_edge_need_an_admin_token(start_node):
    import jwt
    from edgehelpers import http, http_address

    secret = "test-secret-of-at-least-thirty-two-bytes"

    def token(**claims):
        return jwt.encode({"exp": time.time() + 600, **claims}, secret, algorithm="HS256")

    e = start_node("E", "--http", "0", "--auth-secret", secret, *LOOPBACK)
    base = f"http://{http_address(e)}/hooks/acct9"
    receiver = Receiver()
    try:
        body = json.dumps({"url": receiver.url}).encode()
        assert http("POST", f"{base}?token={token(sub='user')}", body)[0] == 403
        status, reply = http("POST", f"{base}?token={token(admin=True)}", body)
        assert status == 200 and reply["hook"]["secrets"][0].startswith("whsec_")
        assert http("POST", f"{base}?token={token(admin=True)}", b'{"url": "ftp://x"}')[0] == 400
        status, listed = http("GET", f"{base}?token={token(admin=True)}")
        assert status == 200 and [h["url"] for h in listed["hooks"]] == [receiver.url]
        wait_until(lambda: ready([e], 1), what="the deliverer")
        with Client(e.address) as client:
            client.publish("hooks.acct9.x", 1)
            wait_until(lambda: receiver.requests, what="the delivery")
        from urllib.parse import quote

        url = f"{base}?token={token(admin=True)}&url={quote(receiver.url)}"
        assert http("DELETE", url)[0] == 200 and http("DELETE", url)[0] == 404
    finally:
        receiver.close()


def test_zookeeper_down_for_ten_seconds_loses_no_delivery(zk_server, zk_node):
    a = zk_node("A", zk_server.hosts, *LOOPBACK, timeout="4")
    b = zk_node("B", zk_server.hosts, *LOOPBACK, timeout="4")
    wait_until(lambda: linked(a, b), what="the mesh")
    receiver = Receiver()
    try:
        with Client(a.address) as client:
            client.register_hook("kd", receiver.url)
            wait_until(lambda: ready([a, b], 1), timeout=20, what="both deliverers")
            zk_server.stop()
            started = time.monotonic()
            sent = 0
            while time.monotonic() - started < 10:  # ZooKeeper down: the nodes go on with what they know
                client.publish("hooks.kd.x", sent)
                sent += 1
                time.sleep(0.05)
            zk_server.start()
            wait_until(lambda: len({json.loads(body)["data"] for _, body in receiver.requests}) == sent,
                       timeout=30, what="every delivery")
        assert len(set(receiver.ids())) == sent >= 150
    finally:
        receiver.close()


def test_a_rotation_signs_with_every_secret():
    from nodes.hooks.delivery import sign
    from nodes.hooks.registry import new_secret

    old, new = new_secret(), new_secret()
    body = b'{"x": 1}'
    header = sign([new, old], "msg_1", 1700000000, body)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000", "webhook-signature": header}
    assert len(header.split(" ")) == 2
    assert verified(new, headers, body) and verified(old, headers, body)
    assert not verified(new_secret(), headers, body)
