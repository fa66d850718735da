"""Publisher and subscriber processes: ``python -m bench.workers ROLE CONFIG_JSON``.

One module for every system so that each is driven the same way and measured
at the same place (the subscriber), each with its client library's normal
idiom: raw pyzmq PUB/SUB, the mesh ``Client``, nats-py (asyncio, a callback
subscription) and redis-py (``pubsub().get_message``; publishes one per call
or in pipelines).

Messages are 100 bytes: a header ``<kind:1s><seq:uint32><ts:double>`` and
padding. ``kind`` is ``W`` for warm-up, ``M`` for measured; ``ts`` is
``time.monotonic()`` at publish (CLOCK_MONOTONIC: one clock for every process
on the machine), so a subscriber's one-way latency is its own
``time.monotonic()`` at receive minus ``ts``. In throughput runs the
publisher sends one constant measured payload (no per-message packing).

Line protocol with the orchestrator (``bench/procs.py`` ``Worker``):

* subscriber: prints ``ready`` once subscribed, ``warm`` at its first warm-up
  message (its interest has reached the publisher), then one JSON result:
  delivered count, first/last arrival, rate, and latency percentiles.
* publisher: publishes a warm-up message every 10 ms until it reads ``go``
  (sent when every subscriber is warm), then ``count`` measured messages, as
  fast as it can or at ``rate`` per second; prints one JSON result; then waits
  for ``exit`` (or EOF) before closing, so nothing still queued is dropped.

Subscribers stop at ``count`` messages, or when none came for ``idle``
seconds (loss shows as delivered < sent).
"""

import json
import select
import struct
import sys
import time

HEADER = struct.Struct("<cId")
SIZE = 100
PAD = b"." * (SIZE - HEADER.size)
WARM = b"W"
MEASURED = b"M"
_W = WARM[0]
WARM_INTERVAL = 0.01


def payload(kind, seq=0, ts=0.0):
    return HEADER.pack(kind, seq, ts) + PAD


CONSTANT = payload(MEASURED)


def set_size(size):
    """Messages of ``size`` bytes from now on (cfg ``size``; default 100)."""
    global PAD, CONSTANT
    PAD = b"." * (size - HEADER.size)
    CONSTANT = payload(MEASURED)


