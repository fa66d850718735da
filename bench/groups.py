"""Scenario 16: groups joined by gateways (default 4 groups of 16 nodes).

Every node runs ``--zk --group gNN``; the first two of each group also
``--gateway`` (one is elected, the other waits). Reported:

* start and converge: every node linked to its group (its peers and the
  two candidates' group faces) and every group's gateway active and linked
  to the other groups' candidates;
* delivery: a subscriber on every node, 100 messages published at a plain
  member of the first group and 100 at one of the last: the fewest and the
  most any subscriber got of each (more than 100 would be a duplicate);
* one-way latency of 500 messages, one at a time, from a plain member of the first
  group to a subscriber in its own group and to one in another group
  (message timestamps; one machine, one clock), median and p99;
* throughput: 100,000 messages of 100 bytes from the same publisher, to a
  subscriber inside the group and to one across a gateway, each alone;
* idle CPU, RSS and descriptors per node, plain members and gateways apart;
* gateway failover: the first group's gateway killed with SIGKILL (ZooKeeper
  session 4 s) while a plain member publishes every 10 ms to a subscriber
  in another group: time until the successor is active and until messages
  cross again, messages lost meanwhile, duplicates;
* one more join into the last group: time until linked, and the proxy
  restarts it cost nodes of other groups (none expected).
"""

import statistics
import time

from .base import Column, Scenario, measure, num, ok_row, option, target
from .scale import idle_costs, warm_up

SESSION = "4"


def groups(bench, rows):
    count, size = bench.args.group_count, bench.args.group_size
    if count < 2 or size < 4:
        raise ValueError("groups: at least 2 groups of 4 (two candidates, a publisher, a subscriber)")
    label = f"{count} groups of {size} nodes joined by gateways, through one ZooKeeper"
    bench.say(f"[16 groups] {label}")
    measure(bench, rows, "groups", label, lambda: _run(bench, count, size),
            lambda r: f"converged {r['converge_s']:.2f} s after the last was ready; latency p50 in group "
                      f"{r['latency_in_p50_ms']:.2f} ms, across {r['latency_across_p50_ms']:.2f} ms; failover: "
                      f"crossing again after {r['failover_resumed_s']:.2f} s, {r['failover_duplicates']} duplicates")
    return rows


def _until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic()


def _converged(groups_of, count, size):
    for members in groups_of:
        for node in members:
            stats = node.stats()
            if stats["links"]["up"] < size - 1 + 2:  # peers, and the two candidates' group faces
                return False
        gateways = [node.stats()["gateway"] for node in members[:2]]
        active = [g for g in gateways if g["active"]]
        if len(active) != 1 or len(active[0]["groups"]) != count - 1 \
                or active[0]["gateway_links"]["up"] < 2 * (count - 1):
            return False
    return True


def _received(sub, want, timeout=5.0):
    """Data of what arrives until ``want`` non-warm-up messages came, or nothing more for ``timeout``."""
    got = []
    try:
        while True:
            message = sub.get(timeout=timeout if len(got) < want else 0.5)
            if message.data != "warm":
                got.append(message.data)
    except TimeoutError:
        return got


def _run(bench, count, size):
    from mesh import Client

    zk = bench.zookeeper(maxClientCnxns=0)
    zk_args = ("--zk", zk.hosts, "--mesh", "groups", "--zk-timeout", SESSION)
    names = [[f"g{g:02d}n{i:02d}" for i in range(size)] for g in range(count)]
    each = {name: ("--group", f"g{g:02d}", *(("--gateway",) if i < 2 else ()))
            for g, group in enumerate(names) for i, name in enumerate(group)}
    started = time.monotonic()
    nodes = bench.procs.nodes([name for group in names for name in group], *zk_args, each=each)
    last_ready = time.monotonic()
    groups_of = [nodes[g * size:(g + 1) * size] for g in range(count)]
    converge_s = _until(lambda: _converged(groups_of, count, size), 120, "groups and gateways") - last_ready
    result = {"groups": count, "size": size, "start_s": last_ready - started, "converge_s": converge_s}
    clients = {node.name: Client(node.address) for node in nodes}
    try:
        result.update(_delivery(clients, nodes, groups_of))
        publisher = clients[groups_of[0][2].name]
        inside, across = clients[groups_of[0][3].name], clients[groups_of[1][3].name]
        result.update(_latency(publisher, inside, across))
        result.update(_rates(publisher, inside, across))
    finally:
        for client in clients.values():
            client.close()
    result.update(_idle(nodes, bench.args.scale_idle_seconds))
    result.update(_failover(groups_of, Client))
    result.update(_join(bench, zk_args, nodes, groups_of))
    return result


