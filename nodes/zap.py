"""The node's ZAP handler: only public keys listed in its key directory get in.

libzmq asks ``inproc://zeromq.zap.01`` about every CURVE handshake on the
node's sockets; pyzmq's Authenticator decides from the ``*.key`` files in the
directory, and this greenlet answers and counts refusals. It must be running
before the node binds anything, or libzmq would accept every client that
knows the mesh's public key.
"""

import logging

import gevent
from zmq.auth.base import Authenticator

from mesh.concurrency import pick_waiter, recv_multipart

from .control import Feature

log = logging.getLogger("meshnode.zap")


class _CountingAuthenticator(Authenticator):
    def __init__(self, context):
        super().__init__(context, log=log)
        self.allowed = 0
        self.denied = 0

    def _send_zap_reply(self, request_id, status_code, status_text, user_id="anonymous"):
        if status_code == b"200":
            self.allowed += 1
        else:
            self.denied += 1
            log.warning("refused a connection: %s", status_text.decode(errors="replace"))
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


class ZapHandler(Feature):
    def __init__(self, context, key_directory):
        self.auth = _CountingAuthenticator(context)
        self.auth.start()  # binds inproc://zeromq.zap.01
        self.auth.configure_curve(domain="*", location=key_directory)
        self._loop = gevent.spawn(self._serve)

    def _serve(self):
        wait = pick_waiter()
        while True:
            request = recv_multipart(self.auth.zap_socket, wait)
            step = self.auth.handle_zap_message(request)  # a coroutine that does not wait for CURVE
            try:
                step.send(None)
            except StopIteration:
                pass

    def stats(self):
        return {"curve": self.counters()}

    def counters(self):
        return {"allowed": self.auth.allowed, "denied": self.auth.denied}

    def stop(self):
        self._loop.kill()
        self.auth.stop()
