"""The asyncio client (mesh/aio.py) against real nodes: publish/subscribe
across two nodes, request/reply, queue groups, recovery, a node restart,
ZooKeeper failover, and an event loop that never blocks."""

import asyncio
import json
import time

import pytest
from meshtest.nodeproc import free_port, linked, wait_until

from mesh import NoResponders, RemoteError, RequestTimeout
from mesh.aio import Client


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


async def ticker(ticks):
    """Note the time every 10 ms, for ever: a task the loop must keep running."""
    while True:
        ticks.append(time.monotonic())
        await asyncio.sleep(0.01)


def test_publish_subscribe_across_two_nodes_in_order_with_async_for(mesh3):
    a, b, _ = mesh3

    async def main():
        async with await Client.connect(a.address) as here, await Client.connect(b.address) as there:
            sub = await there.subscribe("aio.>")
            assert await here.wait_for_interest("aio.x")
            for i in range(2000):
                here.publish("aio.x", i)
            await here.flush()
            got = []
            async for message in sub:
                got.append(message.data)
                if len(got) == 2000:
                    break
            assert got == list(range(2000)) and sub.gaps == 0 and sub.received == 2000
            assert message.subject == "aio.x" and message.origin == here.origin
            with pytest.raises(TimeoutError):
                await sub.get(timeout=0.1)
            await sub.unsubscribe()
            with pytest.raises(RuntimeError):
                await sub.get()
        with pytest.raises(RuntimeError, match="closed"):
            here.publish("aio.x", 1)
        with pytest.raises(RuntimeError, match="closed"):
            await here.subscribe("aio.>")

    run(main())


def test_the_loop_keeps_running_while_a_subscription_drains_and_waits(start_node):
    a = start_node("A")

    async def main():
        async with await Client.connect(a.address) as client:
            sub = await client.subscribe("tick.>")
            assert await client.wait_for_interest("tick.x")
            ticks = []
            beat = asyncio.create_task(ticker(ticks))
            waiting = asyncio.create_task(sub.get(timeout=1.0))
            await asyncio.sleep(0.3)  # a reader waiting does not hold the loop
            assert len(ticks) >= 15 and not waiting.done()
            for i in range(20000):
                client.publish("tick.x", i)
            await client.flush()
            assert (await waiting).data == 0
            got = 1
            while got < 20000:
                got += len(await sub.take(timeout=5))
            beat.cancel()
            gaps = [b - a for a, b in zip(ticks, ticks[1:])]
            assert max(gaps) < 0.25  # the ticker kept its 10 ms beat within a quarter second

    run(main())


PUBLISH_FLAT_OUT = """
import sys, time
from mesh import Client
client = Client(sys.argv[1])
while not client.has_interest("busy.x"):
    time.sleep(0.01)
end, n = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < end:
    for _ in range(200):
        client.publish("busy.x", n)
        n += 1
client.close()
print(n)
"""


def test_get_on_a_socket_that_never_empties_leaves_the_loop_to_other_tasks(start_node):
    """``get()`` reads what the socket holds in the caller's turn; while a
    publisher in another process sends flat out for 2 s, the socket never
    empties, and the loop must still run a 10 ms ticker between slices."""
    import subprocess
    import sys

    a = start_node("A")

    async def main():
        async with await Client.connect(a.address) as client:
            sub = await client.subscribe("busy.>")
            ticks = []
            beat = asyncio.create_task(ticker(ticks))
            publisher = subprocess.Popen([sys.executable, "-c", PUBLISH_FLAT_OUT, a.address, "2"],
                                         stdout=subprocess.PIPE, text=True)
            try:
                got = 0
                while True:
                    try:
                        await sub.get(timeout=3.0)
                    except TimeoutError:
                        break
                    got += 1
                    sum(range(30))  # a consumer that does a little work per message
                sent = int(publisher.communicate(timeout=30)[0])
            finally:
                if publisher.poll() is None:
                    publisher.kill()
                    publisher.wait()
            beat.cancel()
            assert got + sub.gaps == sent and got > 0
            gaps = [b - a for a, b in zip(ticks, ticks[1:])]
            assert len(ticks) > 100 and max(gaps) < 0.5  # the ticker kept its beat within half a second

    run(main())