def percentile(ordered, p):
    """The p-th percentile of an already sorted list (nearest rank); None if empty."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def latency_summary(seconds):
    """p50/p99/p99.9/max in milliseconds of a list of latencies in seconds."""
    ordered = sorted(seconds)
    pick = {"p50": 50, "p99": 99, "p99_9": 99.9}
    out = {name: round(percentile(ordered, p) * 1000, 3) if ordered else None for name, p in pick.items()}
    out["max"] = round(ordered[-1] * 1000, 3) if ordered else None
    out["n"] = len(ordered)
    return out


def say(line):
    print(line, flush=True)


# -- subscribers ---------------------------------------------------------------

class Collector:
    """Counts measured messages at a subscriber; keeps arrival times in latency mode."""

    def __init__(self, cfg):
        self.count = cfg["count"]
        self.latency = cfg.get("mode") == "latency"
        self.first_timeout = cfg.get("first_timeout", 60.0)
        self.idle = cfg.get("idle", 2.0)
        self.warm = False
        self.n = 0
        self.first = self.last = None
        self.arrivals = []
        self.payloads = []
        self.extra = {}

    def saw_warm(self):
        if not self.warm:
            self.warm = True
            say("warm")

    def run(self, recv):
        """Drive a blocking ``recv(timeout) -> payload or None`` until done."""
        steps = self.steps()
        try:
            timeout = next(steps)
            while True:
                timeout = steps.send(recv(timeout))
        except StopIteration:
            pass

    async def run_async(self, get):
        """``run`` on an event loop, in its idiom: ``await get(timeout)`` for the
        next message (its ``.data`` is the payload; TimeoutError: none came),
        awaited here with no coroutine of the benchmark's around it, as the
        threaded ``run`` calls ``recv`` with no more than a function call."""
        steps = self.steps()
        try:
            timeout = next(steps)
            while True:
                try:
                    data = (await get(timeout)).data
                except TimeoutError:
                    data = None
                timeout = steps.send(data)
        except StopIteration:
            pass

    def steps(self):
        """The collector itself, for ``run`` and ``run_async``: yields how long
        to wait for the next payload and is sent it (None: none came)."""
        deadline = time.monotonic() + self.first_timeout
        while True:
            data = yield max(0.01, min(1.0, deadline - time.monotonic()))
            if data is None:
                if time.monotonic() > deadline:
                    return
                continue
            if data[0] == _W:
                self.saw_warm()
                continue
            break
        now = time.monotonic()
        self.first = self.last = now
        self.n = 1
        cpu = time.process_time()
        count, idle, monotonic = self.count, self.idle, time.monotonic
        if self.latency:
            arrivals, payloads = self.arrivals, self.payloads
            arrivals.append(now)
            payloads.append(data)
            while self.n < count:
                data = yield idle
                if data is None:
                    break
                if data[0] == _W:
                    continue
                arrivals.append(monotonic())
                payloads.append(data)
                self.n += 1
            self.last = arrivals[-1]
        else:
            n, last = 1, now
            while n < count:
                data = yield idle
                if data is None:
                    break
                if data[0] != _W:
                    n += 1
                    last = monotonic()
            self.n, self.last = n, last
        self.extra["cpu_s"] = time.process_time() - cpu  # this process's CPU from the first message on

    def result(self):
        seconds = (self.last - self.first) if self.first is not None else 0.0
        out = {"delivered": self.n, "first": self.first, "last": self.last, "seconds": seconds,
               "rate": (self.n - 1) / seconds if seconds > 0 and self.n > 1 else 0.0}
        if self.latency:
            unpack = HEADER.unpack_from
            out["latency_ms"] = latency_summary([t - unpack(p)[2] for t, p in zip(self.arrivals, self.payloads)])
        out.update(self.extra)
        return out


def sub_zmq(cfg, collector):
    import zmq

    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cfg["endpoint"])
    sock.subscribe(cfg["subject"].encode() + b".")
    say("ready")
    recv_multipart, poll, again = sock.recv_multipart, sock.poll, zmq.Again

    def recv(timeout):
        try:
            return recv_multipart(zmq.NOBLOCK)[1]
        except again:
            if poll(timeout * 1000):
                return recv_multipart()[1]
            return None
    collector.run(recv)


def sub_mesh(cfg, collector):
    from mesh import Client

    client = Client(cfg["endpoint"])
    sub = client.subscribe(cfg["subject"])
    say("ready")
    get = sub.get

    def recv(timeout):
        try:
            return get(timeout=timeout).data
        except TimeoutError:
            return None
    collector.run(recv)
    collector.extra["gaps"] = sub.gaps


def _loop_in_thread():
    """An asyncio loop on a thread of its own, for the asyncio client's workers."""
    import asyncio
    import threading

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    return loop


def _on(loop, coroutine):
    import asyncio

    return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


def sub_mesh_aio(cfg, collector):
    """sub_mesh with mesh.aio, in its idiom: the collector runs on the event
    loop and awaits ``get`` (a reader on another thread would pay a hand-over
    between threads for every batch: more than the subscriber's own work
    when the subscriber keeps up with the publisher)."""
    import asyncio

    from mesh.aio import Client

    async def main():
        client = await Client.connect(cfg["endpoint"])
        sub = await client.subscribe(cfg["subject"])
        say("ready")
        await collector.run_async(sub.get)
        collector.extra["gaps"] = sub.gaps
        await client.close()

    asyncio.run(main())


