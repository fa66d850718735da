"""CurveZMQ keys for a mesh: loading certificates and applying them to sockets.

A key directory (made with ``meshnode keygen DIR NAME``) holds ZeroMQ
certificate files:

* ``mesh.key`` / ``mesh.key_secret``: the mesh's server keypair. Every node
  serves with it; every client and peer must know ``mesh.key`` to connect.
* ``NAME.key`` / ``NAME.key_secret``: one keypair per node or client; it is
  the identity presented when connecting.
* Every ``*.key`` (public) file in a node's directory is a key the node lets
  in (its ZAP handler, ``nodes/zap.py``). Remove a file to revoke a key.
"""

import os

import zmq
import zmq.auth

MESH_CERT = "mesh"


class CurveKeys:
    def __init__(self, directory, server_public, server_secret, public, secret):
        self.directory = directory
        self.server_public = server_public
        self.server_secret = server_secret  # None for a client without the mesh's secret
        self.public = public
        self.secret = secret

    @classmethod
    def load(cls, directory, name=MESH_CERT):
        """Keys for ``name`` from a key directory; ValueError names what is missing."""
        mesh_public_file = os.path.join(directory, f"{MESH_CERT}.key")
        mesh_secret_file = os.path.join(directory, f"{MESH_CERT}.key_secret")
        own_file = os.path.join(directory, f"{name}.key_secret")
        if not os.path.exists(mesh_public_file):
            raise ValueError(f"{mesh_public_file} is missing: create it with 'meshnode keygen {directory} mesh'")
        if not os.path.exists(own_file):
            raise ValueError(f"{own_file} is missing: create it with 'meshnode keygen {directory} {name}'")
        server_public, _ = zmq.auth.load_certificate(mesh_public_file)
        server_secret = None
        if os.path.exists(mesh_secret_file):
            _, server_secret = zmq.auth.load_certificate(mesh_secret_file)
        public, secret = zmq.auth.load_certificate(own_file)
        return cls(directory, server_public, server_secret, public, secret)

    def serve(self, sock):
        """Make a bound socket a CURVE server (before bind)."""
        if self.server_secret is None:
            raise ValueError(f"{self.directory} has no {MESH_CERT}.key_secret: this is a client key directory")
        sock.curve_secretkey = self.server_secret
        sock.curve_publickey = self.server_public
        sock.curve_server = True

    def connect_as_client(self, sock):
        """Make a connecting socket present our key to a mesh node (before connect)."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


def apply_client(curve, sock):
    """Client-side keys on ``sock`` when the mesh uses CURVE (``curve`` not None)."""
    if curve is not None:
        curve.connect_as_client(sock)
    return sock
