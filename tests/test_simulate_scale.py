"""bench/simulate_scale.py: the per-link fit and the table it prints (no processes)."""

import json

from bench.simulate_scale import fit, layouts, main


def result(path, nodes, fds, rss, cpu):
    row = {"key": "mesh", "status": "ok", "nodes": nodes, "fds_median": fds, "rss_mib_median": rss,
           "idle_cpu_median": cpu}
    path.write_text(json.dumps({"scenarios": {"scale": [row]}}))
    return str(path)


def test_fit_and_table(tmp_path, capsys):
    small = {"nodes": 11, "fds_median": 60, "rss_mib_median": 41, "idle_cpu_median": 0.002}
    large = {"nodes": 101, "fds_median": 240, "rss_mib_median": 50, "idle_cpu_median": 0.011}
    base, per_link = fit(small, large, "fds_median")
    assert per_link == 2 and base == 40  # 2 descriptors per link, 40 of its own
    full, grouped = layouts(1000, 32).values()
    # A member: 31 peers and 2 candidates' group faces; the gateway also collects from 32 and links to
    # 2 candidates in each of the 31 other groups.
    assert full["member_links"] == 999 and grouped["member_links"] == 33
    assert grouped["gateway_links"] == 33 + 32 + 2 * 31 and grouped["join_disturbs"] == 31
    main([result(tmp_path / "a.json", 11, 60, 41, 0.002), result(tmp_path / "b.json", 101, 240, 50, 0.011)])
    out = capsys.readouterr().out
    assert "| 10,000 | full mesh | 9999 | 20,038 |" in out  # 40 + 2 x 9,999 descriptors per node
    assert "| 10,000 | groups of 32 + gateways | 33 (689) |" in out  # 33 + 32 + 2 x 312 other groups
