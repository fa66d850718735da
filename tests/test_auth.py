"""Auth that holds over time (issue 17): expiry on open connections, in-band
refresh, public keys and JWKS, secret rotation, mesh-wide revocation. Real
node processes, websocket-client and raw sockets as the clients."""

import base64
import hashlib
import hmac
import json
import threading
import time

import jwt
import pytest
import websocket
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from edgehelpers import SSE, WS, http, http_address
from meshtest.nodeproc import wait_until

from mesh import Client

SECRET = "test-secret-of-at-least-thirty-two-bytes"
OTHER_SECRET = "another-secret-of-at-least-thirty-two-bytes"
EVERYTHING = {"subscribe": [">"], "publish": [">"]}


def token(seconds=600, secret=SECRET, **claims):
    return jwt.encode({"exp": time.time() + seconds, **EVERYTHING, **claims}, secret, algorithm="HS256")


def close_frame(ws, timeout=10):
    """Frames until the close: (list of JSON frames before it, (code, reason))."""
    frames = []
    ws.settimeout(timeout)
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return frames, (int.from_bytes(data[:2], "big"), data[2:].decode())
        if opcode == websocket.ABNF.OPCODE_TEXT:
            frames.append(json.loads(data))


class Ticker:
    """Publishes {"n": 0, 1, ...} on a subject every 20 ms from a Python client, with the time sent."""

    def __init__(self, node, subject):
        self.client = Client(node.address)
        self.subject = subject
        self.sent = []  # (n, time)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        n = 0
        while not self._stop.is_set():
            self.sent.append((n, time.time()))
            self.client.publish(self.subject, {"n": n})
            n += 1
            time.sleep(0.02)

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        self.client.close()


def test_a_connection_ends_at_exp_and_a_refreshed_one_keeps_receiving(start_node):
    e = start_node("E", "--http", "0", "--auth-secret", SECRET)
    address = http_address(e)
    expires = time.time() + 3
    short = jwt.encode({"exp": expires, "sub": "u1", **EVERYTHING}, SECRET, algorithm="HS256")
    ending = WS(f"ws://{address}/ws?token={short}")
    refreshed = WS(f"ws://{address}/ws?token={short}")
    for ws in (ending, refreshed):
        assert ws.request("sub", subject="tick.>")["op"] == "ok"
    ticker = Ticker(e, "tick.x")
    try:
        received = []
        refresher_errors = []

        def read_refreshed():
            try:
                while time.time() < expires + 3.5:
                    frame = refreshed.recv()
                    if frame["op"] == "msg":
                        received.append(frame["data"]["n"])
            except Exception as exc:  # reported below
                refresher_errors.append(repr(exc))

        time.sleep(2)
        reply_id = 99
        refreshed.send({"op": "refresh", "token": token(600, sub="u1"), "id": reply_id})
        reader = threading.Thread(target=read_refreshed)
        reader.start()
        frames, close = close_frame(ending.ws, timeout=10)
        late = [f["data"]["n"] for f in frames if f["op"] == "msg"
                and next(t for n, t in ticker.sent if n == f["data"]["n"]) > expires + 0.05]
        assert late == [], "delivered after exp"
        assert frames[-1]["op"] == "error" and frames[-1]["code"] == "token_expired"
        assert close == (4001, "the token expired")
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
            for _ in range(3):
                ending.send({"op": "pub", "subject": "tick.y", "data": 1, "id": 1})
                ending.recv(2)
        reader.join(15)
    finally:
        ticker.stop()
    assert not refresher_errors, refresher_errors
    assert len(received) > 100 and received == list(range(received[0], received[0] + len(received)))  # no gap
    assert time.time() > expires + 3  # it received past twice its first token's life
    assert http("GET", f"http://{address}/stats?token={token(admin=True)}")[1]["expired"] == 1
    assert http("GET", f"http://{address}/stats?token={token()}")[0] == 403  # counters are for admins
    assert http("GET", f"http://{address}/healthz")[0] == 200  # health stays open


