"""The benchmark harness (python -m bench) in its quick mode with tiny counts.

Checks the harness, not the speed: the command runs every scenario, prints a
table for each, writes the JSON with every row present, marks a peer it
leaves out as skipped (never drops it), and leaves no process behind. No
timing assertions. Servers are not installed here (--no-install): a NATS or
Redis row is measured when the server is on the machine, skipped otherwise.
"""

import json
import os
import subprocess
import sys
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ["--quick", "--no-install", "--skip-peer", "redis", "--messages", "300", "--repeat", "1",
        "--rate", "1000", "--latency-seconds", "0.2", "--fanout-messages", "200", "--fanout-subscribers", "3",
        "--ws-clients", "20", "--broadcasts", "2", "--broadcast-interval", "0.2",
        "--edge-clients", "20", "--edge-burst", "50", "--edge-paced", "10",
        "--convergence-trials", "1", "--sizes", "1024", "--subscriptions", "200", "--entities", "2000",
        "--entity-seconds", "3", "--scale-nodes", "4", "--scale-idle-seconds", "1",
        "--group-count", "2", "--group-size", "4"]

PAIR_KEYS = ["zmq", "mesh1", "mesh2", "mesh3", "zmq_proxy2", "nats", "nats2", "redis", "redis_pipe"]
EXPECTED = {
    "throughput": PAIR_KEYS[:4] + ["aio2"] + PAIR_KEYS[4:],
    "sizes": ["zmq@1024", "mesh2@1024", "nats@1024"],
    "latency": PAIR_KEYS,
    "fanout": ["zmq", "mesh", "nats", "redis", "redis_pipe"],
    "websocket": ["mesh-20", "mesh-auth-20", "nats-20", "redis-20"],
    "edge_fanout": ["mesh", "nats"],
    "convergence": ["mesh-join", "mesh-sub", "nats-join", "nats-sub", "zmq-join", "zmq-sub", "redis-sub",
                    "redis-join"],
    "receive": ["green", "subscriptions-200"],
    "entities": ["entities"],
    "http": ["keepalive", "new-connection"],
    "edge_memory": ["flood", "churn"],
    "revocation": ["revoke-3-nodes"],
    "recovery": ["recover-1000"],
    "requests": ["mesh", "nats"],
    "queues": ["mesh", "nats"],
    "hooks": ["webhook"],
    "scale": ["mesh"],
    "groups": ["groups"],
    "durable": ["plain", "history-memory", "history-batch", "history-never", "history-replicated"],
    "jobs": ["jobs-r1", "jobs-r2"],
}
ALWAYS_MEASURED = {("throughput", k) for k in ("zmq", "mesh1", "mesh2", "mesh3", "aio2")} | \
    {("latency", k) for k in ("zmq", "mesh1", "mesh2", "mesh3")} | \
    {("fanout", "zmq"), ("fanout", "mesh"), ("websocket", "mesh-20"), ("websocket", "mesh-auth-20"), ("edge_fanout", "mesh"),
     ("convergence", "mesh-sub"),
     ("convergence", "zmq-sub"), ("sizes", "zmq@1024"), ("sizes", "mesh2@1024"), ("receive", "green"),
     ("receive", "subscriptions-200"), ("entities", "entities"), ("http", "keepalive"),
     ("http", "new-connection"), ("edge_memory", "flood"), ("edge_memory", "churn"),
     ("revocation", "revoke-3-nodes"), ("recovery", "recover-1000"), ("requests", "mesh"), ("queues", "mesh"), ("hooks", "webhook"),
     ("scale", "mesh"), ("groups", "groups"),
     ("durable", "plain"), ("durable", "history-memory"), ("durable", "history-batch"), ("durable", "history-never"),
     ("durable", "history-replicated"), ("jobs", "jobs-r1"), ("jobs", "jobs-r2")}