def sub_redis(cfg, collector):
    import redis

    host, port = cfg["endpoint"].rsplit(":", 1)
    r = redis.Redis(host=host, port=int(port))
    pubsub = r.pubsub()
    pubsub.subscribe(cfg["subject"])
    while True:  # the subscribe confirmation: the server has our subscription
        message = pubsub.get_message(timeout=5)
        if message and message["type"] == "subscribe":
            break
    say("ready")
    get_message, monotonic = pubsub.get_message, time.monotonic

    def recv(timeout):
        end = monotonic() + timeout
        while True:
            message = get_message(timeout=max(0.0, end - monotonic()))
            if message is not None:
                if message["type"] == "message":
                    return message["data"]
            elif monotonic() >= end:
                return None
    collector.run(recv)


def sub_nats(cfg, collector):
    import asyncio

    import nats

    async def main():
        nc = await nats.connect(f"nats://{cfg['endpoint']}", allow_reconnect=False)
        done = asyncio.Event()
        count, latency, monotonic = collector.count, collector.latency, time.monotonic
        arrivals, payloads = collector.arrivals, collector.payloads

        async def handle(msg):
            data = msg.data
            if data[0] == _W:
                collector.saw_warm()
                return
            now = monotonic()
            if collector.n == 0:
                collector.first = now
            collector.n += 1
            collector.last = now
            if latency:
                arrivals.append(now)
                payloads.append(data)
            if collector.n >= count:
                done.set()

        await nc.subscribe(cfg["subject"], cb=handle)
        await nc.flush()
        say("ready")
        deadline = monotonic() + collector.first_timeout
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
            now = monotonic()
            if collector.n == 0 and now > deadline:
                break
            if collector.n and now - collector.last > collector.idle:
                break
        await nc.close()

    asyncio.run(main())


def sub_mesh_green(cfg, collector):
    """sub_mesh in a gevent program (patched in ``main``) beside a greenlet that
    sleeps 5 ms in a loop: how late it wakes while the stream is drained."""
    import gevent

    samples = []  # (woke at, late by seconds)

    def ticker():
        while True:
            start = time.monotonic()
            gevent.sleep(0.005)
            now = time.monotonic()
            samples.append((now, now - start - 0.005))

    gevent.spawn(ticker)
    gevent.sleep(1.0)
    collector.extra["idle_max_late_ms"] = max(late for _, late in samples) * 1000
    sub_mesh(cfg, collector)
    gevent.sleep(0.02)  # a tick the drain held up wakes now
    # The ticks that woke during the drain, and the first one after it (a tick
    # the drain held up wakes just after it: a short drain has no tick inside).
    during = [late for at, late in samples if collector.first is not None and collector.first <= at]
    inside = [late for at, late in samples if collector.first is not None and collector.first <= at <= collector.last]
    during = inside + during[len(inside):len(inside) + 1]
    collector.extra["drain_max_late_ms"] = max(during) * 1000 if during else None
    collector.extra["ticks_during_drain"] = len(during)


SUBSCRIBERS = {"zmq": sub_zmq, "mesh": sub_mesh, "mesh_green": sub_mesh_green, "mesh_aio": sub_mesh_aio,
               "redis": sub_redis, "nats": sub_nats}


def subscriber(cfg):
    collector = Collector(cfg)
    SUBSCRIBERS[cfg["system"]](cfg, collector)
    say(json.dumps(collector.result()))


# -- publishers ----------------------------------------------------------------

def stdin_line(timeout):
    """A line from the orchestrator if one arrives within ``timeout`` s, else None."""
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        return None
    line = sys.stdin.readline()
    return line.strip() or ("" if not line else None)


def paced(cfg, send, flush):
    """Send ``count`` timestamped messages at ``rate``/s; with ``batch_ms``, flush
    every that many ms (what a pipelining program does), else after each send."""
    count, rate = cfg["count"], float(cfg["rate"])
    batch = cfg.get("batch_ms", 0) / 1000.0
    monotonic, sleep = time.monotonic, time.sleep
    start = monotonic()
    i = 0
    oldest = None
    while i < count:
        now = monotonic()
        due = min(count, int((now - start) * rate) + 1)
        while i < due:
            send(payload(MEASURED, i, monotonic()))
            i += 1
            if oldest is None:
                oldest = now
        if oldest is not None and (not batch or now - oldest >= batch or i >= count):
            flush()
            oldest = None
        target = start + i / rate
        if oldest is not None:
            target = min(target, oldest + batch)
        delay = target - monotonic()
        if delay > 0:
            sleep(delay)
    if oldest is not None:
        flush()


