"""The browser client /meshnode.js in a real headless Chromium, against real
edges that are killed and started again while Python publishes."""

import threading
import time

import jwt
from meshtest.nodeproc import free_port, linked, wait_until

from mesh import Client

SECRET = "test-secret-of-at-least-thirty-two-bytes"
SETUP = """async ([urls, pattern, options]) => {
    const {connect} = await import("/meshnode.js");
    const made = {...options};
    if (made.tokenFrom) made.getToken = () => window.mintToken();
    window.mesh = connect(urls.length === 1 ? urls[0] : urls, made);
    window.got = [];
    window.seen = {connect: 0, disconnect: 0, error: [], recovery: [], attempts: null};
    mesh.addEventListener("connect", e => { seen.connect++; seen.attempts = e.detail.attempts; });
    mesh.addEventListener("disconnect", () => seen.disconnect++);
    mesh.addEventListener("error", e => seen.error.push(String(e.detail.error && e.detail.error.message)));
    mesh.addEventListener("recovery", e => seen.recovery.push({recovered: e.detail.recovered,
                                                              replayed: e.detail.replayed}));
    window.sub = mesh.subscribe(pattern, m => got.push(m.data), {recover: true});
}"""


class Publishing:
    """Publish 0, 1, 2... on a subject from a thread until stopped."""

    def __init__(self, address, subject, every=0.01):
        self.count = 0
        self._stop = threading.Event()
        self._client = Client(address)
        self._thread = threading.Thread(target=self._run, args=(subject, every), daemon=True)
        self._thread.start()

    def _run(self, subject, every):
        while not self._stop.is_set():
            self._client.publish(subject, self.count)
            self.count += 1
            time.sleep(every)

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._client.flush()
        self._client.close()
        return self.count


def page_at(page, port):
    page.goto(f"http://127.0.0.1:{port}/healthz")


def wait_for_page(page, expression, timeout=20):
    page.wait_for_function(expression, timeout=timeout * 1000)


def test_a_subscription_resumes_across_an_edge_restart_with_every_message_once_in_order(page, start_node):
    port = free_port()
    rule = ("--history", "br.>=100000/300s")
    a = start_node("A", *rule)
    e = start_node("E", "--http", str(port), *rule, peers=[a])
    wait_until(lambda: linked(a, e), what="link")
    page_at(page, port)
    page.evaluate(SETUP, [[f"ws://127.0.0.1:{port}/ws"], "br.>", {}])
    wait_for_page(page, "sub.live")
    with Client(a.address) as probe:
        assert probe.wait_for_interest("br.x")
    publishing = Publishing(a.address, "br.x")
    wait_for_page(page, "got.length > 20")
    e.kill()
    wait_for_page(page, "seen.disconnect === 1")
    time.sleep(0.5)  # published meanwhile: only A's history has it
    start_node("E", "--http", str(port), *rule, peers=[a])
    wait_for_page(page, "seen.connect === 2 && seen.recovery.length === 1")
    time.sleep(0.5)
    total = publishing.stop()
    wait_for_page(page, f"got.length >= {total}")
    page.wait_for_timeout(300)
    got = page.evaluate("got")
    assert got == list(range(total))  # every message, once, in order
    assert page.evaluate("seen.recovery")[0]["recovered"] is True and page.evaluate("sub.recovered") is True
    assert page.evaluate("sub.gaps") == 0
    assert page.evaluate("sub.received") == total  # what reached the callback, replayed ones included
    # one disconnect for the outage, however many reconnects failed during it (counted at the connect)
    assert page.evaluate("seen.disconnect") == 1 and page.evaluate("seen.attempts") >= 1


