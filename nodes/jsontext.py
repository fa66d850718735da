"""Mesh data as JSON text, for everything the node writes for people and for
HTTP: the edge's frames, the webhook bodies and the CLI's output. JSON has no
bytes, so bytes become ``{"$base64": "..."}``; map keys JSON cannot hold
(bytes, tuples) are named as text; anything else unknown is its repr."""

import base64
import json


def json_default(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    return repr(value)


def dumps(value):
    try:
        return json.dumps(value, default=json_default, separators=(",", ":"), ensure_ascii=False)
    except TypeError:  # map keys JSON has no form for (bytes, tuples): name them as text
        return json.dumps(_string_keys(value), default=json_default, separators=(",", ":"),
                          ensure_ascii=False)


def _string_keys(value):
    if isinstance(value, dict):
        return {_key_text(k): _string_keys(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_string_keys(v) for v in value]
    return value


def _key_text(key):
    if isinstance(key, (str, int, float, bool)) or key is None:
        return key
    if isinstance(key, bytes):
        return key.decode("utf-8", "backslashreplace")
    return repr(key)