def run_publisher(cfg, warm, burst, send, flush, batches=None):
    """Warm up until told to go, then the measured run; reports its rate, and
    with ``batches`` (a callable: ZeroMQ messages sent so far) the ZeroMQ
    messages the run took. ``cpu_s``: this process's CPU seconds in the run."""
    while True:
        warm()
        line = stdin_line(WARM_INTERVAL)
        if line == "go":
            break
        if line == "":
            raise SystemExit("orchestrator went away")
    sent_before = batches() if batches else None
    cpu, started = time.process_time(), time.monotonic()
    if cfg.get("rate"):
        paced(cfg, send, flush)
    else:
        burst(cfg["count"])
    flush()
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    result = {"sent": cfg["count"], "seconds": seconds, "rate": cfg["count"] / seconds if seconds else 0.0,
              "cpu_s": cpu}
    if batches:
        result["zmq_messages"] = batches() - sent_before
    say(json.dumps(result))
    sys.stdin.readline()  # "exit" or EOF


def pub_zmq(cfg):
    import zmq

    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.bind(cfg["endpoint"])
    send_multipart = sock.send_multipart
    if cfg.get("stream"):
        stream(cfg, lambda subject, data: send_multipart((subject.encode() + b".", data)))
        sock.close(linger=0)
        return
    topic = cfg["subject"].encode() + b"."

    def burst(count):
        frames = (topic, CONSTANT)
        for _ in range(count):
            send_multipart(frames)

    run_publisher(cfg, lambda: send_multipart((topic, payload(WARM))),
                  burst, lambda data: send_multipart((topic, data)), lambda: None)
    sock.close(linger=1000)


def pub_mesh(cfg):
    from mesh import Client

    client = Client(cfg["endpoint"])
    publish = client.publish
    if cfg.get("stream"):
        stream(cfg, publish)
        client.close()
        return
    subject = cfg["subject"]

    def burst(count):
        for _ in range(count):
            publish(subject, CONSTANT)

    # cfg "flush": false leaves a paced publisher to the flush rule (mesh/publisher.py)
    flush = client.flush if cfg.get("flush", True) else (lambda: None)
    run_publisher(cfg, lambda: publish(subject, payload(WARM)), burst, lambda data: publish(subject, data), flush,
                  lambda: client.publisher.batches)
    client.close()


def pub_mesh_aio(cfg):
    """pub_mesh with mesh.aio: the burst is one coroutine on the event loop."""
    from mesh.aio import Client

    loop = _loop_in_thread()
    client = _on(loop, Client.connect(cfg["endpoint"]))
    subject = cfg["subject"]

    async def burst(count):
        publish = client.publish
        for _ in range(count):
            publish(subject, CONSTANT)

    async def one(data):
        client.publish(subject, data)

    run_publisher(cfg, lambda: _on(loop, one(payload(WARM))), lambda count: _on(loop, burst(count)),
                  lambda data: _on(loop, one(data)), lambda: _on(loop, client.flush()),
                  lambda: client.sync.publisher.batches)
    _on(loop, client.close())


def pub_redis(cfg):
    import redis

    host, port = cfg["endpoint"].rsplit(":", 1)
    r = redis.Redis(host=host, port=int(port))
    if cfg.get("stream"):
        stream(cfg, r.publish)
        r.close()
        return
    subject = cfg["subject"]
    batch = cfg.get("pipeline", 0)
    if batch:
        pipe = r.pipeline(transaction=False)

        def burst(count):
            done = 0
            while done < count:
                n = min(batch, count - done)
                for _ in range(n):
                    pipe.publish(subject, CONSTANT)
                pipe.execute()
                done += n
        send, flush = (lambda data: pipe.publish(subject, data)), pipe.execute
    else:
        publish = r.publish

        def burst(count):
            for _ in range(count):
                publish(subject, CONSTANT)
        send, flush = (lambda data: publish(subject, data)), (lambda: None)
    run_publisher(cfg, lambda: r.publish(subject, payload(WARM)), burst, send, flush)
    r.close()