def _delivery(clients, nodes, groups_of):
    """A subscriber on every node; 100 messages from a plain member of the first group, then of the last."""
    result = {}
    subs = [clients[node.name].subscribe("groups.all") for node in nodes]
    first, last = groups_of[0][2], groups_of[-1][2]  # plain members, not candidates
    for key, publisher in (("first", clients[first.name]), ("last", clients[last.name])):
        warm_up(publisher, "groups.all", subs)
        for k in range(100):
            publisher.publish("groups.all", k)
        publisher.flush()
        counts = [len(_received(sub, 100)) for sub in subs]
        result[f"delivered_{key}_min"], result[f"delivered_{key}_max"] = min(counts), max(counts)
    for sub in subs:
        sub.unsubscribe()
    return result


def _latency(publisher, inside, across):
    result = {}
    for where, client in (("in", inside), ("across", across)):
        sub = client.subscribe(f"groups.lat.{where}")
        warm_up(publisher, f"groups.lat.{where}", [sub])
        delays = []
        for k in range(500):  # one at a time: each is read before the next is sent
            publisher.publish(f"groups.lat.{where}", k)
            publisher.flush()
            message = sub.get(timeout=2)
            delays.append((time.time() - message.ts) * 1000)
            time.sleep(0.002)
        delays.sort()
        result[f"latency_{where}_p50_ms"] = statistics.median(delays)
        result[f"latency_{where}_p99_ms"] = delays[int(len(delays) * 0.99) - 1]
        sub.unsubscribe()
    return result


def _rates(publisher, inside, across):
    result = {}
    payload = b"x" * 100
    for where, client in (("in", inside), ("across", across)):
        sub = client.subscribe(f"groups.rate.{where}", pending_limit=1_000_000)
        warm_up(publisher, f"groups.rate.{where}", [sub])
        sent = 100_000
        began = time.monotonic()
        for _ in range(sent):
            publisher.publish(f"groups.rate.{where}", payload)
        publisher.flush()
        got = 0
        try:
            while got < sent:
                sub.get(timeout=5)
                got += 1
        except TimeoutError:
            pass
        result[f"rate_{where}"] = got / (time.monotonic() - began)
        result[f"rate_{where}_delivered"] = got
        sub.unsubscribe()
    return result


def _idle(nodes, seconds):
    """Idle CPU, RSS and descriptors, plain members and active gateways apart."""
    costs = idle_costs(nodes, seconds)
    gateways = {node.name for node in nodes if node.stats().get("gateway", {}).get("active")}
    result = {}
    for kind, chosen in (("member", [n for n in nodes if n.name not in gateways]),
                         ("gateway", [n for n in nodes if n.name in gateways])):
        cpu, rss, fds = ([costs[n.name][what] for n in chosen] for what in ("cpu", "rss_mib", "fds"))
        result[f"idle_cpu_{kind}_median"], result[f"idle_cpu_{kind}_max"] = statistics.median(cpu), max(cpu)
        result[f"rss_mib_{kind}_median"] = statistics.median(rss)
        result[f"fds_{kind}_median"] = statistics.median(fds)
    return result


def _join(bench, zk_args, nodes, groups_of):
    """One more node into the last group: until linked there, and the proxy restarts it cost other groups."""
    count, size = len(groups_of), len(groups_of[0])
    restarts = {node.name: node.stats()["links"]["proxy_restarts"] for node in nodes if node.alive()}
    joined_at = time.monotonic()
    extra = bench.procs.node(f"g{count - 1:02d}extra", *zk_args, "--group", f"g{count - 1:02d}")
    _until(lambda: extra.stats()["links"]["up"] >= size - 1 + 2 + 1 and all(
        n.stats()["links"]["up"] >= size + 2 for n in groups_of[-1]), 60, "the extra node linked in its group")
    others = [n for group in groups_of[:-1] for n in group if n.alive()]
    return {"join_s": time.monotonic() - joined_at,
            "join_restarts_other_groups": sum(n.stats()["links"]["proxy_restarts"] - restarts[n.name]
                                              for n in others)}


