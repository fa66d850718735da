"""Webhook receivers on loopback for the tests, and what they check of a delivery."""

import base64
import hashlib
import hmac
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOOPBACK = ("--hooks-allow", "127.0.0.0/8")  # receivers listen on loopback, which hooks refuse by default


class Receiver:
    """An HTTP receiver; ``answer(n)`` gives the status (and headers) of its n-th request;
    ``then(headers, body)``, if given, runs after each request is recorded (a relay)."""

    def __init__(self, answer=lambda n: 200, delay=0.0, then=None):
        self.requests = []
        self.paths = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:  # requests come on several threads: n is this one's number
                    receiver.requests.append((dict(self.headers), body))
                    receiver.paths.append(self.path)
                    n = len(receiver.requests)
                if then is not None:
                    then(dict(self.headers), body)
                time.sleep(delay)
                status, headers = receiver._answer(n)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._answer = lambda n: (answer(n), {}) if isinstance(answer(n), int) else answer(n)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self):
        return [headers["webhook-id"] for headers, _ in self.requests]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def verified(secret, headers, body):
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    want = base64.b64encode(hmac.new(base64.b64decode(secret[6:]), content, hashlib.sha256).digest()).decode()
    return f"v1,{want}" in headers["webhook-signature"].split(" ")



def ready(nodes, hooks):
    """Every node knows the hooks and reaches every node's deliverer for each."""
    return all(n.stats().get("queues", {}).get("reachable") == hooks * len(nodes) for n in nodes)
