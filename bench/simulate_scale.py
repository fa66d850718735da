"""What a mesh of 1,000 or 10,000 nodes would cost, from per-link costs measured here.

    python -m bench.simulate_scale RESULT_SMALL.json RESULT_LARGE.json [--group 32] [--candidates 2]

Reads two benchmark results with scenario 15 (``scale``) at two sizes, fits
per node ``cost = base + per_link * links`` for descriptors, RSS and idle
CPU (a node's peer links are what grows with N), and prints, for a full
mesh and for groups of ``--group`` nodes joined by gateways (nodes/gateway.py,
``--candidates`` gateway candidates per group), at N = 128, 1,000 and
10,000: links per node (members and active gateways), descriptors, RSS,
idle CPU, heartbeat packets per second, who is disturbed by one join, and
hops. A model, not a measurement: it extrapolates straight lines
(heartbeats: ZMTP PINGs and PONGs a node sends or gets, mesh/liveness.py).

Links as built: a member links to its group's other members and to each
candidate's group face; the active gateway also links its collector to
every member of its group and its inbound socket to every candidate of the
other groups.
"""

import argparse
import json
import math

from mesh.liveness import PEER_BACKSTOP_IVL, peer_interval

SIZES = (128, 1000, 10000)


def heartbeat_packets(links):
    """ZMTP PINGs and PONGs a node sends or gets a second with ``links`` peer links
    (mesh/liveness.py): a link is two connections (each end's mesh_in to the other's
    out); on each, the connecting end's PING and its PONG every peer_interval(links),
    the bound end's every PEER_BACKSTOP_IVL."""
    return 2 * links * 2 * (1000 / peer_interval(links) + 1000 / PEER_BACKSTOP_IVL)


def fit(small, large, key):
    """(base, per link) of a per-node figure measured at two sizes."""
    links_small, links_large = small["nodes"] - 1, large["nodes"] - 1
    per_link = (large[key] - small[key]) / (links_large - links_small)
    return small[key] - per_link * links_small, per_link


def per_node(model, links):
    return {name: base + per_link * links for name, (base, per_link) in model.items()}


def layouts(n, group, candidates=2):
    groups = math.ceil(n / group)
    size = min(group, n)
    member_links = size - 1 + candidates
    gateway_links = member_links + size + candidates * (groups - 1)
    return {
        "full mesh": {"member_links": n - 1, "gateway_links": None, "gateways": 0,
                      "join_disturbs": n - 1, "hops": "1"},
        f"groups of {group} + gateways": {"member_links": member_links, "gateway_links": gateway_links,
                                          "gateways": groups, "join_disturbs": size - 1,
                                          "hops": "1 in a group, 3 across (2 gateways)"},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("small")
    parser.add_argument("large")
    parser.add_argument("--group", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=2, help="gateway candidates per group (default 2)")
    args = parser.parse_args(argv)
    rows = []
    for path in (args.small, args.large):
        with open(path) as f:
            rows.append(next(r for r in json.load(f)["scenarios"]["scale"] if r["status"] == "ok"))
    small, large = sorted(rows, key=lambda r: r["nodes"])
    model = {"fds": fit(small, large, "fds_median"), "rss_mib": fit(small, large, "rss_mib_median"),
             "cpu_core": fit(small, large, "idle_cpu_median")}
    print(f"measured: {small['nodes']} and {large['nodes']} nodes; per node = base + per link x links:")
    for name, (base, per_link) in model.items():
        print(f"  {name}: {base:.4g} + {per_link:.4g} x links")
    print()
    print("| N | layout | links per node (gateway) | fds per node (gateway) | RSS MiB per node | "
          "idle CPU per node (gateway) | heartbeat packets/s per node | nodes disturbed by a join | hops |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in SIZES:
        for name, layout in layouts(n, args.group, args.candidates).items():
            member = per_node(model, layout["member_links"])
            gateway = per_node(model, layout["gateway_links"]) if layout["gateway_links"] else None

            def both(key, fmt, scale=1.0, member=member, gateway=gateway):
                text = fmt.format(member[key] * scale)
                return text + (f" ({fmt.format(gateway[key] * scale)})" if gateway else "")

            links = str(layout["member_links"]) + (f" ({layout['gateway_links']})" if gateway else "")
            print(f"| {n:,} | {name} | {links} | {both('fds', '{:,.0f}')} | {both('rss_mib', '{:,.0f}')} | "
                  f"{both('cpu_core', '{:.2f} %', 100)} | "
                  f"{heartbeat_packets(layout['member_links']):,.0f} | {layout['join_disturbs']:,} | "
                  f"{layout['hops']} |")


if __name__ == "__main__":
    main()