def test_a_refresh_that_no_longer_covers_a_subscription_ends_it(start_node):
    e = start_node("E", "--http", "0", "--auth-secret", SECRET)
    ws = WS(f"ws://{http_address(e)}/ws?token={token(sub='u2')}")
    assert ws.request("sub", subject="a.>")["op"] == "ok"
    assert ws.request("sub", subject="b.>")["op"] == "ok"
    ws.send({"op": "refresh", "id": 5, "token": token(sub="u2", subscribe=["a.>"], publish=[])})
    forbidden = ws.recv()
    assert (forbidden["code"], forbidden["subject"]) == ("forbidden", "b.>")
    assert ws.recv() == {"op": "ok", "id": 5}
    assert ws.request("pub", subject="a.x", data=1)["code"] == "forbidden"  # the new grant holds
    assert ws.request("unsub", subject="b.>")["code"] == "not_subscribed"
    other_user = ws.request("refresh", token=token(sub="someone-else"))
    assert other_user["code"] == "forbidden" and "same sub" in other_user["message"]
    assert ws.request("refresh", token="not-a-jwt")["code"] == "unauthorized"
    assert ws.request("refresh", token=token(sub="u2", secret=OTHER_SECRET))["code"] == "unauthorized"


def test_an_event_stream_ends_at_exp(start_node):
    e = start_node("E", "--http", "0", "--auth-secret", SECRET)
    stream = SSE(http_address(e), f"/sub/sse.x?token={token(2)}")
    assert stream.status == 200
    started = time.monotonic()
    last = stream.event()
    assert json.loads(last["data"])["code"] == "token_expired"
    assert 1 < time.monotonic() - started < 5
    with pytest.raises(EOFError):
        stream.event()
    stream.close()


