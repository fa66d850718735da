"""A request/reply responder for scenario 12: ``python -m bench.responder CONFIG_JSON``.

``{"system": "mesh", "address": CONTROL}`` answers with meshnode's
``Client.serve``; ``{"system": "nats", "url": URL}`` with nats-py. Each
reply is the request's data. Prints ``ready`` once subscribed, runs until
its stdin closes.
"""

import json
import sys


def mesh(config):
    from mesh import Client

    client = Client(config["address"])
    client.serve(config["subject"], lambda message: message.data)
    client.wait_for_subscription(config["subject"])
    print("ready", flush=True)
    sys.stdin.read()
    client.close()


def nats(config):
    import asyncio

    import nats as nats_client

    async def run():
        nc = await nats_client.connect(config["url"])

        async def answer(msg):
            await msg.respond(msg.data)

        await nc.subscribe(config["subject"], cb=answer)
        await nc.flush()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await nc.close()

    asyncio.run(run())


if __name__ == "__main__":
    cfg = json.loads(sys.argv[1])
    {"mesh": mesh, "nats": nats}[cfg["system"]](cfg)
