"""Control-socket rules the node enforces: versions and member records."""

import msgpack
import zmq


def raw_request(node, body):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{node.address}")
    try:
        sock.send(msgpack.packb(body))
        assert sock.poll(5000), "no reply"
        return msgpack.unpackb(sock.recv())
    finally:
        sock.close()


def test_unsupported_control_versions_are_refused(start_node):
    a = start_node("A")
    for version in (2, None, True, "1"):
        body = {"cmd": "ping", "id": 7} if version is None else {"v": version, "cmd": "ping", "id": 7}
        reply = raw_request(a, body)
        assert (reply["ok"], reply["error"], reply["id"]) == (False, "unsupported_version", 7)
    assert raw_request(a, {"v": 1, "cmd": "ping", "id": 8})["pong"] is True
    assert a.stats()["control"]["rejected"] == 4


def test_peer_with_another_protocol_or_bad_record_is_refused(start_node):
    a = start_node("A")
    good = a.request("hello")["member"]
    for other in (1, 3):  # version 1 (one message per envelope) and a future version
        reply = a.request("peer", member={**good, "name": "Z", "protocol": other})
        assert reply["error"] == "bad_member" and f"protocol {other}" in reply["message"]
    reply = a.request("peer", member={**good, "name": "Z", "out": "ipc:///tmp/x"})
    assert reply["error"] == "bad_member" and "out" in reply["message"]
    reply = a.request("peer", member={**good, "name": "bad/name"})
    assert reply["error"] == "bad_member" and "node name" in reply["message"]
    assert a.peer_names() == []
    assert a.alive()
