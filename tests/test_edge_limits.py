"""An unauthenticated client must not be able to stop a node (issue: slow
requests, file descriptors, connection caps): a node with the open-file limit
of most shells, and more half-open requests than it has descriptors."""

import os
import socket
import time

from edgehelpers import WS, http, http_address
from meshhelpers import collect, warm_up
from meshtest.nodeproc import wait_until

from mesh import Client

PRLIMIT = ("prlimit", "--nofile=1024:1024", "--")


def room_for_sockets(count):
    """Make sure this test process itself may open ``count`` more sockets."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))


def open_descriptors(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_half_open_requests_beyond_the_descriptor_limit_do_not_stop_the_node(start_node):
    a = start_node("A")
    e = start_node("E", "--http", "0", "--header-timeout", "3", peers=[a], prefix=PRLIMIT)
    wait_until(lambda: e.peer_names() == ["A"], what="link")
    fields = dict(part.split("=", 1) for part in e.ready_line.split()[2:])
    assert int(fields["max_connections"]) < 1024 - 64  # lowered from 10,000 to fit the limit
    host, port = http_address(e).rsplit(":", 1)
    room_for_sockets(1100)
    half_open = []
    for _ in range(1100):  # the request line and a header, never the blank line that ends them
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect((host, int(port)))
        except BlockingIOError:
            pass
        half_open.append(sock)
    time.sleep(0.5)
    for sock in half_open:
        try:
            sock.send(b"GET /stats HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            pass
    try:
        assert open_descriptors(e.pid) < 1024
        # The control plane and the data plane go on: stats, publish and subscribe through E,
        # and delivery from a peer.
        assert e.stats()["name"] == "E"
        with Client(e.address) as at_e, Client(a.address) as at_a:
            here, there = at_e.subscribe("lim.>"), at_a.subscribe("lim.>")
            warm_up(at_e, "lim.x", [here, there])
            at_a.publish("lim.y", "from A")
            assert collect(here, 1)[0].data == "from A"
        # The half-open requests are closed after the header timeout; the edge answers again.
        wait_until(lambda: open_descriptors(e.pid) < 200, timeout=15, what="the half-open requests to close")
        status, stats = http("GET", f"http://{http_address(e)}/stats")
        assert status == 200 and stats["header_timeouts"] > 0
    finally:
        for sock in half_open:
            sock.close()
    e.stop()
    assert "Too many open files" not in e.stderr_text and "Traceback" not in e.stderr_text


def test_sigterm_with_hundreds_of_slow_clients_held_stops_the_node(start_node):
    e = start_node("E", "--http", "0", "--header-timeout", "60", prefix=PRLIMIT)
    host, port = http_address(e).rsplit(":", 1)
    room_for_sockets(600)
    held = []
    try:
        for _ in range(600):
            sock = socket.create_connection((host, int(port)))
            sock.sendall(b"GET /stats HTTP/1.1\r\n")
            held.append(sock)
        wait_until(lambda: open_descriptors(e.pid) > 600, what="the slow clients to be held")
        started = time.monotonic()
        assert e.stop(timeout=10) == 0
        assert time.monotonic() - started < 10
    finally:
        for sock in held:
            sock.close()


def test_a_body_that_trickles_in_is_cut_at_the_request_timeout(start_node):
    """Each byte comes well within --request-timeout, the whole body does not."""
    e = start_node("E", "--http", "0", "--request-timeout", "2")
    host, port = http_address(e).rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    try:
        sock.sendall(b"POST /pub/trickle.x HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 100\r\n\r\n")
        started = time.monotonic()
        answer = b""
        for _ in range(100):
            try:
                sock.sendall(b"x")
            except OSError:
                break
            time.sleep(0.5)
            sock.setblocking(False)
            try:
                answer += sock.recv(4096)
            except BlockingIOError:
                pass
            sock.setblocking(True)
            if answer:
                break
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - started < 6
    finally:
        sock.close()
    status, stats = http("GET", f"http://{http_address(e)}/stats")
    assert status == 200 and stats["messages_in"] == 0


def test_a_full_edge_refuses_new_connections_at_once_and_serves_again_after(start_node):
    """Every slot held by a half-open request: a new connection gets a 503 at
    once instead of waiting in the listen queue; the node itself goes on."""
    e = start_node("E", "--http", "0", "--max-connections", "10", "--header-timeout", "60")
    host, port = http_address(e).rsplit(":", 1)
    held = []
    try:
        for _ in range(10 + 64):  # the cap plus the headroom for plain requests
            sock = socket.create_connection((host, int(port)))
            sock.sendall(b"GET /stats HTTP/1.1\r\n")
            held.append(sock)
        wait_until(lambda: open_descriptors(e.pid) > 74, what="the slow clients to be held")
        started = time.monotonic()
        status, body = http("GET", f"http://{host}:{port}/healthz")
        assert (status, body["error"]) == (503, "too_many_connections")
        assert time.monotonic() - started < 2
        assert e.stats()["name"] == "E"  # the control plane is untouched
    finally:
        for sock in held:
            sock.close()
    stats = wait_until(lambda: http("GET", f"http://{host}:{port}/stats")[1], what="the edge to serve again")
    assert stats["refused_connections"] >= 1  # and more while the held ones were still closing
    assert e.stop() == 0 and "refused connections: every connection slot is taken" in e.stderr_text


def test_max_per_address_limits_one_address_and_not_another(start_node):
    e = start_node("E", "--http", "0", "--max-per-address", "3")
    address = http_address(e)
    host, port = address.rsplit(":", 1)
    held = [WS(f"ws://{address}/ws") for _ in range(3)]
    status, body = http("GET", f"http://{address}/healthz")
    assert (status, body["error"]) == (503, "too_many_connections")
    assert "--max-per-address" in body["message"]
    other = socket.create_connection((host, int(port)), source_address=("127.0.0.2", 0))  # another client
    other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert other.recv(100).startswith(b"HTTP/1.1 200")
    other.close()
    held[0].request("sub", subject="addr.>")
    held.pop().close()
    wait_until(lambda: http("GET", f"http://{address}/healthz")[0] == 200, what="a slot for this address")
    assert held[1].request("pub", subject="addr.x", data=1)["op"] == "ok"
    assert held[0].messages(1)[0]["data"] == 1  # the first connections were never disturbed
    assert http("GET", f"http://{address}/stats")[1]["refused_connections"] >= 1


def test_malformed_requests_are_counted_and_logged_once(start_node):
    e = start_node("E", "--http", "0")
    host, port = http_address(e).rsplit(":", 1)
    for i in range(30):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"NOT A REQUEST LINE %d\r\n\r\n" % i)
            try:
                sock.recv(1024)
            except OSError:
                pass
    status, stats = http("GET", f"http://{host}:{port}/stats")
    assert status == 200 and stats["bad_requests"] == 30
    e.stop()
    assert e.stderr_text.count("malformed HTTP requests") == 1, e.stderr_text[-2000:]
    others = [line for line in e.stderr_text.splitlines() if "malformed HTTP requests" not in line]
    assert not [line for line in others if "Invalid" in line or "NOT A REQUEST" in line], others
