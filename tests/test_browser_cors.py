"""CORS (nodes/edge/cors.py, docs/EDGE.md): real headless Chromium on a page served
from another origin loads the browser client and calls every HTTP route of an edge."""

import http.client
import http.server
import re
import threading
import time
from pathlib import Path

import jwt
import pytest

from edgehelpers import http_address
from hookhelpers import LOOPBACK
from mesh import Client
from meshtest.nodeproc import linked, wait_until

SECRET = "test-secret-of-at-least-thirty-two-bytes"
ROUTES = Path(__file__).resolve().parent.parent / "nodes" / "edge" / "routes.py"


def token(**claims):
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, SECRET, algorithm="HS256")


@pytest.fixture
def app_origin():
    """An HTTP server on loopback serving an empty page: the app's own origin."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!doctype html><title>app</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


# Every route, called the way a page calls it: (route, method, path, body). The
# WebSocket routes go through the module (/ws) and a plain WebSocket (/ws/<pattern>),
# /sub/ through an EventSource with credentials.
CALLS = [
    ("/", "GET", "/", None),
    ("/meshnode.js", "GET", "/meshnode.js", None),
    ("/favicon.ico", "GET", "/favicon.ico", None),
    ("/healthz", "GET", "/healthz", None),
    ("/metrics", "GET", "/metrics", None),
    ("/stats", "GET", "/stats", None),
    ("/mesh", "GET", "/mesh", None),
    ("/channels", "GET", "/channels", None),
    ("/presence/", "GET", "/presence/cors.a", None),
    ("/interest/", "GET", "/interest/cors.a?timeout=5", None),
    ("/pub/", "POST", "/pub/cors.a", {"n": 1}),
    ("/req/", "POST", "/req/cors.time?timeout=5", {"q": 1}),
    ("/hooks/", "POST", "/hooks/acct", {"url": "http://127.0.0.1:9/hook"}),
    ("/hooks/", "GET", "/hooks/acct", None),
    ("/hooks/", "DELETE", "/hooks/acct?url=http%3A%2F%2F127.0.0.1%3A9%2Fhook", None),
    ("/revoke/", "POST", "/revoke/someone?for=1", None),
]

CALL_EVERYTHING = """async ([edge, token, calls]) => {
    const out = {};
    const {connect} = await import(edge.replace("ws://", "http://") + "/meshnode.js");
    out.module = "loaded";
    const mesh = connect(edge + "/ws", {token});
    window.received = [];
    const sub = mesh.subscribe("cors.>", (m) => window.received.push(m.data));
    await sub.ready;
    const http = edge.replace("ws://", "http://");
    for (const [route, method, path, body] of calls) {
        const init = {method, headers: {Authorization: "Bearer " + token}, credentials: "include"};
        if (body !== null) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
        try {
            const reply = await fetch(http + path, init);
            out[method + " " + path] = [reply.status, (await reply.text()).length > 0];
        } catch (e) { out[method + " " + path] = ["blocked", String(e)]; }
    }
    out.sse = await new Promise((resolve) => {
        const source = new EventSource(http + "/sub/cors.%3E?token=" + token, {withCredentials: true});
        source.onopen = () => fetch(http + "/pub/cors.sse", {method: "POST", body: "2",
            headers: {Authorization: "Bearer " + token, "Content-Type": "application/json"}});
        source.onmessage = (ev) => { source.close(); resolve(JSON.parse(ev.data).subject); };
        source.onerror = () => { source.close(); resolve("error"); };
    });
    out.ws = await new Promise((resolve) => {
        const ws = new WebSocket(edge + "/ws/cors.%3E?token=" + token);
        ws.onopen = () => { ws.close(); resolve("open"); };
        ws.onerror = () => resolve("error");
    });
    await mesh.publish("cors.module", 3);
    for (let i = 0; i < 250 && window.received.length < 4; i++) await new Promise((r) => setTimeout(r, 20));
    mesh.close();
    return out;
}"""


def test_a_page_of_a_listed_origin_loads_the_module_and_calls_every_route(page, start_node, app_origin):
    a = start_node("A")
    e = start_node("E", "--http", "0", "--auth-secret", SECRET, "--allowed-origin", app_origin, *LOOPBACK,
                   peers=[a])
    wait_until(lambda: linked(a, e), what="link")
    table = set(re.findall(r'Route\("([^"]+)"', ROUTES.read_text()))
    assert table - {"/ws", "/ws/", "/sub/"} == {route for route, *_ in CALLS}, "a route is not called here"
    with Client(a.address) as responder:
        responder.serve("cors.time", lambda message: {"answer": message.data["q"]})
        wait_until(lambda: responder.has_interest("cors.time"), what="the responder")
        page.goto(app_origin + "/")
        calls = [list(call) for call in CALLS]
        out = page.evaluate(CALL_EVERYTHING, [f"ws://{http_address(e)}", token(admin=True, subscribe=[">"], publish=[">"]), calls])
    assert out.pop("module") == "loaded"
    assert out.pop("sse") == "cors.sse", page.console_log
    assert out.pop("ws") == "open"
    assert out == {f"{method} {path}": [200, True] for _, method, path, _ in CALLS}, page.console_log
    assert sorted(map(str, page.evaluate("window.received"))) == ["2", "3", "{'n': 1}", "{'q': 1}"]  # q: the request


def test_without_an_allow_list_any_origin_may_use_the_edge_but_not_manage_hooks(page, start_node, app_origin):
    e = start_node("E", "--http", "0", *LOOPBACK)
    page.goto(app_origin + "/")
    base = f"http://{http_address(e)}"
    out = page.evaluate("""async (base) => {
        const {connect} = await import(base + "/meshnode.js");
        const mesh = connect(base.replace("http://", "ws://") + "/ws");
        const got = [];
        const sub = mesh.subscribe("open.>", (m) => got.push(m.data));
        await sub.ready;
        const pub = await fetch(base + "/pub/open.x", {method: "POST", body: "{\\"n\\": 1}",
                                                      headers: {"Content-Type": "application/json"}});
        const health = await (await fetch(base + "/healthz")).json();
        const hook = await fetch(base + "/hooks/k", {method: "POST", body: "{\\"url\\": \\"http://127.0.0.1:9/h\\"}",
                                                    headers: {"Content-Type": "application/json"}});
        for (let i = 0; i < 250 && !got.length; i++) await new Promise((r) => setTimeout(r, 20));
        mesh.close();
        return {pub: pub.status, health: health.ok, hook: [hook.status, (await hook.json()).error], got};
    }""", base)
    assert out == {"pub": 200, "health": True, "hook": [403, "forbidden"], "got": [{"n": 1}]}


def test_an_unlisted_origin_is_refused_by_the_browser(page, start_node, app_origin):
    e = start_node("E", "--http", "0", "--allowed-origin", "http://other.example")
    page.goto(app_origin + "/")
    base = f"http://{http_address(e)}"
    out = page.evaluate("""async (base) => {
        const out = {};
        try { await import(base + "/meshnode.js"); out.module = "loaded"; } catch (e) { out.module = "blocked"; }
        try { await fetch(base + "/healthz"); out.fetch = "read"; } catch (e) { out.fetch = "blocked"; }
        return out;
    }""", base)
    assert out == {"module": "blocked", "fetch": "blocked"}


def preflight(address, path, origin, method="POST"):
    connection = http.client.HTTPConnection(address, timeout=10)
    connection.request("OPTIONS", path, headers={"Origin": origin, "Access-Control-Request-Method": method,
                                                "Access-Control-Request-Headers": "authorization, content-type"})
    reply = connection.getresponse()
    reply.read()
    connection.close()
    return reply.status, {k.lower(): v for k, v in reply.getheaders()}


def test_preflight_names_each_routes_methods_and_the_headers_the_edge_reads(start_node):
    e = start_node("E", "--http", "0", "--allowed-origin", "http://app.example")
    address = http_address(e)
    status, headers = preflight(address, "/pub/x", "http://app.example")
    assert status == 204 and headers["access-control-allow-methods"] == "POST"
    assert headers["access-control-allow-origin"] == "http://app.example"
    assert headers["access-control-allow-credentials"] == "true" and headers["vary"] == "Origin"
    assert "Authorization" in headers["access-control-allow-headers"]
    assert preflight(address, "/hooks/k", "http://app.example", "DELETE")[1]["access-control-allow-methods"] \
        == "DELETE, GET, POST"
    assert preflight(address, "/sub/x", "http://app.example", "GET")[1]["access-control-allow-methods"] == "GET"
    status, headers = preflight(address, "/pub/x", "http://evil.example")
    assert status == 403 and "access-control-allow-origin" not in headers and headers["vary"] == "Origin"
    assert preflight(address, "/nowhere", "http://app.example")[0] == 404
