"""Edge authorization: verifying JWTs (PyJWT) and the grants they carry.

A token's claims: ``exp`` (required), ``sub`` (who; what a revocation
names), ``subscribe`` and ``publish`` (lists of patterns), ``admin`` (true
for the endpoints that change the mesh, such as revocation). A client may
subscribe to a pattern that one of its ``subscribe`` patterns covers, and
publish on a subject one of its ``publish`` patterns matches. Without keys
every client may do everything.

Keys: HS256 secrets (several during a rotation), PEM public keys (RS256 and
the other RSA algorithms, ES256/384/512 by curve, EdDSA) and JWKS documents
(a key picked by the token's ``kid``). Each key admits only the algorithms of
its own kind, so ``none`` is never accepted and a public key never serves as
an HMAC secret. A token whose ``exp`` lies further ahead than
``max_lifetime`` is refused: so a revocation that lasts that long outlives
every token it could name.
"""

import json
import time
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from mesh.subjects import Pattern

from .protocol import EdgeError

DEFAULT_MAX_LIFETIME = 24 * 3600.0  # nodes/cli/ has the same for --auth-max-lifetime
HMAC_ALGORITHMS = ("HS256",)
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"secp256r1": ("ES256",), "secp384r1": ("ES384",), "secp521r1": ("ES512",)}


class Grant:
    """What one client may do, who it is, and until when (``expires``, Unix
    seconds; None when auth is off)."""

    def __init__(self, subscribe=(">",), publish=(">",), subject=None, expires=None, admin=False):
        self.subscribe = [Pattern(p) for p in subscribe]
        self.publish = [Pattern(p) for p in publish]
        self.subject = subject
        self.expires = expires
        self.admin = admin

    def may_subscribe(self, pattern):
        """System subjects (``$events.>``, ``$dead.>``: mesh/subjects.py) need
        an admin grant or a grant that names them; ``>`` does not cover them."""
        if self.admin and pattern.text[:1] == "$":
            return True
        return any(allowed.covers(pattern) for allowed in self.subscribe)

    def may_publish(self, subject):
        return any(allowed.matches(subject) for allowed in self.publish)


OPEN = Grant(admin=True)


class VerificationKey:
    """One key and the algorithms it admits; ``kid`` only for JWKS keys."""

    def __init__(self, key, algorithms, kid=None, origin=""):
        self.key = key
        self.algorithms = tuple(algorithms)
        self.kid = kid
        self.origin = origin


def public_key_algorithms(key):
    """The JWS algorithms a public key may verify."""
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithms = EC_ALGORITHMS.get(key.curve.name)
        if algorithms:
            return algorithms
        raise ValueError(f"elliptic curve {key.curve.name} has no JWS algorithm")
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return ("EdDSA",)
    raise ValueError(f"{type(key).__name__} is not a key type JWTs are signed with")


def load_public_key(path):
    """A VerificationKey from a PEM file holding a public key."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        key = load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM public key ({exc})") from None
    return VerificationKey(key, public_key_algorithms(key), origin=path)


def load_jwks(path):
    """VerificationKeys from a JWKS file (``{"keys": [...]}``), each with its ``kid``."""
    try:
        with open(path) as f:
            document = json.load(f)
        keys = jwt.PyJWKSet.from_dict(document).keys
    except (ValueError, jwt.PyJWKSetError, jwt.PyJWKError) as exc:
        raise ValueError(f"{path}: not a usable JWKS document ({exc})") from None
    out = []
    for jwk in keys:
        if jwk.key_type == "oct":
            raise ValueError(f"{path}: key {jwk.key_id!r} is a shared secret; give secrets with --auth-secret")
        algorithms = public_key_algorithms(jwk.key)
        if jwk.algorithm_name and jwk.algorithm_name in algorithms:
            algorithms = (jwk.algorithm_name,)  # the document pins it
        out.append(VerificationKey(jwk.key, algorithms, kid=jwk.key_id, origin=path))
    return out


class Authenticator:
    def __init__(self, secrets=(), public_keys=(), jwks=(), audience=None, issuer=None,
                 max_lifetime=DEFAULT_MAX_LIFETIME):
        """``secrets``: HS256 secrets; ``public_keys``: PEM file paths;
        ``jwks``: JWKS file paths. No keys at all: auth is off."""
        self.keys = [VerificationKey(secret, HMAC_ALGORITHMS, origin="--auth-secret") for secret in secrets]
        self.keys += [load_public_key(path) for path in public_keys]
        for path in jwks:
            self.keys += load_jwks(path)
        self.audience = audience
        self.issuer = issuer
        self.max_lifetime = max_lifetime

    @property
    def enabled(self):
        return bool(self.keys)

    def grant(self, token):
        """The Grant for a token (OPEN when auth is off); EdgeError 401 otherwise."""
        if not self.keys:
            return OPEN
        if not token:
            raise EdgeError("unauthorized", "a token is required (?token= or Authorization: Bearer)",
                            http_status=401)
        claims = self._verify(token)
        if claims["exp"] - time.time() > self.max_lifetime:
            raise _unauthorized(f"the token expires more than {self.max_lifetime:g} s from now "
                                f"(--auth-max-lifetime)")
        patterns = {key: claims.get(key, []) for key in ("subscribe", "publish")}
        for key, value in patterns.items():
            if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                raise _unauthorized(f"claim {key!r} must be a list of patterns")
        subject = claims.get("sub")
        if subject is not None and not isinstance(subject, str):
            raise _unauthorized("claim 'sub' must be a string")
        try:
            return Grant(patterns["subscribe"], patterns["publish"], subject=subject, expires=float(claims["exp"]),
                         admin=claims.get("admin") is True)
        except ValueError as exc:
            raise _unauthorized(f"token names a bad pattern: {exc}") from None

    def _verify(self, token):
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"invalid token: {exc}") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        named = [key for key in self.keys if key.kid is not None and key.kid == kid]
        candidates = [key for key in (named or [key for key in self.keys if key.kid is None])
                      if algorithm in key.algorithms]
        if not candidates:
            raise _unauthorized(f"no key for algorithm {algorithm!r}" + (f" and kid {kid!r}" if kid else ""))
        options = {"require": ["exp"], "verify_aud": self.audience is not None}
        for key in candidates:
            try:
                return jwt.decode(token, key.key, algorithms=[algorithm], audience=self.audience,
                                  issuer=self.issuer, options=options)
            except jwt.InvalidSignatureError:
                continue  # another key (a secret being rotated out) may have signed it
            except jwt.ExpiredSignatureError:
                raise _unauthorized("token expired") from None
            except jwt.InvalidTokenError as exc:
                raise _unauthorized(f"invalid token: {exc}") from None
        raise _unauthorized("invalid token: the signature matches no configured key")


def _unauthorized(message):
    return EdgeError("unauthorized", message, http_status=401)


def token_from(environ):
    """The token from ``?token=`` or ``Authorization: Bearer``."""
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return (parse_qs(environ.get("QUERY_STRING", "")).get("token") or [None])[0]