def test_what_get_leaves_in_the_socket_reaches_the_other_waiters(start_node, monkeypatch):
    """One ``get()`` that reads a slice in its caller's turn leaves the rest in
    the socket; a coroutine waiting on another subscription gets its message
    at once, not at the reader's next recheck (made 30 s here)."""
    import mesh.aio

    monkeypatch.setattr(mesh.aio, "RECHECK_SECONDS", 30.0)
    a = start_node("A")

    from mesh import Client as ThreadedClient

    async def main():
        with ThreadedClient(a.address) as publisher:
            async with await Client.connect(a.address) as client:
                many, one = await client.subscribe("many.>"), await client.subscribe("one.>")
                while not (publisher.has_interest("many.x") and publisher.has_interest("one.x")):
                    await asyncio.sleep(0.01)
                waiting = asyncio.create_task(one.get(timeout=20))
                await asyncio.sleep(0.1)  # the waiter sleeps on its event, the reader task on the socket
                for i in range(3000):
                    publisher.publish("many.x", i)
                publisher.publish("one.x", "last")
                publisher.flush()
                time.sleep(0.3)  # the loop held: everything arrives before the reader task can run
                assert (await many.get(timeout=5)).data == 0  # reads one slice in this turn
                message = await asyncio.wait_for(waiting, 10)  # within 10 s: long before the 30 s recheck
                assert message.data == "last"

    run(main())


def test_callbacks_request_reply_and_errors(mesh3):
    a, b, _ = mesh3

    async def main():
        async with await Client.connect(a.address) as asker, await Client.connect(b.address) as server:
            seen = []
            await server.subscribe("cb.>", lambda m: seen.append(m.data))

            async def double(message):
                if message.data == "boom":
                    raise ValueError("no")
                await asyncio.sleep(0)
                return message.data * 2

            await server.serve("math.double", double)
            assert await asker.wait_for_interest("math.double")
            assert (await asker.request("math.double", 21, timeout=5)).data == 42
            replies = await asyncio.gather(*(asker.request("math.double", i, timeout=5) for i in range(50)))
            assert [r.data for r in replies] == [i * 2 for i in range(50)]  # concurrent requests
            with pytest.raises(RemoteError, match="ValueError: no"):
                await asker.request("math.double", "boom", timeout=5)
            with pytest.raises(NoResponders):
                await asker.request("nobody.home", 1, timeout=1)
            await server.subscribe("slow.x")
            assert await asker.wait_for_interest("slow.x")
            with pytest.raises(RequestTimeout):
                await asker.request("slow.x", 1, timeout=0.3)
            assert await asker.wait_for_interest("cb.x")
            asker.publish("cb.x", "hello")
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.05)
            assert seen == ["hello"]
            with pytest.raises(ValueError):
                asker.publish("bad..subject", 1)

    run(main())


def test_queue_groups_and_jobs(mesh3):
    a, b, c = mesh3

    async def main():
        clients = [await Client.connect(n.address) for n in (a, b, c)]
        try:
            workers = [await cl.subscribe("work.>", queue="crew") for cl in clients[1:]]
            jobs = await clients[0].subscribe("job.>", queue="builders", ack_deadline=1.0)
            wait_until(lambda: all(n.stats().get("queues", {}).get("reachable") == 3 for n in (a, b, c)),
                       what="every member reachable everywhere")
            for i in range(200):
                clients[0].publish("work.item", i)
            got = []
            for worker in workers:
                while True:
                    try:
                        got.append((await worker.get(timeout=1.0)).data)
                    except TimeoutError:
                        break
            assert sorted(got) == list(range(200))  # each to exactly one member
            clients[2].publish("job.x", "build it")
            first = await jobs.get(timeout=5)
            again = await jobs.get(timeout=5)  # not acknowledged within 1 s: delivered again
            assert again.job == first.job and again.attempt == first.attempt + 1
            await clients[0].ack(again)
            with pytest.raises(TimeoutError):
                await jobs.get(timeout=2)
            clients[2].publish("job.y", "take your time")
            slow = await jobs.get(timeout=5)
            extended = await clients[0].extend(slow, 30)
            await asyncio.to_thread(extended.result, 5)  # the holder accepted it
            with pytest.raises(TimeoutError):  # past the 1 s deadline, extended: not delivered again
                await jobs.get(timeout=2)
            await clients[0].ack(slow)
        finally:
            for cl in clients:
                await cl.close()

    run(main())


def test_since_a_position_and_a_node_restart(start_node):
    rule = ("--history", "h.>=1000/300s")
    a = start_node("A", *rule)

    async def main():
        async with await Client.connect(a.address) as client:
            sub = await client.subscribe("h.>")
            # The node's recorder already covers h.>: interest is no sign that *this*
            # subscription has arrived, so give it the moment it takes.
            await asyncio.sleep(0.3)
            client.publish("h.x", 0)
            assert (await sub.get(timeout=5)).data == 0
            position = sub.position
            await sub.unsubscribe()
            for i in range(1, 6):
                client.publish("h.x", i)
            await client.flush()
            await asyncio.sleep(0.2)
            again = await client.subscribe("h.>", since=position)
            assert [(await again.get(timeout=5)).data for _ in range(5)] == [1, 2, 3, 4, 5]
            assert again.recovery.recovered

    run(main())


