"""History at the node that recorded it (nodes/history/recorder.py, the history control
command): what is kept, what is evicted and said so, paging, bad requests."""

import json
import subprocess
import sys
import time

import pytest
from meshhelpers import collect
from meshtest.nodeproc import MESHNODE, linked, wait_until
from skewclock import clock_prefix
from skewclock import unavailable as clocks_unavailable

from mesh import Client, NoResponders


def history(node, pattern, **fields):
    reply = node.request("history", pattern=pattern, **fields)
    assert reply["ok"], reply
    return reply


def published(client, subject, count, start=0):
    assert client.wait_for_interest(subject, history=True)  # the recorder is no reader: ask for it too
    for i in range(start, start + count):
        client.publish(subject, {"i": i})
    client.flush()


def test_a_node_keeps_the_last_messages_of_each_history_subject_and_nothing_else(start_node):
    a = start_node("A", "--history", "h.>=5/60s")
    with Client(a.address) as client:
        published(client, "h.a", 10)
        published(client, "h.b", 3)
        for i in range(4):
            client.publish("other.x", i)  # no history for it, and no subscriber
        wait_until(lambda: a.stats()["history"]["recorded"] == 13, what="the recorder to see 13 messages")
        reply = history(a, "h.>", partial=True)
        got = [(subject, seq, data["i"]) for subject, origin, epoch, seq, ts, data in reply["messages"]]
        assert got == [("h.a", seq, seq - 1) for seq in range(6, 11)] + [("h.b", seq, seq - 1) for seq in (1, 2, 3)]
        assert reply["next"] is None and reply["recording"] is True
        origin, epoch = reply["messages"][0][1], reply["messages"][0][2]
        assert history(a, "other.>")["messages"] == []
        assert history(a, "h.b")["messages"][0][0] == "h.b"
        # All or nothing: messages of h.a since 0 were evicted, so none are sent unless partial.
        whole = history(a, "h.>")
        assert [m[0] for m in whole["messages"]] == ["h.b"] * 3
        assert sorted(whole["streams"]) == sorted([[origin, "h.a", "evicted"], [origin, "h.b", "complete"]])
        assert whole["evicted"] == [[origin, "h.a", epoch, 5]]  # the newest message gone: 1 to 5 are lost
        # After a position: the rest of that stream, or "evicted" if part of the rest is gone.
        after = history(a, "h.a", after=[[origin, "h.a", epoch, 7]])
        assert [m[3] for m in after["messages"]] == [8, 9, 10]
        assert after["streams"] == [[origin, "h.a", "complete"]] and after["evicted"] == []
        gone = history(a, "h.a", after=[[origin, "h.a", epoch, 3]])
        assert gone["messages"] == [] and gone["streams"] == [[origin, "h.a", "evicted"]]
        assert gone["evicted"] == [[origin, "h.a", epoch, 5]]
        # Streams not named are served from a time on.
        assert history(a, "h.>", since=time.time() + 60)["messages"] == []
        # Pages.
        first = history(a, "h.>", limit=3, partial=True)
        second = history(a, "h.>", limit=3, cursor=first["next"], partial=True)
        rest = history(a, "h.>", limit=3, cursor=second["next"], partial=True)
        assert [m[3] for m in first["messages"] + second["messages"] + rest["messages"]] == \
            [6, 7, 8, 9, 10, 1, 2, 3]
        assert rest["next"] is None
        stats = a.stats()["history"]
        assert stats["subjects"] == 2 and stats["evicted"] == 5 and stats["rules"] == ["h.>=5/60s"]


def test_age_and_the_byte_budget_evict(start_node):
    a = start_node("A", "--history", "old.>=1000/1s", "--history", "big.>=1000/600s", "--history-bytes", "20000")
    with Client(a.address) as client:
        published(client, "old.x", 3)
        assert client.wait_for_interest("big.x", history=True)
        client.publish("big.x", "y" * 5000)
        client.flush()
        wait_until(lambda: a.stats()["history"]["recorded"] == 4, what="the recorder")
        time.sleep(1.2)
        assert history(a, "old.>")["messages"] == []  # older than 1 s
        for _ in range(6):  # 30 KB into a 20 KB budget: the oldest go
            client.publish("big.x", "z" * 5000)
        client.flush()
        wait_until(lambda: a.stats()["history"]["recorded"] == 10, what="the recorder")
        kept = history(a, "big.>", partial=True)["messages"]
        assert 2 <= len(kept) <= 3 and kept[-1][3] == 7
        assert a.stats()["history"]["bytes"] <= 20000


@pytest.mark.skipif(clocks_unavailable() is not None, reason=str(clocks_unavailable()))
@pytest.mark.parametrize("offset", [3, -3])
def test_age_counts_on_the_nodes_clock_not_the_publishers(start_node, offset):
    """The node's wall clock is 3 s ahead of (or behind) its publisher's: a
    message stays its AGE from when the node recorded it, whatever its ts."""
    a = start_node("A", "--history", "h.>=1000/2.5s", prefix=clock_prefix(offset))
    with Client(a.address) as client:
        published(client, "h.x", 3)
        wait_until(lambda: a.stats()["history"]["recorded"] == 3, what="the recorder")
        time.sleep(1)
        assert len(history(a, "h.>")["messages"]) == 3  # 1 s of 2.5: kept (3 s ahead counted 4 s)
        time.sleep(2)
        assert history(a, "h.>")["messages"] == []  # 3 s: gone (3 s behind counted 0 s)


