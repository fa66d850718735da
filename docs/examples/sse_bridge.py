"""Stream a mesh subscription to browsers as Server-Sent Events, with asyncio only.

    python docs/examples/sse_bridge.py --node 127.0.0.1:7400 --port 8500
    curl -N http://127.0.0.1:8500/orders.%3E

Each GET /<pattern> subscribes with mesh.aio and writes every message as an
event until the browser goes away. ``events()`` is what a FastAPI or
Starlette handler returns in a StreamingResponse (docs/CLIENT.md).
"""

import argparse
import asyncio
import json
import sys
from urllib.parse import unquote

sys.path.insert(0, __file__.rsplit("/docs/", 1)[0])  # run from a checkout

from mesh.aio import Client  # noqa: E402


async def events(mesh, pattern):
    """Server-Sent Events for every message on ``pattern``, until cancelled."""
    sub = await mesh.subscribe(pattern)
    try:
        async for message in sub:
            yield f"data: {json.dumps({'subject': message.subject, 'data': message.data})}\n\n".encode()
    finally:
        await sub.unsubscribe()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", default="127.0.0.1:7400")
    parser.add_argument("--port", type=int, default=8500)
    args = parser.parse_args()
    mesh = await Client.connect(args.node)

    async def serve(reader, writer):
        request = await reader.readline()
        while (await reader.readline()).strip():
            pass  # the headers
        try:
            pattern = unquote(request.split()[1].decode()[1:])
            stream = events(mesh, pattern)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n")
            async for event in stream:
                writer.write(event)
                await writer.drain()
        except (IndexError, ValueError) as exc:
            writer.write(f"HTTP/1.1 400 Bad Request\r\n\r\n{exc}\n".encode())
        except ConnectionError:
            pass  # the browser went away
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", args.port)
    print(f"serving on {args.port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
