"""Edge authorization: HS256 JWTs (PyJWT) naming what a client may do.

A token's claims: ``exp`` (required), ``subscribe`` and ``publish`` (lists of
patterns). A client may subscribe to a pattern that one of its ``subscribe``
patterns covers, and publish on a subject one of its ``publish`` patterns
matches. Without ``--auth-secret`` every client may do everything.
"""

from urllib.parse import parse_qs

import jwt

from mesh.subjects import Pattern

from .edgeproto import EdgeError


class Grant:
    """What one client may do."""

    def __init__(self, subscribe=(">",), publish=(">",)):
        self.subscribe = [Pattern(p) for p in subscribe]
        self.publish = [Pattern(p) for p in publish]

    def may_subscribe(self, pattern):
        return any(allowed.covers(pattern) for allowed in self.subscribe)

    def may_publish(self, subject):
        return any(allowed.matches(subject) for allowed in self.publish)


OPEN = Grant()


class Authenticator:
    def __init__(self, secret=None):
        self.secret = secret

    def grant(self, token):
        """The Grant for a token (None when auth is off); EdgeError 401 otherwise."""
        if self.secret is None:
            return OPEN
        if not token:
            raise EdgeError("unauthorized", "a token is required (?token= or Authorization: Bearer)",
                            http_status=401)
        try:
            claims = jwt.decode(token, self.secret, algorithms=["HS256"], options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            raise EdgeError("unauthorized", "token expired", http_status=401) from None
        except jwt.InvalidTokenError as exc:
            raise EdgeError("unauthorized", f"invalid token: {exc}", http_status=401) from None
        patterns = {key: claims.get(key, []) for key in ("subscribe", "publish")}
        for key, value in patterns.items():
            if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                raise EdgeError("unauthorized", f"claim {key!r} must be a list of patterns", http_status=401)
        try:
            return Grant(patterns["subscribe"], patterns["publish"])
        except ValueError as exc:
            raise EdgeError("unauthorized", f"token names a bad pattern: {exc}", http_status=401) from None


def token_from(environ):
    """The token from ``?token=`` or ``Authorization: Bearer``."""
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return (parse_qs(environ.get("QUERY_STRING", "")).get("token") or [None])[0]