def test_a_bad_history_option_is_a_clear_start_up_error():
    import subprocess
    import sys

    from meshtest.nodeproc import MESHNODE

    result = subprocess.run([sys.executable, MESHNODE, "run", "--port", "0", "--history", "chat.>=1000"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "is not PATTERN=COUNT/AGEs" in result.stderr


def test_bad_history_requests_and_options(start_node):
    a = start_node("A", "--history", "h.>=5/60s")
    for fields in ({"pattern": "a..b"}, {"pattern": "h.>", "since": "yesterday"}, {"pattern": "h.>", "after": "x"},
                   {"pattern": "h.>", "after": [["o", "h.a", -1, 2]]}, {"pattern": "h.>", "limit": -1}, {}):
        reply = a.request("history", **fields)
        assert (reply["ok"], reply["error"]) == (False, "bad_request"), (fields, reply)
    plain = start_node("B")
    assert plain.request("history", pattern="h.>")["recording"] is False


def test_pages_stay_right_while_the_node_evicts(start_node):
    a = start_node("A", "--history", "p.>=10/60s")
    with Client(a.address) as client:
        published(client, "p.a", 10)
        published(client, "p.b", 5)
        wait_until(lambda: a.stats()["history"]["recorded"] == 15, what="the recorder")
        first = history(a, "p.>", limit=4, partial=True)
        client.publish("p.a", {"i": 10})  # p.a seq 11: seq 1 is evicted between the pages
        client.flush()
        wait_until(lambda: a.stats()["history"]["recorded"] == 16, what="the recorder")
        pages, cursor = [first], first["next"]
        while cursor is not None:
            pages.append(history(a, "p.>", limit=4, cursor=cursor, partial=True))
            cursor = pages[-1]["next"]
        got = [(m[0], m[3]) for page in pages for m in page["messages"]]
        assert got == [("p.a", s) for s in range(1, 12)] + [("p.b", s) for s in range(1, 6)]  # none skipped
        assert a.request("history", pattern="p.>", cursor=7)["error"] == "bad_request"


def test_the_recorder_is_no_reader_here_or_at_a_peer_yet_records_everything(start_node):
    """Interest means a live reader (PROTOCOL.md 6): the recorder's subscriptions
    end inside a token, so a publisher tells them from a reader's even when a
    reader shares the recorder's prefix, at the recorder's node or at a peer."""
    a = start_node("A", "--history", "h.>=1000/60s", "--history", "one=1000/60s")
    b = start_node("B", peers=[a])
    wait_until(lambda: linked(a, b), what="link")
    with Client(a.address) as pub, Client(a.address) as near, Client(b.address) as far:
        for subject in ("h.x", "one"):
            assert pub.wait_for_interest(subject, history=True)  # the recorder receives
            assert not pub.has_interest(subject)  # but reads for nobody
        with pytest.raises(NoResponders):  # not RequestTimeout after the whole wait
            pub.request("h.x", "anyone?", timeout=5)
        sent = 0
        for reader in (near, far, near):  # a reader beside the recorder: interest comes and goes with it
            sub = reader.subscribe("h.>")
            assert pub.wait_for_interest("h.x") and not pub.has_interest("one")
            for i in range(50):  # the slow-joiner advice holds: every one arrives
                pub.publish("h.x", sent + i)
            pub.flush()
            assert [m.data for m in collect(sub, 50)] == list(range(sent, sent + 50)) and sub.gaps == 0
            sent += 50
            sub.unsubscribe()
            wait_until(lambda: not pub.has_interest("h.x"), what="the interest to go with the reader")
        for i in range(5):  # nobody reads: recorded all the same
            pub.publish("h.x", sent + i)
            pub.publish("one", i)
        pub.flush()
        wait_until(lambda: a.stats()["history"]["recorded"] == sent + 10, what="the recorder to keep all")
    result = subprocess.run([sys.executable, MESHNODE, "pub", "h.y", "1", "--node", a.address, "--wait", "0.3"],
                            capture_output=True, text=True, timeout=30)
    assert json.loads(result.stdout)["subscribers"] is False and "history recorded it" in result.stderr
    wait_until(lambda: a.stats()["history"]["recorded"] == sent + 11, what="the CLI's message recorded")


def test_a_message_whose_data_has_non_string_keys_is_recovered_like_any_other(start_node):
    """msgpack data may be a map with integer keys: the ``history`` reply
    carries it, and a recovery replays it (it used to make the whole reply
    undecodable, reported as a node that did not answer)."""
    from mesh import Position

    a = start_node("A", "--history", "h.>=5/60s")
    with Client(a.address) as client:
        assert client.wait_for_interest("h.x", history=True)
        client.publish("h.x", {1: "one", 2: [3]})
        client.flush()
        wait_until(lambda: a.stats()["history"]["recorded"] == 1, what="the message recorded")
        sub = client.subscribe("h.>", since=Position({}, time.time() - 60))
        assert sub.recovery.recovered, sub.recovery
        assert sub.get(timeout=5).data == {1: "one", 2: [3]}
