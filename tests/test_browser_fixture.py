"""The browser fixtures (browser_fixtures.py, imported by conftest.py) drive a
real headless Chromium against pages served over loopback HTTP."""

import http.server
import os
import threading

import pytest

from browser_fixtures import page_wait_until

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
<html><head><link rel="icon" href="data:,"></head><body><p id="ok">before the error</p>
<img src="/missing.png">
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
    # Chromium's own /favicon.ico request (a 404 here) is not logged as the page's error.
    page_wait_until(page, lambda: "/favicon.ico" in site.requests, what="a favicon request")
    page.wait_for_timeout(200)  # time for its console error to arrive, were it logged
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
    page_wait_until(page, lambda: len(page.console_log) >= 3, what="3 console entries")
    log = page.console_log
    assert len(log) == 3, log
    assert "console.warning: about to fail" in log
    assert (f"console.error: Failed to load resource: the server responded with a status "
            f"of 404 (Not Found) ({site.url}/missing.png)") in log
    [error] = [m for m in log if m.startswith("pageerror: ")]
    assert "null" in error


def test_each_page_has_a_fresh_context(chromium, page):
    page.context.add_cookies([{"name": "k", "value": "v", "url": "http://127.0.0.1/"}])
    other = chromium.new_context()
    try:
        assert other.cookies() == []
    finally:
        other.close()
    assert [c["name"] for c in page.context.cookies()] == ["k"]


def _read(pid, what):
    """/proc/PID/<what>, or None if that process has exited since."""
    try:
        with open(f"/proc/{pid}/{what}", "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def test_fixture_knows_the_browser_processes(chromium, page):
    # The PIDs recorded at launch are processes of this Chromium: exactly one is
    # the browser itself (no --type=, driven over --remote-debugging-pipe), and
    # Debian's crash handlers keep their database out of the real home.  A page's
    # renderer, started later, is found too (teardown kills by these PIDs).
    assert chromium.is_connected()
    comms, cmdlines = set(), {}
    for pid in chromium.chromium_pids:
        stat, cmdline = _read(pid, "stat"), _read(pid, "cmdline")
        if stat is None or cmdline is None:
            continue  # e.g. a utility process that has finished
        comms.add(stat.decode().split("(", 1)[1].rsplit(")", 1)[0])
        # Chromium's child processes rewrite their argv into one space-joined string.
        cmdlines[pid] = cmdline.decode().replace("\0", " ")
    assert comms <= {"chromium", "chrome_crashpad"}, comms
    browsers = [pid for pid, c in cmdlines.items()
                if "--remote-debugging-pipe" in c and "--type=" not in c]
    assert len(browsers) == 1, cmdlines
    environ = _read(browsers[0], "environ").decode().split("\0")
    env = dict(v.split("=", 1) for v in environ if "=" in v)
    real_home = os.path.expanduser("~")
    assert env["HOME"] != real_home
    assert env["XDG_CONFIG_HOME"].startswith(env["HOME"])
    assert not [c for c in cmdlines.values() if f"--database={real_home}/" in c]

    page.set_content("<p>renderer</p>")
    renderers = [pid for pid in chromium.chromium_processes.record()
                 if b"--type=renderer" in (_read(pid, "cmdline") or b"")]
    assert renderers