def test_a_client_rides_out_its_node_restarting(start_node):
    port = free_port()
    a = start_node("A", "--port", str(port))
    address = a.address

    async def main():
        nonlocal a
        async with await Client.connect(address) as client:
            sub = await client.subscribe("r.>")
            assert await client.wait_for_interest("r.x")
            client.publish("r.x", "before")
            assert (await sub.get(timeout=5)).data == "before"
            a.stop()
            a = start_node("A", "--port", str(port))
            for _ in range(200):  # the wrapped client's watch re-attaches; the reader follows the new socket
                if client.connected and client.sync.reconnects:
                    break
                await asyncio.sleep(0.05)
            assert await client.wait_for_interest("r.x", timeout=10)
            client.publish("r.x", "after")
            assert (await sub.get(timeout=10)).data == "after"

    run(main())


def test_zookeeper_failover(zk_server, zk_node):
    first = zk_node("A", zk_server.hosts)
    second = zk_node("B", zk_server.hosts)
    wait_until(lambda: linked(first, second), what="A and B linked")

    async def main():
        async with await Client.from_zookeeper(zk_server.hosts, mesh="test") as client:
            sub = await client.subscribe("fo.>")
            assert await client.wait_for_interest("fo.x")
            client.publish("fo.x", 1)
            assert (await sub.get(timeout=5)).data == 1
            left = first if client.node == "A" else second
            left.stop()
            for _ in range(300):
                if client.sync.failovers:
                    break
                await asyncio.sleep(0.05)
            assert client.sync.failovers == 1
            assert await client.wait_for_interest("fo.x", timeout=10)
            client.publish("fo.x", 2)
            assert (await sub.get(timeout=10)).data == 2

    run(main())


def test_nothing_is_read_ahead_of_the_reader(start_node):
    """Messages wait in the socket while nobody awaits them, as with the threaded
    client, instead of being read into a queue that overflows (pending_limit)."""
    a = start_node("A")

    async def main():
        async with await Client.connect(a.address) as client:
            sub = await client.subscribe("ahead.>", pending_limit=2000)  # above one read (READ_BUDGET)
            assert await client.wait_for_interest("ahead.x")
            for i in range(5000):
                client.publish("ahead.x", i)
            await client.flush()
            await asyncio.sleep(1.0)  # the loop is free: a greedy reader would have filled the queue
            got = []
            while len(got) < 5000:
                got.extend(m.data for m in await sub.take(timeout=5))
            assert got == list(range(5000)) and sub.dropped == 0 and sub.gaps == 0

    run(main())


def test_the_sse_bridge_example_in_the_docs_streams_a_subscription(start_node):
    import os
    import subprocess
    import sys
    import urllib.request

    from meshtest.nodeproc import ROOT

    from mesh import Client as ThreadedClient

    a = start_node("A")
    port = free_port()
    bridge = subprocess.Popen([sys.executable, os.path.join(ROOT, "docs", "examples", "sse_bridge.py"),
                               "--node", a.address, "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert bridge.stdout.readline().startswith("serving")
        stream = urllib.request.urlopen(f"http://127.0.0.1:{port}/orders.%3E", timeout=10)
        with ThreadedClient(a.address) as publisher:
            assert publisher.wait_for_interest("orders.eu")
            publisher.publish("orders.eu", {"id": 7})
            lines = [stream.readline() for _ in range(2)]
        assert lines[0].startswith(b"data: ") and lines[1] == b"\n"
        assert json.loads(lines[0][6:]) == {"subject": "orders.eu", "data": {"id": 7}}
        stream.close()
    finally:
        bridge.kill()
        bridge.wait()


def test_two_coroutines_waiting_on_one_subscription(start_node):
    """One gives up (timeout): the other still gets the next message."""
    a = start_node("A")

    async def main():
        async with await Client.connect(a.address) as client:
            sub = await client.subscribe("two.>")
            assert await client.wait_for_interest("two.x")
            patient = asyncio.create_task(sub.get(timeout=10))
            with pytest.raises(TimeoutError):
                await sub.get(timeout=0.2)
            client.publish("two.x", "for the patient one")
            assert (await patient).data == "for the patient one"
            pending = asyncio.create_task(client.request("two.x", 1, timeout=30))
            await asyncio.sleep(0.3)
        with pytest.raises(RuntimeError, match="closed"):  # closing fails a request still waiting
            await pending

    run(main())
