"""Scenario 15: N nodes on this machine through one ZooKeeper (default 128), and one more.

All N ``meshnode run --zk`` processes are started at once (ZooKeeper's
per-address connection limit, 60 by default, is lifted with
``maxClientCnxns=0``: every node connects from 127.0.0.1). Reported:

* start: first process started to last ``meshnode ready``;
* converge: last ready until every node has N-1 links up;
* proxy restarts per node while the mesh formed (peer changes are coalesced,
  docs/ARCHITECTURE.md), median and max;
* delivery: a subscriber client on every node, 100 messages published at
  the first: the fewest any subscriber got;
* idle: CPU per node (fraction of one core, over a quiet period), median and
  max; the part of it in libzmq's I/O thread, which sends and answers the
  links' heartbeats, and how often that thread ran (wake-ups a second), and
  the part in the main thread (gevent: ZooKeeper, the node's timers); the
  heartbeat PINGs a second each node's ``mesh_in`` sends (``stats``); RSS and
  open descriptors;
* one more join: a node started into the formed mesh: time until every
  node has it linked, and the proxy restarts it cost each node.

Targets (issue 14): converge < 5 s after the last is ready, idle CPU < 1 %
per node.
"""

import os
import statistics
import time

from .base import Column, Scenario, measure, ok_row, option, target

SUBJECT = "scale.x"


def scale(bench, rows):
    n = bench.args.scale_nodes
    label = f"{n} nodes through one ZooKeeper, started at once"
    bench.say(f"[15 scale] {label}")
    measure(bench, rows, "mesh", label, lambda: _run(bench, n),
            lambda r: f"started in {r['start_s']:.1f} s, converged {r['converge_s']:.2f} s after the last; idle CPU "
                      f"per node median {r['idle_cpu_median'] * 100:.2f} %; RSS median {r['rss_mib_median']:.0f} MiB; "
                      f"one more join linked everywhere in {r['join_s']:.2f} s", nodes=n)
    return rows


def _run(bench, n):
    zk = bench.zookeeper(maxClientCnxns=0)
    zk_args = ("--zk", zk.hosts, "--mesh", "scale", "--zk-timeout", "10")  # 128 starting at once load 2 cores
    started = time.monotonic()
    nodes = bench.procs.nodes([f"s{i:03d}" for i in range(n)], *zk_args)
    last_ready = time.monotonic()
    converge_s = _until_linked(nodes, n - 1, timeout=120) - last_ready
    restarts = [node.stats()["links"]["proxy_restarts"] for node in nodes]
    delivered = _delivered(nodes)
    costs = idle_costs(nodes, bench.args.scale_idle_seconds).values()
    cpu, rss, fds = ([cost[what] for cost in costs] for what in ("cpu", "rss_mib", "fds"))
    pings = [node.stats()["links"]["heartbeats"]["pings_per_second"] for node in nodes]
    joined_at = time.monotonic()
    extra = bench.procs.node("s-extra", *zk_args)
    _until_linked(nodes + [extra], n, timeout=60)
    join_s = time.monotonic() - joined_at
    join_restarts = [node.stats()["links"]["proxy_restarts"] - r for node, r in zip(nodes, restarts)]
    return {"start_s": last_ready - started, "converge_s": converge_s,
            "restarts_median": statistics.median(restarts), "restarts_max": max(restarts),
            "delivered_min": min(delivered), "delivered_of": 100,
            "idle_cpu_median": statistics.median(cpu), "idle_cpu_max": max(cpu),
            **{f"idle_{what}_median": statistics.median(cost[what] for cost in costs)
               for what in ("io_thread", "io_wakeups", "main_thread")},
            "pings_median": statistics.median(pings), "pings_max": max(pings),
            "rss_mib_median": statistics.median(rss), "rss_mib_max": max(rss),
            "fds_median": statistics.median(fds), "fds_max": max(fds),
            "join_s": join_s, "join_restarts_max": max(join_restarts)}


def _delivered(nodes):
    """A subscriber at every node, 100 messages published at the first: what each got."""
    from mesh import Client

    clients = [Client(node.address) for node in nodes]
    try:
        subs = [client.subscribe(SUBJECT) for client in clients]
        publisher = clients[0]
        warm_up(publisher, SUBJECT, subs)
        for k in range(100):
            publisher.publish(SUBJECT, k)
        publisher.flush()
        delivered = []
        for sub in subs:
            got = 0
            try:
                while got < 100:
                    if sub.get(timeout=5).data != "warm":
                        got += 1
            except TimeoutError:
                pass
            delivered.append(got)
        return delivered
    finally:
        for client in clients:
            client.close()


