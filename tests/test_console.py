"""The live console at / of an edge (nodes/edge/static/index.html, nodes/edge/console.py),
in a real headless Chromium against real nodes: a killed node turns red."""

import base64
import json
import os
import time
import urllib.request

from edgehelpers import WS, http, http_address
from meshtest.nodeproc import ROOT, linked, wait_until

from mesh import Client

RED = "rgb(214, 40, 40)"
GREEN = "rgb(42, 157, 58)"


def fill(page, selector):
    return page.evaluate("s => getComputedStyle(document.querySelector(s)).fill", selector)


def drawn_colours(page, png):
    """Distinct colours in a screenshot, decoded by the browser itself."""
    return page.evaluate("""data => new Promise(resolve => {
        const img = new Image();
        img.onload = () => {
            const canvas = document.createElement("canvas");
            canvas.width = img.width; canvas.height = img.height;
            const ctx = canvas.getContext("2d");
            ctx.drawImage(img, 0, 0);
            const pixels = ctx.getImageData(0, 0, img.width, img.height).data;
            const seen = new Set();
            for (let i = 0; i < pixels.length; i += 4 * 7) seen.add(pixels[i] << 16 | pixels[i + 1] << 8 | pixels[i + 2]);
            resolve(seen.size);
        };
        img.src = "data:image/png;base64," + data;
    })""", base64.b64encode(png).decode())


def test_the_console_draws_the_mesh_and_a_killed_node_turns_red(page, start_node, tmp_path):
    a = start_node("A")
    b = start_node("B", peers=[a])
    e = start_node("E", "--http", "0", peers=[a, b])
    wait_until(lambda: linked(a, b, e), what="the mesh")
    viewer = WS(f"ws://{http_address(e)}/ws")
    assert viewer.request("sub", subject="console.>")["op"] == "ok"
    page.goto(f"http://{http_address(e)}/")
    for name in ("A", "B", "E"):
        page.wait_for_selector(f"#picture circle[data-node={name}][data-state=up]", timeout=10000)
    assert fill(page, "#picture circle[data-node=B]") == GREEN
    page.wait_for_function("document.querySelectorAll('#picture line[data-state=up]').length === 3",
                           timeout=10000)
    page.wait_for_selector("#channels td:text('console.>')", timeout=10000)
    with Client(a.address) as publisher:  # the rate chart of A moves
        deadline = time.monotonic() + 15
        while not page.evaluate("(meshConsole.rates.get('A') || []).some(p => p[1] > 0)"):
            assert time.monotonic() < deadline, page.console_log
            for i in range(50):
                publisher.publish("console.tick", i)
            page.wait_for_timeout(200)
    assert page.locator("#nodes tr[data-node=A] .spark polyline").count() == 1

    b.kill()  # SIGKILL
    started = time.monotonic()
    page.wait_for_selector("#picture circle[data-node=B][data-state=down]", timeout=10000)
    turned_red = time.monotonic() - started
    assert fill(page, "#picture circle[data-node=B]") == RED
    assert page.locator("#picture line[data-state=down]").count() == 2  # A-B and B-E
    assert fill(page, "#picture circle[data-node=A]") == GREEN
    page.wait_for_selector("#events div[data-event='link.down']", timeout=10000)  # live, over the page's WebSocket
    png = page.screenshot(full_page=True)
    (tmp_path / "console.png").write_bytes(png)
    assert len(png) > 10_000 and drawn_colours(page, png) > 20, "the screenshot is blank"
    print(f"B turned red {turned_red:.1f} s after SIGKILL; screenshot {tmp_path / 'console.png'}")
    viewer.close()


def test_the_mesh_picture_needs_an_admin_token_when_auth_is_on(start_node):
    import jwt

    secret = "test-secret-of-at-least-thirty-two-bytes"
    e = start_node("E", "--http", "0", "--auth-secret", secret)
    base = f"http://{http_address(e)}/mesh"
    user = jwt.encode({"exp": time.time() + 600, "sub": "u"}, secret, algorithm="HS256")
    admin = jwt.encode({"exp": time.time() + 600, "sub": "ops", "admin": True}, secret, algorithm="HS256")
    assert http("GET", base)[0] == 401
    assert http("GET", f"{base}?token={user}")[0] == 403
    status, view = http("GET", f"{base}?token={admin}")
    assert status == 200 and [n["name"] for n in view["nodes"]] == ["E"] and view["node"] == "E"
    with urllib.request.urlopen(f"http://{http_address(e)}/", timeout=5) as response:
        page = response.read().decode()
    assert 'id="picture"' in page and "cdn" not in page.lower() and "<script src" not in page
    assert json.dumps(view)  # plain JSON the page can read


def test_a_node_that_left_stays_shown_as_down_with_when_it_left(start_node):
    """A peer that left the membership stays in GET /mesh, down with ``left``,
    after its record is gone everywhere; gathering meanwhile logs no error."""
    a = start_node("A")
    b = start_node("B", peers=[a])
    e = start_node("E", "--http", "0", peers=[a])
    wait_until(lambda: linked(a, b, e), what="the mesh")
    url = f"http://{http_address(e)}/mesh"
    wait_until(lambda: sorted(n["name"] for n in http("GET", url)[1]["nodes"]) == ["A", "B", "E"],
               what="the picture (up to REFRESH_SECONDS old)")
    assert b.stop() == 0
    left_at = time.time()
    wait_until(lambda: e.peer_names() == ["A"], timeout=3, what="B dropped")
    rows = lambda: {n["name"]: n for n in http("GET", url)[1]["nodes"]}  # noqa: E731
    wait_until(lambda: rows()["B"]["state"] == "down", timeout=3, what="the picture after B left")
    deadline = time.monotonic() + 8  # more than the static backend's 5 s expiry
    while time.monotonic() < deadline:
        now = rows()
        assert now["B"]["state"] == "down" and abs(now["B"]["left"] - left_at) < 2, now
        assert now["A"]["state"] == now["E"]["state"] == "up"
        time.sleep(0.25)
    e.stop()
    assert "Traceback" not in e.stderr_text and "ERROR" not in e.stderr_text, e.stderr_text