def pub_nats(cfg):
    import asyncio

    import nats

    async def main():
        nc = await nats.connect(f"nats://{cfg['endpoint']}", allow_reconnect=False)
        publish = nc.publish
        loop = asyncio.get_running_loop()
        if cfg.get("stream"):
            say("ready")
            stop = loop.run_in_executor(None, sys.stdin.readline)
            period, i, monotonic = 1.0 / float(cfg["rate"]), 0, time.monotonic
            next_tick = monotonic()
            while not stop.done():
                for subject in cfg["subjects"]:
                    await publish(subject, payload(MEASURED, i, monotonic()))
                i += 1
                next_tick += period
                await asyncio.sleep(max(0.0, next_tick - monotonic()))
            await nc.close()
            return
        subject = cfg["subject"]
        go = loop.run_in_executor(None, sys.stdin.readline)
        while not go.done():
            await publish(subject, payload(WARM))
            await nc.flush()
            await asyncio.sleep(WARM_INTERVAL)
        started = time.monotonic()
        count = cfg["count"]
        if cfg.get("rate"):
            rate = float(cfg["rate"])
            monotonic = time.monotonic
            i = 0
            while i < count:
                due = min(count, int((monotonic() - started) * rate) + 1)
                while i < due:
                    await publish(subject, payload(MEASURED, i, monotonic()))
                    i += 1
                delay = started + i / rate - monotonic()
                await asyncio.sleep(max(0.0, delay))
        else:
            for _ in range(count):
                await publish(subject, CONSTANT)
        await nc.flush()
        seconds = time.monotonic() - started
        say(json.dumps({"sent": count, "seconds": seconds, "rate": count / seconds if seconds else 0.0}))
        await loop.run_in_executor(None, sys.stdin.readline)
        await nc.close()

    asyncio.run(main())


def stream(cfg, send_on, flush=lambda: None):
    """Convergence mode: every 1/``rate`` s publish one timestamped message on
    each of ``subjects`` until the orchestrator says ``exit`` (or goes away)."""
    subjects, period = cfg["subjects"], 1.0 / float(cfg["rate"])
    monotonic = time.monotonic
    say("ready")
    next_tick = monotonic()
    i = 0
    while True:
        for subject in subjects:
            send_on(subject, payload(MEASURED, i, monotonic()))
        flush()
        i += 1
        next_tick += period
        if stdin_line(max(0.0, next_tick - monotonic())) is not None:
            return


PUBLISHERS = {"zmq": pub_zmq, "mesh": pub_mesh, "mesh_aio": pub_mesh_aio, "redis": pub_redis, "nats": pub_nats}


def proxy(cfg):
    """A plain ``zmq.proxy`` (XSUB connected upstream, XPUB bound) in its own process:
    the forwarding a mesh node does, without a node around it (a diagnostic)."""
    import zmq

    context = zmq.Context.instance()
    xsub, xpub = context.socket(zmq.XSUB), context.socket(zmq.XPUB)
    for sock in (xsub, xpub):
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
    xpub.bind(cfg["out"])
    xsub.connect(cfg["in"])
    say("ready")
    zmq.proxy(xsub, xpub)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    role, cfg = argv[0], json.loads(argv[1])
    if cfg.get("system") == "mesh_green":
        from gevent import monkey

        monkey.patch_all()
    set_size(cfg.get("size", SIZE))
    if role == "proxy":
        proxy(cfg)
    elif role == "sub":
        subscriber(cfg)
    elif role == "pub":
        PUBLISHERS[cfg["system"]](cfg)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
