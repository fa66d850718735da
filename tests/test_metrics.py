"""Prometheus metrics (nodes/metrics.py), scraped from real nodes and parsed
with prometheus-client's own parser: right types, counts that move, no
subject in any label."""

import os
import re
import urllib.request

from edgehelpers import WS, http_address
from hookhelpers import LOOPBACK
from meshhelpers import collect, warm_up
from meshtest.nodeproc import ROOT, free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

from mesh import Client


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    return families


def value(families, name, **labels):
    family = families[name]
    for sample in family.samples:
        if sample.name in (name, name + "_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    raise KeyError(name)


def test_an_edge_serves_metrics_that_count_what_happened(start_node):
    a = start_node("A")
    e = start_node("E", "--http", "0", "--history", "m.>=100/60s", peers=[a])
    wait_until(lambda: e.peer_names() == ["A"], what="link")
    url = f"http://{http_address(e)}/metrics"
    before = scrape(url)
    ws = WS(f"ws://{http_address(e)}/ws")
    ws.request("sub", subject="m.>")
    with Client(e.address) as here, Client(a.address) as there:
        sub = there.subscribe("m.>")
        warm_up(here, "m.x", [sub])
        for i in range(50):
            here.publish("m.x", i)
        here.flush()
        collect(sub, 50)
    wait_until(lambda: value(scrape(url), "meshnode_history_recorded") >= 50, what="the history to count")
    after = scrape(url)
    assert after["meshnode_batches_published"].type == "counter"
    assert after["meshnode_peers"].type == "gauge" and value(after, "meshnode_peers") == 1
    assert value(after, "meshnode_batches_published") > value(before, "meshnode_batches_published")
    assert value(after, "meshnode_bytes_published") >= value(before, "meshnode_bytes_published") + 50
    assert value(after, "meshnode_edge_messages_out") >= 50
    assert value(after, "meshnode_edge_connections", kind="ws") == 1
    assert value(after, "meshnode_links", state="up") == 1
    assert value(after, "meshnode_events_published") == 0  # nobody listened

    def same_as_stats():  # the scrape reads the node's own counters
        stats, scraped = e.stats(), scrape(url)
        return (value(scraped, "meshnode_batches_published"), value(scraped, "meshnode_edge_messages_out"),
                value(scraped, "meshnode_history_recorded")) == \
            (stats["messages"]["published_here"], stats["edge"]["messages_out"], stats["history"]["recorded"])

    wait_until(same_as_stats, what="the metrics to match the node's stats")
    with Client(e.address) as listener:
        events = listener.subscribe("$events.>")
        assert listener.wait_for_interest("$events.client.connect")

        def connect_once():
            WS(f"ws://{http_address(e)}/ws").close()
            return value(scrape(url), "meshnode_events_published") >= 1

        wait_until(connect_once, what="an event to be published")
        assert events.get(timeout=5).subject.startswith("$events.client.")
    labels = {key for family in after.values() for sample in family.samples for key in sample.labels}
    assert labels <= {"kind", "state"}  # no subject, pattern or connection as a label


def test_metrics_on_a_port_of_their_own(start_node):
    port = free_port()
    a = start_node("A", "--metrics", f"127.0.0.1:{port}")
    assert f"metrics=127.0.0.1:{port}" in a.ready_line
    families = scrape(f"http://127.0.0.1:{port}/metrics")
    assert value(families, "meshnode_control_requests") >= 0 and "meshnode_edge_messages_in" not in families


def counters(families):
    """Every counter sample of a scrape: name -> value."""
    return {s.name: s.value for f in families.values() if f.type == "counter" for s in f.samples
            if s.name.endswith("_total")}


def test_counters_never_go_down_as_subscribers_and_hooks_come_and_go(start_node):
    """A Prometheus counter is a lifetime total: what a subscription or a hook
    counted stays when it goes. Each round an SSE reader sees 9 numbers
    missing and leaves (its route ends); a hook delivers and is removed."""
    from raw_client import Publisher
    from hookhelpers import LOOPBACK, Receiver, ready

    from edgehelpers import SSE

    e = start_node("E", "--http", "0", *LOOPBACK)
    url = f"http://{http_address(e)}/metrics"
    publisher = Publisher(e.address)
    receiver = Receiver()
    scrapes = [counters(scrape(url))]
    try:
        with Client(e.address) as client:
            for round_ in range(1, 4):
                reader = SSE(http_address(e), "/sub/g.%3E")
                assert publisher.wait_for_interest("g.x")
                publisher.publish("g.x", "first")
                assert reader.event()["data"].find('"first"') > 0  # the first of this reader: no stale one
                publisher.seqs["g.x"] += 9  # nine numbers never sent
                publisher.publish("g.x", "after the hole")
                assert reader.event()["data"].find('"after the hole"') > 0
                wait_until(lambda: e.stats()["edge"]["gaps"] == 9 * round_, what="the gaps to be counted")
                client.register_hook("m", receiver.url)
                wait_until(lambda: ready([e], 1), what="the deliverer")
                client.publish("hooks.m.x", round_)
                wait_until(lambda: len(receiver.requests) == round_, what="the delivery")
                wait_until(lambda: e.stats()["hook_totals"]["delivered"] == round_, what="the delivery counted")
                reader.close()
                client.unregister_hook("m", receiver.url)
                wait_until(lambda: e.stats()["edge"]["connections"]["sse"] == 0 and not e.stats().get("hooks"),
                           what="the reader and the hook gone")
                wait_until(lambda: e.stats()["edge"]["patterns"] == 0, what="the route to end")
                scrapes.append(counters(scrape(url)))
                assert scrapes[-1]["meshnode_edge_gaps_total"] == 9 * round_
                assert scrapes[-1]["meshnode_hooks_delivered_total"] == round_
        for before, after in zip(scrapes, scrapes[1:]):
            went_down = {name: (before[name], after.get(name)) for name in before
                         if after.get(name) is None or after[name] < before[name]}
            assert not went_down
    finally:
        publisher.close()
        receiver.close()


def _numbers(stats, path=()):
    """(path, value) of every number in a stats map (booleans and text are not numbers)."""
    for key, item in stats.items():
        if isinstance(item, dict):
            yield from _numbers(item, (*path, key))
        elif isinstance(item, list):
            yield from ((path + (key,), element) for element in item if isinstance(element, dict))
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            yield (*path, key), item


def test_every_stats_number_is_a_metric_or_listed_as_not_one_and_the_docs_list_every_metric(start_node):
    from nodes.metrics import NOT_METRICS, metric_names, metric_paths

    e = start_node("E", "--http", "0", "--history", "m.>=100/60s", *LOOPBACK)
    with Client(e.address) as client:
        client.register_hook("k", "http://127.0.0.1:9/hook")
        client.serve("svc.q", lambda message: None, queue="workers")
        wait_until(lambda: "queues" in e.stats() and "hook_totals" in e.stats(), what="every section")
        stats = e.stats()
    families = scrape(f"http://{http_address(e)}/metrics")
    paths = metric_paths()
    loose = [path for path, _ in _numbers(stats)
             if path not in paths and not any(path[:len(prefix)] == prefix for prefix in NOT_METRICS)]
    assert loose == [], "stats numbers with no metric and not in NOT_METRICS"
    scraped = {sample.name for family in families.values() for sample in family.samples}
    for path, name in paths.items():
        if path[0] in stats and (len(path) < 3 or path[1] in stats[path[0]]):
            assert any(s in scraped for s in ("meshnode_" + name, f"meshnode_{name}_total")), name
    with open(os.path.join(ROOT, "docs", "OPERATIONS.md")) as f:
        documented = set(re.findall(r"^\| `(meshnode_[a-z_]+)(?:\{[a-z]+\})?` \|", f.read(), re.M))
    assert documented == metric_names()
    assert {s for s in scraped if s.startswith("meshnode_")} <= metric_names()