def _pem(public_key):
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _forged_hs256(public_pem):
    """An HS256 token 'signed' with the public key text (the classic key-confusion attack)."""
    def part(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")
    head = part({"alg": "HS256", "typ": "JWT"}) + b"." + part({"exp": time.time() + 60, **EVERYTHING})
    signature = base64.urlsafe_b64encode(hmac.new(public_pem, head, hashlib.sha256).digest()).rstrip(b"=")
    return (head + b"." + signature).decode()


def test_public_keys_jwks_and_what_must_be_refused(start_node, tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = _pem(rsa_key.public_key())
    (tmp_path / "rsa.pem").write_bytes(pem)
    ec_keys = {kid: ec.generate_private_key(ec.SECP256R1()) for kid in ("k1", "k2")}
    jwks = {"keys": []}
    for kid, key in ec_keys.items():
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwks["keys"].append({**jwk, "kid": kid, "alg": "ES256", "use": "sig"})
    (tmp_path / "keys.jwks").write_text(json.dumps(jwks))
    e = start_node("E", "--http", "0", "--auth-public-key", str(tmp_path / "rsa.pem"),
                   "--auth-jwks", str(tmp_path / "keys.jwks"), "--auth-audience", "mesh")
    base = f"http://{http_address(e)}/pub/k"
    claims = {"exp": time.time() + 60, "aud": "mesh", **EVERYTHING}

    def status(tok):
        return http("POST", f"{base}?token={tok}", b"1")[0]

    assert status(jwt.encode(claims, rsa_key, algorithm="RS256")) == 200
    for kid in ("k1", "k2"):
        assert status(jwt.encode(claims, ec_keys[kid], algorithm="ES256", headers={"kid": kid})) == 200
    refused = {
        "a kid naming the other key": jwt.encode(claims, ec_keys["k1"], algorithm="ES256", headers={"kid": "k2"}),
        "an unknown key": jwt.encode(claims, rsa.generate_private_key(public_exponent=65537, key_size=2048),
                                     algorithm="RS256"),
        "HS256 with the public key as secret": _forged_hs256(pem),
        "alg none": jwt.encode(claims, None, algorithm="none"),
        "a wrong audience": jwt.encode({**claims, "aud": "other"}, rsa_key, algorithm="RS256"),
        "no audience": jwt.encode({k: v for k, v in claims.items() if k != "aud"}, rsa_key, algorithm="RS256"),
        "expired": jwt.encode({**claims, "exp": time.time() - 5}, rsa_key, algorithm="RS256"),
        "beyond --auth-max-lifetime": jwt.encode({**claims, "exp": time.time() + 2 * 86400}, rsa_key,
                                                 algorithm="RS256"),
    }
    assert {what: status(tok) for what, tok in refused.items()} == {what: 401 for what in refused}
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(f"ws://{http_address(e)}/ws?token={refused['alg none']}", timeout=5)
    assert info.value.status_code == 401


def test_two_secrets_during_a_rotation_and_a_removed_one(start_node):
    both = start_node("E", "--http", "0", "--auth-secret", SECRET, "--auth-secret", OTHER_SECRET)
    base = f"http://{http_address(both)}/pub/r"
    assert http("POST", f"{base}?token={token(secret=SECRET)}", b"1")[0] == 200
    assert http("POST", f"{base}?token={token(secret=OTHER_SECRET)}", b"1")[0] == 200
    both.stop()
    assert "MonkeyPatchWarning" not in both.stderr_text  # PyJWT must be imported after gevent patches
    rotated = start_node("F", "--http", "0", "--auth-secret", OTHER_SECRET)
    base = f"http://{http_address(rotated)}/pub/r"
    assert http("POST", f"{base}?token={token(secret=SECRET)}", b"1")[0] == 401
    assert http("POST", f"{base}?token={token(secret=OTHER_SECRET)}", b"1")[0] == 200


def test_a_revocation_closes_connections_on_every_node_and_lapses(start_node):
    a = start_node("A", "--http", "0", "--auth-secret", SECRET)
    b = start_node("B", "--http", "0", "--auth-secret", SECRET, peers=[a])
    wait_until(lambda: a.peer_names() == ["B"] and b.peer_names() == ["A"], what="link")
    user = token(sub="mallory")
    bystander = WS(f"ws://{http_address(a)}/ws?token={token(sub='alice')}")
    held = [WS(f"ws://{http_address(node)}/ws?token={user}") for node in (a, b)]
    started = time.monotonic()
    with Client(a.address) as client:
        reply = client.revoke("mallory", seconds=3)
    assert reply["peers"] == {"B": "ok"} and reply["stored"] is False
    for ws in held:
        frames, close = close_frame(ws.ws)
        assert frames[-1]["code"] == "token_revoked" and close[0] == 4003
    assert time.monotonic() - started < 2
    for node in (a, b):
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(f"ws://{http_address(node)}/ws?token={user}", timeout=5)
        assert info.value.status_code == 401
    assert bystander.request("sub", subject="x")["op"] == "ok"  # another sub is not touched
    wait_until(lambda: not a.stats()["revocations"], timeout=6, what="the revocation to lapse")
    WS(f"ws://{http_address(b)}/ws?token={user}").close()  # the same token connects again
    assert b.stats()["edge"]["revoked"] == 1


def test_revoking_over_http_needs_an_admin_token(start_node):
    e = start_node("E", "--http", "0", "--auth-secret", SECRET)
    url = f"http://{http_address(e)}/revoke/bob?for=60"
    assert http("POST", f"{url}&token={token(sub='bob')}")[0] == 403
    status, body = http("POST", f"{url}&token={token(sub='ops', admin=True)}")
    assert status == 200 and body["sub"] == "bob" and body["peers"] == {}
    assert http("POST", f"http://{http_address(e)}/pub/x?token={token(sub='bob')}", b"1")[0] == 401
    assert http("POST", f"http://{http_address(e)}/revoke/bob?for=soon&token={token(admin=True)}")[0] == 400


def test_revocations_in_zookeeper_reach_a_node_that_starts_later(start_node, zk_server):
    a = start_node("A", "--http", "0", "--auth-secret", SECRET, "--zk", zk_server.hosts, "--mesh", "rv")
    result = a.request("revoke", sub="eve", seconds=60)
    assert result["ok"] and result["stored"] is True and result["peers"] == {}
    late = start_node("L", "--http", "0", "--auth-secret", SECRET, "--zk", zk_server.hosts, "--mesh", "rv")
    wait_until(lambda: late.stats()["revocations"] == 1, what="the late node to load the revocation")
    assert http("POST", f"http://{http_address(late)}/pub/x?token={token(sub='eve')}", b"1")[0] == 401
    assert http("POST", f"http://{http_address(late)}/pub/x?token={token(sub='adam')}", b"1")[0] == 200