def _processes_with(marker):
    """PIDs of live processes whose environment holds ``marker`` (inherited by every descendant)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def test_quick_run_produces_every_scenario(tmp_path):
    marker = f"bench-test-{uuid.uuid4().hex}"
    env = dict(os.environ, MESHNODE_BENCH_TEST_RUN=marker)
    proc = subprocess.Popen([sys.executable, "-m", "bench", *TINY, "--out", str(tmp_path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{err[-5000:]}"

    # Progress was shown while it ran, one line per case at least.
    for number in range(1, 20):
        if number == 17:
            continue  # partitions: not a default scenario (root, minutes)
        assert f"[{number} " in err
    # One table per scenario and the targets.
    for title in ("1. Throughput", "1b. Throughput at larger", "2. One-way latency", "3. Fan-out", "4. WebSocket",
                  "4b. The edge against nats-server",
                  "5. Convergence", "6. The client's receive path", "7. Per-entity", "8. HTTP publish",
                  "9. An edge under a WebSocket publish flood", "10. Revoking a token subject", "11. Recovering missed messages", "12. Request/reply", "13. Queue-group throughput", "14. Webhook deliveries",
                  "18. History in memory and on disk", "19. Jobs held at a node", "### Targets"):
        assert title in out, title

    files = sorted(os.listdir(tmp_path))
    assert len([f for f in files if f.endswith(".json")]) == 1, files
    assert len([f for f in files if f.endswith(".md")]) == 1, files
    with open(tmp_path / next(f for f in files if f.endswith(".json"))) as f:
        result = json.load(f)

    assert list(result["scenarios"]) == list(EXPECTED)
    for scenario, keys in EXPECTED.items():
        rows = {r["key"]: r for r in result["scenarios"][scenario]}
        assert sorted(rows) == sorted(keys), scenario
        for key, r in rows.items():
            assert r["status"] in ("ok", "skipped"), (scenario, r)
            if r["status"] == "skipped":
                assert r["reason"], (scenario, r)
                assert "skipped" in out
            if (scenario, key) in ALWAYS_MEASURED:
                assert r["status"] == "ok", (scenario, r)
            if key.startswith("redis") and scenario != "websocket" and key != "redis-join":
                assert r["status"] == "skipped" and "--skip-peer" in r["reason"], r
    # Everything measured delivered everything.
    for scenario in ("throughput", "sizes", "latency"):
        for r in result["scenarios"][scenario]:
            if r["status"] == "ok":
                assert r["delivered"] == r["sent"], r
    for r in result["scenarios"]["fanout"]:
        if r["status"] == "ok":
            assert r["delivered"] == r["expected"], r
    for r in result["scenarios"]["durable"]:
        if r["status"] == "ok":
            assert r["latency_delivered"] == r["latency_sent"] and r["p99"] is not None, r
    for r in result["scenarios"]["websocket"]:
        if r["status"] == "ok":
            assert r["connected"] == 20 and r["deliveries"] == r["expected"], r

    receive = {r["key"]: r for r in result["scenarios"]["receive"]}
    assert receive["green"]["gaps"] == 0 and receive["green"]["drain_max_late_ms"] is not None, receive
    assert receive["subscriptions-200"]["delivered"] == receive["subscriptions-200"]["subscriptions"] == 200
    entity = result["scenarios"]["entities"][0]
    assert entity["received"] == entity["published"] and entity["gaps"] == entity["dropped"] == 0, entity
    flood = next(r for r in result["scenarios"]["edge_memory"] if r["key"] == "flood")
    assert flood["delivered"] == [flood["messages"]] * 3 and flood["fast_cut"] == 0, flood
    assert flood["slow_consumers"] == 1, flood  # the reader that never reads, and only it
    revoked = result["scenarios"]["revocation"][0]
    assert revoked["closed"] == revoked["connections"] and revoked["peers"] == {"rv-b": "ok", "rv-c": "ok"}
    recovered = result["scenarios"]["recovery"][0]
    assert recovered["recovered"] == recovered["messages"] and recovered["complete"], recovered
    for r in result["scenarios"]["queues"]:
        if r["status"] == "ok":
            assert r["delivered"] == r["messages"] and r["duplicates"] == 0, r
    hook = result["scenarios"]["hooks"][0]
    assert hook["delivered"] == hook["messages"] and hook["duplicates"] == 0, hook
    assert len(result["targets"]) == 14
    disk_target = next(t for t in result["targets"] if t["target"].startswith("history on disk"))
    assert disk_target["met"] is not None, disk_target  # measured, met or missed
    for r in result["scenarios"]["edge_fanout"]:
        if r["status"] == "ok":
            assert r["burst_deliveries"] == r["burst_expected"] == 50 * r["connected"], r
            assert r["paced_deliveries"] == 10 * r["connected"], r
    scaled = result["scenarios"]["scale"][0]
    assert scaled["delivered_min"] == scaled["delivered_of"] and scaled["join_restarts_max"] >= 1, scaled
    grouped = result["scenarios"]["groups"][0]
    assert grouped["delivered_first_min"] == grouped["delivered_first_max"] == 100, grouped
    assert grouped["delivered_last_min"] == grouped["delivered_last_max"] == 100, grouped
    assert grouped["failover_duplicates"] == 0 and grouped["failover_resumed_s"] < 15, grouped
    assert grouped["join_restarts_other_groups"] == 0, grouped  # a join disturbs only its own group
    for item in ("machine", "versions", "config"):
        assert result[item]
    assert result["machine"]["nproc"] and result["versions"]["libzmq"]

    # Nothing the benchmark started (nodes, servers, ZooKeeper, workers) is left running.
    assert _processes_with(marker) == []
    assert "still running after stop" not in err


def test_ratios_reports_each_ratio_with_its_verdict_and_leaves_no_process():
    """bench/ratios.py, small: every asked ratio is printed with worst and
    median, a target's verdict beside it, and the floor rows (two plain
    proxies) come from the same run; --pin-nodes pins the nodes' threads."""
    marker = f"bench-test-{uuid.uuid4().hex}"
    env = dict(os.environ, MESHNODE_BENCH_TEST_RUN=marker)
    proc = subprocess.run([sys.executable, "-m", "bench.ratios", "--rounds", "1", "--messages", "2000",
                           "--parts", "throughput", "floor", "--pin-nodes"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout.split("ratio (mesh / raw)")[1]
    rows = {line[:30].strip(): line[30:].split() for line in table.splitlines()[1:] if line.strip()}
    assert set(rows) == {"throughput 100 B", "p99 at 5,000/s, two proxies", "16 KiB, two proxies"}
    assert rows["throughput 100 B"][2:4] == [">=", "3.5:"] and rows["throughput 100 B"][4] in ("met", "missed")
    assert all(float(values[0]) > 0 and float(values[1]) > 0 for values in rows.values())
    assert _processes_with(marker) == []