def screenshot(page, tmp_path, name):
    """A 1400x900 screenshot, kept in docs/ when MESHNODE_SCREENSHOTS=docs (how docs/console-*.png are made)."""
    folder = os.path.join(ROOT, "docs") if os.environ.get("MESHNODE_SCREENSHOTS") == "docs" else str(tmp_path)
    png = page.screenshot()
    with open(os.path.join(folder, f"console-{name}.png"), "wb") as f:
        f.write(png)
    assert drawn_colours(page, png) > 20, "the screenshot is blank"


def test_the_console_opens_with_recent_rates_readable_events_and_departed_nodes_down(page, start_node, tmp_path):
    a = start_node("A")
    b = start_node("B", peers=[a])
    e = start_node("E", "--http", "0", peers=[a, b])
    wait_until(lambda: linked(a, b, e), what="the mesh")
    base = f"http://{http_address(e)}"
    viewer = WS(f"ws://{http_address(e)}/ws")  # a client of the edge: its events are shown
    assert viewer.request("sub", subject="orders.>")["op"] == "ok"
    with Client(a.address) as publisher, Client(b.address) as other:
        def traffic():
            for i in range(40):
                publisher.publish("orders.new", i)
                other.publish("orders.paid", i)
            rates = http("GET", f"{base}/mesh?rates=1")[1]["rates"]
            return len(rates.get("A", [])) >= 3 and any(rate > 0 for _, rate in rates["A"])

        wait_until(traffic, timeout=20, interval=0.2, what="the edge to keep A's rates without a viewer")
        page.set_viewport_size({"width": 1400, "height": 900})
        page.goto(f"{base}/")
        page.wait_for_selector("#nodes tr[data-node=A]")
        # the chart is full at once: the page itself has polled once
        assert page.evaluate("meshConsole.rates.get('A').length") >= 3
        assert page.locator("#nodes tr[data-node=A] .spark polyline").count() == 1
        page.wait_for_selector("#events div[data-event='client.connect']")
        lines = page.evaluate("[...document.querySelectorAll('#events div')].map(d => [...d.children].map(s => s.textContent))")
        assert all(len(line) == 4 and line[2] == "E" for line in lines if line[1].startswith(("client.", "presence.")))
        assert [line for line in lines if line[1] == "presence.join"][0][3] == "orders.> joined by connection " + \
            next(line for line in lines if line[1] == "client.connect")[3].split("connection ")[1].split(",")[0]
        # the page's own connection (its $events.> subscription) is left out until asked for
        assert not any("$events" in line[3] for line in lines)
        assert "$events.>" not in page.inner_text("#channels")
        page.wait_for_selector("#channels td:text('orders.>')")
        page.check("#show-console")
        page.wait_for_selector("#events div[data-event='presence.join'] span:text('$events.> joined')")
        page.uncheck("#show-console")
        page.check("#show-system")
        page.wait_for_selector("#channels td:text('$events.>')")
        page.uncheck("#show-system")
        screenshot(page, tmp_path, "live")
        for i in range(40):
            publisher.publish("orders.new", i)
        b.kill()
        page.wait_for_selector("#nodes tr[data-node=B].down td.stale")
        assert page.inner_text("#nodes tr[data-node=B] td.stale").startswith("– (was ")
        state = page.inner_text("#nodes tr[data-node=B] td:nth-child(2)")
        assert state.startswith("down since ") and " s ago): " in state
        page.wait_for_timeout(6500)  # past the static backend's 5 s expiry: B left the membership
        assert e.peer_names() == ["A"]
        assert ", left the mesh " in page.inner_text("#nodes tr[data-node=B] td:nth-child(2)")
        assert page.inner_text("#mesh-status").startswith("3 nodes, 1 down")
        screenshot(page, tmp_path, "incident")
    viewer.close()


def test_with_auth_and_no_token_the_console_asks_for_one_and_keeps_it_for_the_session(page, start_node, tmp_path):
    import jwt

    secret = "test-secret-of-at-least-thirty-two-bytes"
    e = start_node("E", "--http", "0", "--auth-secret", secret)
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(f"http://{http_address(e)}/")
    page.wait_for_selector("#token-form.shown")
    assert page.inner_text("#status") == "this edge needs a token"
    page.wait_for_timeout(1500)
    assert page.evaluate("meshConsole.mesh") is None  # no WebSocket, no reconnect loop
    assert e.stats()["edge"]["rejected_connections"] == 1  # the one GET /mesh
    screenshot(page, tmp_path, "token")
    admin = jwt.encode({"exp": time.time() + 600, "sub": "ops", "admin": True, "subscribe": [">"], "publish": [">"]},
                       secret, algorithm="HS256")
    page.fill("#token", admin)
    page.click("#token-form button")
    page.wait_for_selector("#status.up")
    page.wait_for_selector("#picture circle[data-node=E][data-state=up]")
    assert page.evaluate("sessionStorage.getItem('meshnode.token')") == admin
    assert not page.is_visible("#token-form")
