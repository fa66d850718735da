"""One fast WebSocket reader in a process of its own: ``python -m bench.wsreader HOST:PORT PATH COUNT``.

Upgrades with a raw socket, then reads server frames as fast as the kernel
hands them over, with no JSON parse per frame: it counts text frames that
carry a ``msg`` and stops after COUNT of them, at a close frame, or after
10 s with nothing to read. Prints ``ready`` once upgraded, then one JSON
line: ``{"messages": N, "close": [CODE, REASON] or null}``. Flood tests and
benchmarks use it: readers in the publisher's own process would share its GIL
and fall behind for reasons of their own.
"""

import json
import sys

from .wsclient import parse_frames, upgrade


def read(sock, buffer, count):
    messages, close = 0, None
    sock.settimeout(10)
    while messages < count and close is None:
        frames, used = parse_frames(buffer)
        buffer = buffer[used:]
        for _, opcode, payload in frames:
            if opcode == 8:
                close = [int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")]
                break
            if opcode == 1 and payload.startswith(b'{"op":"msg"'):
                messages += 1
        if close is not None or messages >= count:
            break
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            break
        if not chunk:
            break
        buffer += chunk
    return {"messages": messages, "close": close}


if __name__ == "__main__":
    address, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    host, port = address.rsplit(":", 1)
    sock, rest = upgrade(host, port, path)
    print("ready", flush=True)
    print(json.dumps(read(sock, rest, count)), flush=True)
