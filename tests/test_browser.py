"""What a browser sees: real headless Chromium against real edge nodes."""

import json
import time
import urllib.request

from edgehelpers import http_address
from mesh import Client
from meshtest.nodeproc import free_port, wait_until


def publish_until(page, expression, publish, timeout=15):
    """Publish until ``expression`` (JS) is truthy in the page."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"page never saw it; console: {page.console_log}"
        publish()
        page.wait_for_timeout(50)


def test_chromium_websocket_receives_what_python_publishes_on_another_node(page, edge_pair):
    a, e = edge_pair
    page.goto(f"http://{http_address(e)}/healthz")
    page.evaluate("""url => new Promise((resolve, reject) => {
        window.got = [];
        const ws = new WebSocket(url);
        ws.onmessage = ev => { const f = JSON.parse(ev.data); if (f.op === "msg") window.got.push(f); else window.reply = f; };
        ws.onopen = () => { ws.send(JSON.stringify({op: "sub", subject: "browser.*", id: 7})); resolve(); };
        ws.onerror = reject;
    })""", f"ws://{http_address(e)}/ws")
    wait_until(lambda: page.evaluate("window.reply") == {"op": "ok", "id": 7}, what="sub ok")
    with Client(a.address) as pub:
        publish_until(page, "window.got.length > 0", lambda: pub.publish("browser.hello", {"from": "python"}))
        pub.publish("browser.last", [1, "two", None])
        publish_until(page, "window.got.some(f => f.subject === 'browser.last')", lambda: None)
    got = page.evaluate("window.got")
    assert got[0]["subject"] == "browser.hello" and got[0]["data"] == {"from": "python"}
    assert got[-1]["data"] == [1, "two", None] and got[-1]["origin"] == pub.origin
    assert all(f["seq"] >= 1 and f["ts"] > 0 for f in got)


def test_chromium_eventsource_receives_http_posts(page, edge_pair):
    a, e = edge_pair
    base = f"http://{http_address(e)}"
    page.goto(f"{base}/healthz")
    page.evaluate("""() => {
        window.events = [];
        const source = new EventSource("/sub/sse.%3E");
        source.onmessage = ev => window.events.push({id: ev.lastEventId, data: JSON.parse(ev.data)});
    }""")

    def post():
        request = urllib.request.Request(f"{base}/pub/sse.news", data=json.dumps({"n": 1}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=5).read()

    publish_until(page, "window.events.length > 0", post)
    event = page.evaluate("window.events[0]")
    assert event["data"]["subject"] == "sse.news" and event["data"]["data"] == {"n": 1}
    position = json.loads(event["id"])  # the position just after it: what Last-Event-ID brings back
    assert position["s"] == [[event["data"]["origin"], "sse.news", event["data"]["epoch"], event["data"]["seq"]]]


def test_built_in_page_subscribes_publishes_and_shows_messages(page, edge_pair):
    a, e = edge_pair
    page.goto(f"http://{http_address(e)}/")
    page.wait_for_selector("#status.up")
    page.fill("input[name=pattern]", "page.>")
    page.click("#sub-form button")
    page.wait_for_selector("#subs span")
    assert page.inner_text("#subs") .startswith("page.>")
    page.fill("input[name=subject]", "page.typed")
    page.fill("input[name=data]", '{"typed": true}')
    with Client(a.address) as ca:
        sub = ca.subscribe("page.>")
        wait_until(lambda: ca.has_interest("page.x") or True, what="")
        deadline = time.monotonic() + 15
        while True:  # the page publishes; a Python subscriber on another node receives
            page.click("#pub-form button")
            try:
                got = sub.get(timeout=0.2)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, page.console_log
        assert got.subject == "page.typed" and got.data == {"typed": True}
        publish_until(page, "document.querySelector('#log').innerText.includes('from python')",
                      lambda: ca.publish("page.python", "from python"))
    log = page.inner_text("#log")
    assert "page.typed" in log and '{"typed":true}' in log
    assert not [m for m in page.console_log if "error" in m.lower()], page.console_log


def test_chromium_eventsource_resumes_with_last_event_id_across_an_edge_restart(page, start_node):
    """History lives at the publisher's node: an EventSource whose edge restarts
    reconnects on its own (retry: 2000) with Last-Event-ID and gets what was
    published meanwhile, once each, in order."""
    http_port = free_port()
    rule = ("--history", "es.>=1000/300s")
    a = start_node("A", *rule)
    e = start_node("E", "--http", str(http_port), *rule, peers=[a])
    wait_until(lambda: a.peer_names() == ["E"], what="link")
    base = f"http://127.0.0.1:{http_port}"
    page.goto(f"{base}/healthz")
    page.evaluate("""() => {
        window.events = []; window.recoveries = [];
        const source = new EventSource("/sub/es.x");
        source.onmessage = ev => window.events.push(JSON.parse(ev.data));
        source.addEventListener("recovery", ev => window.recoveries.push(JSON.parse(ev.data)));
    }""")
    with Client(a.address) as pub:
        n = [0]

        def publish():
            pub.publish("es.x", n[0])
            n[0] += 1

        publish_until(page, "window.events.length > 0", publish)
        first = page.evaluate("window.events[0].data")
        e.kill()
        for _ in range(20):  # while the edge is down: recorded at A
            publish()
        pub.flush()
        start_node("E", "--http", str(http_port), *rule, "--peer", a.address)
        publish_until(page, "window.recoveries.length > 0", lambda: None, timeout=20)
        publish_until(page, f"window.events.length >= {n[0] - first}", lambda: None, timeout=20)
        last = n[0]
        publish()  # live after the recovery
        publish_until(page, f"window.events.some(f => f.data === {last})", lambda: None)
    events = page.evaluate("window.events")
    assert [f["data"] for f in events] == list(range(first, last + 1))  # nothing lost, nothing twice
    assert any(f.get("replayed") for f in events)
    assert page.evaluate("window.recoveries")[0]["recovered"] is True


def test_built_in_page_recovers_what_it_missed_while_its_edge_restarted(page, start_node):
    http_port = free_port()
    rule = ("--history", "pg.>=1000/300s")
    a = start_node("A", *rule)
    e = start_node("E", "--http", str(http_port), *rule, peers=[a])
    wait_until(lambda: a.peer_names() == ["E"], what="link")
    page.goto(f"http://127.0.0.1:{http_port}/")
    page.wait_for_selector("#status.up")
    page.fill("input[name=pattern]", "pg.>")
    page.click("#sub-form button")
    page.wait_for_selector("#subs span")
    with Client(a.address) as pub:
        publish_until(page, "document.getElementById('log').textContent.includes('before')",
                      lambda: pub.publish("pg.x", "before"))
        e.kill()
        page.wait_for_selector("#status:not(.up)")
        for i in range(5):
            pub.publish("pg.x", f"missed-{i}")
        pub.flush()
        start_node("E", "--http", str(http_port), *rule, "--peer", a.address)
        page.wait_for_selector("#status.up", timeout=20000)
        page.wait_for_selector(".recovery", timeout=20000)
    log = page.inner_text("#log")
    replayed = [line for line in log.splitlines() if line.endswith("(replayed)")]
    assert f"recovered pg.>: {len(replayed)} missed messages replayed" in log  # a late "before" may be among them
    assert all(any(f'"missed-{i}"' in line for line in replayed) for i in range(5))
