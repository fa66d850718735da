"""The edge's JSON protocol (docs/EDGE.md): parsing client frames, rendering server frames.

Client frames: ``{"op": "sub"|"unsub", "subject": PATTERN, "id": N}``,
``{"op": "pub", "subject": S, "data": ANY, "id": N}``, ``{"op": "ping"}``,
``{"op": "interest", "subject": S, "timeout": SECONDS, "id": N}``,
``{"op": "refresh", "token": JWT, "id": N}``,
``{"op": "req", "subject": S, "data": ANY, "timeout": SECONDS, "id": N}``.
Server frames: ``msg``, ``ok``, ``error``, ``pong``. Binary data from the mesh
is rendered as ``{"$base64": "..."}`` since JSON has no bytes.
"""

import json

from mesh.recovery import Position
from mesh.subjects import Pattern, validate_subject

from nodes.jsontext import dumps

OPS = ("sub", "unsub", "pub", "ping", "interest", "refresh", "req")
DEFAULT_INTEREST_TIMEOUT = 5.0
DEFAULT_REQUEST_TIMEOUT = 5.0
MAX_REQUEST_TIMEOUT = 60.0


class EdgeError(Exception):
    """A request the edge refuses: rendered as an ``error`` frame (or HTTP status)."""

    def __init__(self, code, message, request_id=None, http_status=400):
        super().__init__(message)
        self.code = code
        self.request_id = request_id
        self.http_status = http_status


def render_message(message):
    """The ``msg`` frame for a mesh Message (rendered once, sent to many).
    ``origin``, ``subject``, ``epoch`` and ``seq`` are what a client keeps
    to build a position (docs/HISTORY.md); a replayed message says so."""
    frame = {"op": "msg", "subject": message.subject, "data": message.data, "origin": message.origin,
             "epoch": message.epoch, "seq": message.seq, "ts": message.ts}
    if message.replayed:
        frame["replayed"] = True
    return dumps(frame)


def event_id(message):
    """An SSE event's id: the position just after this message, as the
    ``Position`` JSON of its one stream (what ``Last-Event-ID`` brings back)."""
    return json.dumps({"t": message.ts, "s": [[message.origin, message.subject, message.epoch, message.seq]]},
                      separators=(",", ":"), ensure_ascii=False)


def parse_position(value, request_id=None):
    """A Position from a ``recover`` field or a ``Last-Event-ID`` (an object or its JSON text)."""
    try:
        return Position.from_json(value if isinstance(value, str) else json.dumps(value))
    except (ValueError, TypeError) as exc:
        raise EdgeError("bad_position", str(exc), request_id) from None


def render_ok(request_id, **fields):
    return dumps({"op": "ok", "id": request_id, **fields})


def render_error(error):
    return dumps({"op": "error", "id": error.request_id, "code": error.code, "message": str(error)})


PONG = dumps({"op": "pong"})


def parse_frame(text):
    """Parse one client frame into ``(op, request_id, target, data)``.

    ``target`` is a Pattern for sub/unsub, a subject str for pub, req and
    interest, None for ping and refresh; ``data`` is the message for pub,
    ``(message, timeout)`` for req, the
    timeout in seconds for interest, the token for refresh, the Position to
    recover from for a sub with ``recover``. Raises EdgeError
    naming the problem.
    """
    try:
        frame = json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise EdgeError("bad_json", f"frame is not JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise EdgeError("bad_frame", "frame must be a JSON object")
    request_id = frame.get("id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, (int, str))):
        raise EdgeError("bad_frame", "id must be a number or a string")
    op = frame.get("op")
    if op not in OPS:
        raise EdgeError("unknown_op", f"unknown op {op!r}; expected one of {', '.join(OPS)}", request_id)
    if op == "ping":
        return op, request_id, None, None
    if op == "refresh":
        token = frame.get("token")
        if not isinstance(token, str) or not token:
            raise EdgeError("bad_frame", "refresh needs a token", request_id)
        return op, request_id, None, token
    subject = frame.get("subject")
    try:
        if op in ("pub", "req"):
            if "data" not in frame:
                raise EdgeError("bad_frame", f"{op} needs data", request_id)
            validate_subject(subject)
            if op == "req":
                timeout = frame.get("timeout", DEFAULT_REQUEST_TIMEOUT)
                if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
                    raise EdgeError("bad_frame", "timeout must be a positive number of seconds", request_id)
                return op, request_id, subject, (frame["data"], min(float(timeout), MAX_REQUEST_TIMEOUT))
            return op, request_id, subject, frame["data"]
        if op == "interest":
            timeout = frame.get("timeout", DEFAULT_INTEREST_TIMEOUT)
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
                raise EdgeError("bad_frame", "timeout must be a number of seconds, 0 or more", request_id)
            validate_subject(subject)
            return op, request_id, subject, float(timeout)
        if op == "sub" and frame.get("recover") is not None:
            return op, request_id, Pattern(subject), parse_position(frame["recover"], request_id)
        return op, request_id, Pattern(subject), None
    except ValueError as exc:
        raise EdgeError("invalid_subject", str(exc), request_id) from None
