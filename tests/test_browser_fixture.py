"""The browser fixtures (browser_fixtures.py) drive a real headless Chromium
against pages served over loopback HTTP."""

import http.server
import os
import threading

import pytest

from browser_fixtures import chromium, page  # noqa: F401  (real Chromium fixtures)

PAGES = {
    "/button.html": """<!doctype html>
<html><head><title>fixture check</title></head><body>
<p id="status">waiting</p>
<button id="go">Go</button>
<script>
  let clicks = 0;
  document.getElementById("go").addEventListener("click", () => {
    clicks += 1;
    document.getElementById("status").textContent = "clicked " + clicks;
    console.log("click number " + clicks);
  });
</script>
</body></html>""",
    "/broken.html": """<!doctype html>
<html><body><p id="ok">before the error</p>
<script>console.warn("about to fail"); null.boom();</script>
</body></html>""",
}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        body = PAGES.get(self.path)
        if body is None:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site():
    """PAGES served by http.server in a thread on 127.0.0.1 (free port)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_click_changes_text(page, site):
    response = page.goto(site.url + "/button.html")
    assert response.status == 200
    assert page.title() == "fixture check"
    assert page.text_content("#status") == "waiting"

    page.click("#go")
    assert page.text_content("#status") == "clicked 1"
    page.click("#go")
    assert page.text_content("#status") == "clicked 2"

    assert "/button.html" in site.requests
    assert page.console_log == ["console.log: click number 1", "console.log: click number 2"]


def test_eventsource_and_websocket_exist(page, site):
    page.goto(site.url + "/button.html")
    found = page.evaluate(
        """() => ({
            eventSource: typeof EventSource,
            webSocket: typeof WebSocket,
            esClosed: EventSource.CLOSED,
            wsOpen: WebSocket.OPEN,
            origin: location.origin,
        })"""
    )
    assert found == {
        "eventSource": "function",
        "webSocket": "function",
        "esClosed": 2,
        "wsOpen": 1,
        "origin": site.url,
    }


def test_page_errors_are_collected(page, site):
    page.goto(site.url + "/broken.html")
    assert page.text_content("#ok") == "before the error"
    assert page.console_log[0] == "console.warning: about to fail"
    assert len(page.console_log) == 2
    assert page.console_log[1].startswith("pageerror: ")
    assert "null" in page.console_log[1]


def test_each_page_has_a_fresh_context(chromium, page):
    page.context.add_cookies([{"name": "k", "value": "v", "url": "http://127.0.0.1/"}])
    other = chromium.new_context()
    try:
        assert other.cookies() == []
    finally:
        other.close()
    assert [c["name"] for c in page.context.cookies()] == ["k"]


def test_fixture_knows_the_browser_processes(chromium):
    # The PIDs recorded at launch are live Chromium processes of this Chromium,
    # one of them the browser Playwright drives over --remote-debugging-pipe.
    assert chromium.is_connected()
    assert chromium.chromium_pids
    cmdlines = []
    for pid in chromium.chromium_pids:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdlines.append(f.read().split(b"\0"))
    assert all(os.path.basename(c[0]) == b"chromium" for c in cmdlines)
    assert sum(b"--remote-debugging-pipe" in c for c in cmdlines) == 1
    assert all(b"--disable-crashpad-for-testing" in c for c in cmdlines
               if b"--remote-debugging-pipe" in c)