def test_it_moves_to_another_edge_and_recovers_there(page, start_node):
    rule = ("--history", "mv.>=100000/300s")
    ports = [free_port(), free_port()]
    a = start_node("A", *rule)
    e1 = start_node("E1", "--http", str(ports[0]), *rule, peers=[a])
    e2 = start_node("E2", "--http", str(ports[1]), *rule, peers=[a, e1])
    wait_until(lambda: linked(a, e1, e2), what="the mesh")
    page_at(page, ports[0])
    page.evaluate(SETUP, [[f"ws://127.0.0.1:{p}/ws" for p in ports], "mv.>", {"minDelay": 100}])
    wait_for_page(page, "sub.live")
    with Client(a.address) as probe:
        assert probe.wait_for_interest("mv.x")
    publishing = Publishing(a.address, "mv.x")
    wait_for_page(page, "got.length > 20")
    e1.stop()  # SIGTERM, for good: the page must go to E2. (After a SIGKILL the recovery says
    # recovered: false while E1 is still listed as a peer: it may have held publishers' history.)
    wait_for_page(page, "seen.connect === 2 && seen.recovery.length === 1")
    assert page.evaluate("mesh.url").endswith(f":{ports[1]}/ws")
    total = publishing.stop()
    wait_for_page(page, f"got.length >= {total}")
    page.wait_for_timeout(300)
    assert page.evaluate("got") == list(range(total))
    assert page.evaluate("sub.recovered") is True


def test_without_history_the_page_is_told_recovered_false(page, start_node):
    port = free_port()
    a = start_node("A")
    e = start_node("E", "--http", str(port), peers=[a])
    wait_until(lambda: linked(a, e), what="link")
    page_at(page, port)
    page.evaluate(SETUP, [[f"ws://127.0.0.1:{port}/ws"], "nh.>", {"minDelay": 100}])
    wait_for_page(page, "sub.live")
    with Client(a.address) as publisher:
        assert publisher.wait_for_interest("nh.x")
        publisher.publish("nh.x", "before")
        wait_for_page(page, "got.length === 1")
        e.kill()
        wait_for_page(page, "seen.disconnect === 1")
        publisher.publish("nh.x", "lost")
        start_node("E", "--http", str(port), peers=[a])
        wait_for_page(page, "seen.recovery.length === 1")
    assert page.evaluate("sub.recovered") is False
    assert page.evaluate("seen.recovery")[0]["recovered"] is False


def test_an_expiring_token_is_refreshed_through_get_token_without_a_gap(page, start_node):
    port = free_port()
    e = start_node("E", "--http", str(port), "--auth-secret", SECRET)
    minted = []

    def mint():
        minted.append(time.time())
        return jwt.encode({"exp": int(time.time()) + 4, "sub": "browser", "subscribe": [">"], "publish": [">"]},
                          SECRET, algorithm="HS256")

    page.expose_function("mintToken", mint)
    page_at(page, port)
    page.evaluate(SETUP, [[f"ws://127.0.0.1:{port}/ws"], "tk.>", {"tokenFrom": True, "refreshBefore": 2}])
    wait_for_page(page, "sub.live")
    publishing = Publishing(e.address, "tk.x", every=0.02)
    started = time.monotonic()
    while time.monotonic() - started < 9:  # past two expiries of a 4 s token
        page.wait_for_timeout(200)  # lets Playwright answer mintToken
    total = publishing.stop()
    wait_for_page(page, f"got.length >= {total}")
    assert page.evaluate("got") == list(range(total))
    assert page.evaluate("seen.connect") == 1 and page.evaluate("seen.disconnect") == 0  # refreshed in-band
    assert len(minted) >= 3  # the first token and at least two refreshes
    assert e.stats()["edge"]["expired"] == 0


def test_bad_input_fails_clearly(page, start_node):
    port = free_port()
    start_node("E", "--http", str(port))
    page_at(page, port)
    errors = page.evaluate("""async (url) => {
        const {connect} = await import("/meshnode.js");
        const mesh = connect(url);
        await new Promise(resolve => mesh.addEventListener("connect", resolve));
        const out = [];
        for (const bad of [() => mesh.subscribe("a..b", () => {}), () => mesh.publish("a.*", 1),
                           () => mesh.publish("", 1)]) {
            try { await bad(); out.push("no error"); } catch (e) { out.push(e.code); }
        }
        try { await mesh.request("nobody.home", 1, {timeout: 1}); } catch (e) { out.push(e.code); }
        mesh.close();
        try { await mesh.publish("a.b", 1); } catch (e) { out.push(e.code); }
        return out;
    }""", f"ws://127.0.0.1:{port}/ws")
    assert errors == ["invalid_subject", "invalid_subject", "invalid_subject", "no_responders", "closed"]
