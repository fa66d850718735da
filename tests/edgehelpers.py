"""Helpers for edge tests: WebSocket clients (websocket-client), HTTP and SSE."""

import json
import socket
import time
import urllib.error
import urllib.request

import websocket


def http_address(node):
    return dict(part.split("=", 1) for part in node.ready_line.split()[2:])["http"]


class WS:
    """A JSON-speaking websocket-client connection."""

    def __init__(self, url, **options):
        self.ws = websocket.create_connection(url, timeout=10, **options)
        self.next_id = 1

    def send(self, frame):
        self.ws.send(json.dumps(frame))

    def recv(self, timeout=10):
        self.ws.settimeout(timeout)
        return json.loads(self.ws.recv())

    def request(self, op, **fields):
        """Send an op with an id; return its ok/error reply (skipping msg frames)."""
        request_id = self.next_id
        self.next_id += 1
        self.send({"op": op, "id": request_id, **fields})
        while True:
            frame = self.recv()
            if frame.get("id") == request_id and frame["op"] in ("ok", "error"):
                return frame

    def messages(self, count, timeout=10):
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            frame = self.recv(max(0.01, deadline - time.monotonic()))
            if frame["op"] == "msg":
                got.append(frame)
        return got

    def close(self):
        self.ws.close()


def http(method, url, body=None, headers=None):
    """(status, parsed JSON body) without raising on 4xx/5xx."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class SSE:
    """A minimal Server-Sent Events reader over a raw socket."""

    def __init__(self, address, path, headers=()):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        lines = [f"GET {path} HTTP/1.1", f"Host: {address}", "Accept: text/event-stream", *headers, "", ""]
        self.sock.sendall("\r\n".join(lines).encode())
        self.buffer = b""
        head = self._until(b"\r\n\r\n")
        self.status = int(head.split()[1])
        self.headers = head.decode()

    def _until(self, marker):
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("stream closed")
            self.buffer += chunk
        item, self.buffer = self.buffer.split(marker, 1)
        return item

    def event(self):
        """The next event as a dict of its fields (comments skipped); chunked framing tolerated."""
        while True:
            raw = self._until(b"\n\n").decode()
            fields = {}
            for line in raw.splitlines():
                if ":" in line and not line.startswith(":"):
                    name, value = line.split(":", 1)
                    if name in ("id", "data", "event", "retry"):
                        fields[name] = value.strip()
            if "data" in fields:
                return fields

    def close(self):
        self.sock.close()