def idle_costs(nodes, seconds):
    """{node name: {"cpu": CPU over ``seconds`` of quiet as a fraction of a core,
    "io_thread" and "main_thread": the parts of it in libzmq's I/O threads and in the
    main thread, "io_wakeups": how often the I/O threads were put on a CPU, a second,
    "rss_mib", "fds": open descriptors}}. CPU is each thread's time on a CPU
    (/proc/PID/task/TID/schedstat: nanoseconds, then times scheduled), summed."""
    before = {node.pid: _thread_cpu(node.pid) for node in nodes}
    time.sleep(seconds)
    costs = {}
    for node in nodes:
        after = _thread_cpu(node.pid)
        spent = {tid: [now - then for now, then in zip(counts, before[node.pid].get(tid, (name, 0, 0))[1:])]
                 for tid, (name, *counts) in after.items()}
        io = [spent[tid] for tid in spent if after[tid][0].startswith("ZMQbg/IO")]
        costs[node.name] = {"cpu": sum(ns for ns, _ in spent.values()) / 1e9 / seconds,
                            "io_thread": sum(ns for ns, _ in io) / 1e9 / seconds,
                            "io_wakeups": sum(runs for _, runs in io) / seconds,
                            "main_thread": spent.get(str(node.pid), (0, 0))[0] / 1e9 / seconds,
                            "rss_mib": _rss_mib(node.pid), "fds": len(os.listdir(f"/proc/{node.pid}/fd"))}
    return costs


def _thread_cpu(pid):
    """{thread id: (its name, nanoseconds it has run, times it was put on a CPU)} of a process."""
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as comm, open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                run_ns, _, runs = stat.read().split()
                threads[tid] = (comm.read().strip(), int(run_ns), int(runs))
        except OSError:  # the thread ended meanwhile
            pass
    return threads


def warm_up(publisher, subject, subs, timeout=60):
    """Publish "warm" on ``subject`` until every subscription got one (its
    interest has reached the publisher's node), then drop what is left."""
    deadline = time.monotonic() + timeout
    pending = set(range(len(subs)))
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} subscribers never got a message on {subject}")
        publisher.publish(subject, "warm")
        time.sleep(0.05)
        for i in list(pending):
            try:
                while subs[i].get(timeout=0.005).data == "warm":  # a get reads only with time to wait
                    pending.discard(i)
            except TimeoutError:
                pass
    time.sleep(0.3)
    for sub in subs:
        try:
            while True:
                sub.get(timeout=0.005)
        except TimeoutError:
            pass


def _until_linked(nodes, peers, timeout):
    """When every node has ``peers`` links up (monotonic time)."""
    deadline = time.monotonic() + timeout
    waiting = list(nodes)
    while waiting:
        waiting = [node for node in waiting if node.stats()["links"]["up"] < peers]
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(waiting)} nodes did not link to {peers} peers within {timeout} s")
        time.sleep(0.1)
    return time.monotonic()


def _rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def targets(rows):
    many = ok_row(rows, "mesh")
    name = f"{many['nodes']} nodes" if many else "128 nodes"
    if not many:
        return [target(f"{name}: converge after the last is ready", "< 5 s"),
                target(f"{name}: idle CPU per node (max)", "< 1 %")]
    return [target(f"{name}: converge after the last is ready", "< 5 s", f"{many['converge_s']:.2f} s",
                   many["converge_s"] / 5, many["converge_s"] < 5),
            target(f"{name}: idle CPU per node (max)", "< 1 %",
                   f"{many['idle_cpu_max'] * 100:.2f} % (median {many['idle_cpu_median'] * 100:.2f} %)",
                   many["idle_cpu_max"] / 0.01, many["idle_cpu_max"] < 0.01)]


SCENARIOS = [Scenario("scale", "15", "Many nodes on one machine through one ZooKeeper, and one more joining", scale, [
    Column("start s", lambda r: f"{r['start_s']:.1f}"),
    Column("converge s after last ready", lambda r: f"{r['converge_s']:.2f}"),
    Column("proxy restarts per node (median / max)", lambda r: f"{r['restarts_median']:g} / {r['restarts_max']}"),
    Column("delivered (fewest of 100)", lambda r: str(r["delivered_min"])),
    Column("idle CPU per node (median / max)",
           lambda r: f"{r['idle_cpu_median'] * 100:.2f} % / {r['idle_cpu_max'] * 100:.2f} %"),
    Column("of which libzmq's I/O thread (median)", lambda r: f"{r['idle_io_thread_median'] * 100:.2f} %"),
    Column("I/O thread wake-ups/s (median)", lambda r: f"{r['idle_io_wakeups_median']:.0f}"),
    Column("main thread (median)", lambda r: f"{r['idle_main_thread_median'] * 100:.3f} %"),
    Column("heartbeat PINGs/s sent per node (median / max)",
           lambda r: f"{r['pings_median']:.0f} / {r['pings_max']:.0f}"),
    Column("RSS MiB (median)", lambda r: f"{r['rss_mib_median']:.0f}"),
    Column("fds (median)", lambda r: f"{r['fds_median']:g}"),
    Column("one more join: linked s / restarts", lambda r: f"{r['join_s']:.2f} / {r['join_restarts_max']}")],
    targets=targets, options=[
        option("--scale-nodes", 128, 32, type=int, help="scale: nodes started at once through ZooKeeper"),
        option("--scale-idle-seconds", 10.0, 5.0, type=float,
               help="scale: quiet period over which idle CPU is measured")])]