def _failover(groups_of, Client):
    """Kill the first group's gateway while messages cross from it to another group."""
    group = groups_of[0]
    gateway = next(n for n in group[:2] if n.stats()["gateway"]["active"])
    successor = next(n for n in group[:2] if n is not gateway)
    publisher, listener = Client(group[2].address), Client(groups_of[1][3].address)
    try:
        sub = listener.subscribe("groups.failover")
        warm_up(publisher, "groups.failover", [sub])
        sent = 0

        def publish(seconds):
            nonlocal sent
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                publisher.publish("groups.failover", sent)
                publisher.flush()
                sent += 1
                time.sleep(0.01)

        publish(1.0)
        sent_before_kill = sent
        killed_at = time.monotonic()
        gateway.kill()
        active_at = None
        arrivals = []
        while time.monotonic() - killed_at < 20:
            publish(0.1)
            if active_at is None and successor.stats()["gateway"]["active"]:
                active_at = time.monotonic()
            try:
                while True:  # a get reads the socket only when given time to wait
                    message = sub.get(timeout=0.001)
                    arrivals.append((time.monotonic(), message.data))
            except TimeoutError:
                pass
            if active_at is not None and arrivals and arrivals[-1][0] > active_at + 1:
                break
        publish(1.0)
        arrivals += [(time.monotonic(), data) for data in _received(sub, 0, timeout=1.0)]
        data = [d for _, d in arrivals if d != "warm"]
        resumed = next((t for t, d in arrivals if d != "warm" and d >= sent_before_kill), None)
        return {"failover_active_s": (active_at or float("nan")) - killed_at,
                "failover_resumed_s": (resumed or float("nan")) - killed_at,
                "failover_sent": sent, "failover_lost": sent - len(set(data)),
                "failover_duplicates": len(data) - len(set(data))}
    finally:
        publisher.close()
        listener.close()


def targets(rows):
    grouped = ok_row(rows, "groups")
    name = f"{grouped['groups'] * grouped['size']} nodes in {grouped['groups']} groups" if grouped \
        else "128 nodes in groups"
    if not grouped:
        return [target(f"{name}: converge after the last is ready", "< 5 s"),
                target(f"{name}: idle CPU per node (max, gateways included)", "< 1 %")]
    worst = max(grouped["idle_cpu_member_max"], grouped["idle_cpu_gateway_max"])
    return [target(f"{name}: converge after the last is ready", "< 5 s", f"{grouped['converge_s']:.2f} s",
                   grouped["converge_s"] / 5, grouped["converge_s"] < 5),
            target(f"{name}: idle CPU per node (max, gateways included)", "< 1 %",
                   f"{worst * 100:.2f} % (members' median {grouped['idle_cpu_member_median'] * 100:.2f} %)",
                   worst / 0.01, worst < 0.01)]


SCENARIOS = [Scenario("groups", "16", "Groups of nodes joined by gateways", groups, [
    Column("start / converge s", lambda r: f"{r['start_s']:.1f} / {r['converge_s']:.2f}"),
    Column("delivered of 100 (fewest-most), from first / last group",
           lambda r: f"{r['delivered_first_min']}-{r['delivered_first_max']} / "
                     f"{r['delivered_last_min']}-{r['delivered_last_max']}"),
    Column("latency p50 / p99 ms, in group; across",
           lambda r: f"{r['latency_in_p50_ms']:.2f} / {r['latency_in_p99_ms']:.2f}; "
                     f"{r['latency_across_p50_ms']:.2f} / {r['latency_across_p99_ms']:.2f}"),
    Column("msg/s in group; across", lambda r: f"{num(r['rate_in'])}; {num(r['rate_across'])}"),
    Column("idle CPU median / max, member; gateway",
           lambda r: f"{r['idle_cpu_member_median'] * 100:.2f} / {r['idle_cpu_member_max'] * 100:.2f} %; "
                     f"{r['idle_cpu_gateway_median'] * 100:.2f} / {r['idle_cpu_gateway_max'] * 100:.2f} %"),
    Column("RSS MiB / fds median, member; gateway",
           lambda r: f"{r['rss_mib_member_median']:.0f} / {r['fds_member_median']:g}; "
                     f"{r['rss_mib_gateway_median']:.0f} / {r['fds_gateway_median']:g}"),
    Column("failover: active / crossing again s, lost, duplicates",
           lambda r: f"{r['failover_active_s']:.2f} / {r['failover_resumed_s']:.2f}, {r['failover_lost']} of "
                     f"{r['failover_sent']}, {r['failover_duplicates']}"),
    Column("one more join s / restarts elsewhere",
           lambda r: f"{r['join_s']:.2f} / {r['join_restarts_other_groups']}")],
    targets=targets, options=[
        option("--group-count", 4, 4, type=int, help="groups: groups joined by gateways"),
        option("--group-size", 16, 6, type=int, help="groups: nodes per group, the first two gateway candidates")])]
