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


# One bad field per request, each against what docs/PROTOCOL.md 7.3 says the field is.
BAD_FIELDS = [
    ("history", {"pattern": "h.>", "limit": 0}), ("history", {"pattern": "h.>", "limit": 1.5}),
    ("history", {"pattern": "h.>", "limit": 5000}), ("history", {"pattern": "h.>", "limit": True}),
    ("history", {"pattern": "h.>", "limit": "10"}), ("history", {"pattern": "h.>", "partial": "yes"}),
    ("history", {"pattern": "h.>", "partial": 1}), ("history", {"pattern": "h.>", "since": -1}),
    ("history", {"pattern": 5}), ("history", {"pattern": "h.>", "cursor": ["h.a", 1.0]}),
    ("queue_join", {"group": "g", "pattern": "q.>", "member": "m1", "capacity": 1.5}),
    ("queue_join", {"group": "g", "pattern": "q.>", "member": "m1", "capacity": 10, "pending": -1}),
    ("queue_join", {"group": "g.x", "pattern": "q.>", "member": "m1", "capacity": 10}),
    ("queue_join", {"group": "g", "pattern": "q.>", "member": "m-1", "capacity": 10}),
    ("queue_join", {"group": "g", "pattern": "q.>", "member": "m1", "capacity": 10, "relay": "no"}),
    ("queue_join", {"group": "g", "pattern": "q.>", "member": "m1", "capacity": 10, "node": 7}),
    ("queue_join", {"group": "g", "pattern": "q.>", "member": "m1", "capacity": 10, "node": "a b"}),
    ("queue_leave", {"group": "g", "pattern": "q.>", "member": "m1", "relay": 0}),
    ("queue_leave", {"group": "g", "pattern": "q.>"}),
    ("job_extend", {"job": "j", "member": "m1", "seconds": 3601}),
    ("job_extend", {"job": "j", "member": "m1", "seconds": 0}), ("job_ack", {"job": 1, "member": "m1"}),
    ("hook_add", {"key": "k", "url": "http://127.0.0.1:9/x", "relay": "false"}),
    ("hook_add", {"key": "k", "url": "http://127.0.0.1:9/x", "created": "today"}),
    ("hook_add", {"key": "k", "url": "http://127.0.0.1:9/x", "max_age": 0}),
    ("hook_rm", {"key": "k", "url": "http://127.0.0.1:9/x", "relay": None}),
    ("hook_ls", {"key": 3}),
    ("revoke", {"sub": "u", "relay": "no"}), ("revoke", {"sub": "u", "seconds": 0}), ("revoke", {}),
    ("presence", {"channel": "c", "limit": 0}), ("presence", {"channel": "c", "limit": 10001}),
    ("channels", {"limit": 2.0}), ("bye", {"name": 3}),
]


def test_every_command_refuses_the_fields_the_spec_calls_bad(start_node):
    a = start_node("A", "--history", "h.>=10/60s")
    for cmd, fields in BAD_FIELDS:
        reply = a.request(cmd, **fields)
        assert (reply["ok"], reply.get("error")) == (False, "bad_request"), (cmd, fields, reply)
    for cmd, fields in (("history", {"pattern": "h.>", "limit": 1}), ("history", {"pattern": "h.>", "limit": 1000}),
                        ("history", {"pattern": "h.>", "partial": False}), ("presence", {"channel": "c"}),
                        ("queue_join", {"group": "g", "pattern": "q.>", "member": "m1", "capacity": 10,
                                        "relay": False, "node": None}),
                        ("queue_leave", {"group": "g", "pattern": "q.>", "member": "m1", "relay": False})):
        reply = a.request(cmd, **fields)
        assert reply["ok"] is True, (cmd, fields, reply)
    assert a.stats()["control"]["rejected"] == len(BAD_FIELDS)
    assert a.alive()
