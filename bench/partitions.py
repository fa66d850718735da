"""Scenario 17: partitions between hosts, and how delivery comes back after each heal.

Three hosts as network namespaces on bridges (tests/netns.py), ZooKeeper on
the bridge, one node per host with ``--zk-timeout 4``, and on every host a
client publishing 20 msg/s and subscribing to what every host publishes
(tests/meshbed.py). Each shape below starts a fresh bed, plays its cuts
under that traffic and reports: how long after the heal delivery resumed
between every pair of hosts (the slowest pair; for several heals, the
slowest heal), and per subscriber received + gaps against what was sent.
Needs root (network namespaces); skipped otherwise. Not in the default run:
``python -m bench --scenarios partitions``.
"""

import random

from .base import Column, Scenario, measure, option, skipped

ZK_TIMEOUT = 4


def shapes(cut, flap_seconds):
    """(key, label, schedule maker, run options); a maker takes the MeshBed."""
    from meshbed import step

    def host_cut(seconds, **ports):
        def make(mesh):
            h2 = mesh.host("h2")
            return [(0, step(lambda: h2.cut(**ports))), (seconds, step(lambda: h2.heal(**ports), heal=True))]
        return make

    def loud(mesh):
        h2 = mesh.host("h2")
        return [(0, step(h2.down)), (cut, step(h2.up, heal=True))]

    def pair(mesh):
        h1, h2 = mesh.host("h1"), mesh.host("h2")
        return [(0, step(lambda: mesh.bed.cut_pair(h1, h2))),
                (cut, step(lambda: mesh.bed.heal_pair(h1, h2), heal=True))]

    def flap(mesh):
        h2, draw = mesh.host("h2"), random.Random(27)
        schedule, spent = [], 0.0
        while spent < flap_seconds:
            down, up = draw.uniform(1.0, 5.0), draw.uniform(1.0, 5.0)
            schedule += [(up, step(h2.cut)), (down, step(h2.heal, heal=True))]
            spent += up + down
        return schedule

    return [
        ("short", f"h2 cut silently 3.5 s (< --zk-timeout {ZK_TIMEOUT})", host_cut(3.5), {}),
        ("silent", f"h2 cut silently {cut:g} s", host_cut(cut), {}),
        ("loud", f"h2's links down {cut:g} s", loud, {}),
        ("data", f"h2's data links cut {cut:g} s, ZooKeeper reachable", host_cut(cut, zk=False), {}),
        ("zk", f"h2 cut from ZooKeeper {cut:g} s, data links up", host_cut(cut, data=False), {}),
        ("pair", f"h1 and h2 cut from each other {cut:g} s, both reach h3", pair, {}),
        ("client", f"h3's client on h2's node, h2 cut {cut:g} s", host_cut(cut), {"attach": {"h3": "h2"}}),
        ("flap", f"h2 flapping (1-5 s down, 1-5 s up) for {flap_seconds:g} s", flap, {}),
    ]


def partitions(bench, rows):
    from netns import unavailable

    why_not = unavailable()
    for key, label, make, options in shapes(bench.args.partition_cut, bench.args.flap_seconds):
        bench.say(f"[17 partitions] {label}")
        if why_not:
            rows.append(skipped(key, label, why_not))
            continue
        measure(bench, rows, key, label, lambda make=make, options=options: _play(make, options),
                lambda r: f"resumed {r['resumed_s']} s after the heal; received {r['received']} + gaps {r['gaps']} "
                          f"of {r['sent']} each: {'accounted' if r['accounted'] else 'NOT ACCOUNTED'}")
    return rows


def _play(make, options):
    """A fresh bed of three hosts, ``make``'s schedule played under traffic."""
    from meshbed import MeshBed

    mesh = MeshBed(3, zk_timeout=ZK_TIMEOUT)
    try:
        result = mesh.run(make(mesh), **options)
    finally:
        mesh.close()
    subscribers = result["subscribers"].values()
    resumed = result["resumed"]
    return {"sent": result["sent"], "heals": len(resumed), "resumed_s": None if None in resumed else max(resumed),
            "received": [s["received"] for s in subscribers], "gaps": [s["gaps"] for s in subscribers],
            "accounted": all(s["received"] + s["gaps"] == result["sent"] for s in subscribers)}


SCENARIOS = [Scenario(
    "partitions", "17", "Partitions between hosts (namespaces): delivery after the heal, loss counted", partitions, [
        Column("resumed s after the heal (slowest pair)",
               lambda r: "**never**" if r["resumed_s"] is None else f"{r['resumed_s']:.2f}"),
        Column("received per subscriber", lambda r: " / ".join(map(str, r["received"]))),
        Column("gaps per subscriber", lambda r: " / ".join(map(str, r["gaps"]))),
        Column("sent", lambda r: str(r["sent"])),
        Column("received + gaps = sent", lambda r: "yes" if r["accounted"] else "**no**")],
    default=False,  # it needs root and takes minutes
    options=[option("--partition-cut", 25.0, 12.0, type=float, help="partitions: seconds each cut lasts"),
             option("--flap-seconds", 60.0, 20.0, type=float, help="partitions: seconds of the flapping link")])]
