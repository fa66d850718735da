"""A replica's copies in the recorder (nodes/history/recorder.py, copies.py,
store.py): what a holder kept before the replica followed it goes before
what the copy tap brought, once each; pages never skip or repeat across
them; ``own`` leaves every copy out; all of it, with the holder each copy
came from, is read back from disk after a restart."""

import sqlite3
import time

import msgpack
import pytest
import zmq

from mesh.envelope import BatchEncoder
from mesh.subjects import Pattern
from nodes.history.recorder import HistoryRule, Recorder
from nodes.history.store import HistoryStore


@pytest.fixture
def context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def body(origin, epoch, seq, ts, values):
    return BatchEncoder(origin).batch(epoch, seq, ts, [None, *(msgpack.packb(v) for v in values)])


def make(context, count=100, store=None):
    return Recorder(context, "inproc://nowhere", [HistoryRule(f"d.>={count}/3600s")], store=store)


NOW = time.time()  # a message older than the rules' hour would be evicted at once


def rows(origin, seqs, ts=NOW):
    """History page rows [subject, origin, epoch, seq, ts, packed data] of d.x, data = seq."""
    return [["d.x", origin, 1, seq, ts, msgpack.packb(seq)] for seq in seqs]


def read_all(recorder, limit, own=False):
    """Every (origin, seq) of d.x held (evicted streams too: ``partial``), page by page of ``limit``."""
    got, cursor = [], None
    while True:
        messages, cursor, _ = recorder.page(Pattern("d.>"), cursor=cursor, limit=limit, partial=True, own=own)
        got.extend((entry.origin, entry.seq) for entry in messages)
        if cursor is None:
            return got


def close(recorder):
    recorder.stop()  # the store writes what is queued, then closes


def test_the_catch_up_then_what_the_tap_queued_each_once_in_order_and_pages_neither_skip_nor_repeat(context):
    recorder = make(context)
    recorder.record("d.x", body("me", 1, 1, NOW, range(1, 4)))  # published here
    assert recorder.record_copies("H", rows("h", range(1, 13))) == 12  # what the holder kept
    caught_to = {("h", "d.x"): (1, 12)}
    recorder.record("d.x", body("h", 1, 10, NOW, range(10, 16)), at="H", held_to=caught_to)  # straddles it
    recorder.record("d.x", body("h", 1, 5, NOW, range(5, 9)), at="H", held_to=caught_to)  # caught up already
    recorder.record("d.x", body("h", 1, 16, NOW, range(16, 21)), at="H", held_to=caught_to)
    everything = [("me", 1), ("me", 2), ("me", 3)] + [("h", seq) for seq in range(1, 21)]
    for limit in (1, 3, 7, 1000):
        assert read_all(recorder, limit) == everything, limit
    assert read_all(recorder, 4, own=True) == [("me", 1), ("me", 2), ("me", 3)]
    assert recorder.counters()["copies"] == 20
    assert recorder.record_copies("H", rows("h", range(1, 21))) == 0  # read again: nothing new
    close(recorder)


def test_the_count_rule_evicts_the_oldest_copies_first_and_says_so(context):
    recorder = make(context, count=12)
    recorder.record_copies("H", rows("h", range(3, 11)))
    recorder.copy_evictions("H", [["h", "d.x", 1, 2]])  # the holder had evicted 1..2
    recorder.record("d.x", body("h", 1, 11, NOW, range(11, 21)), at="H")
    assert read_all(recorder, 1000) == [("h", seq) for seq in range(9, 21)]
    _, _, streams = recorder.page(Pattern("d.>"), after=[["h", "d.x", 1, 4]])
    assert streams == {("h", "d.x"): "evicted"}
    assert recorder.newest_evicted(streams) == [["h", "d.x", 1, 8]]
    assert recorder.counters()["copies"] == 12
    assert recorder.record_copies("H", rows("h", range(3, 9))) == 0  # evicted here: not copied again
    close(recorder)


def test_a_holders_evictions_of_copies_are_neither_told_with_own_nor_taken_for_a_stream_held_here(context):
    holder = make(context, count=3)
    holder.record("d.x", body("g", 1, 1, NOW, range(1, 6)), at="G")  # a copy it keeps of G's: 1..2 evicted
    holder.record("d.y", body("me", 1, 1, NOW, range(1, 5)))  # its own: 1 evicted
    messages, _, streams = holder.page(Pattern("d.>"), own=True, partial=True)
    assert [(m.origin, m.seq) for m in messages] == [("me", 2), ("me", 3), ("me", 4)]
    assert streams == {("me", "d.y"): "evicted"} and holder.newest_evicted(streams) == [["me", "d.y", 1, 1]]
    _, _, streams = holder.page(Pattern("d.>"), partial=True)
    assert streams[("g", "d.x")] == "evicted"  # without own: this node's whole copy
    close(holder)

    replica = make(context)
    replica.record("d.x", body("r", 1, 1, NOW, range(1, 9)))  # its own stream
    replica.copy_evictions("H", [["r", "d.x", 1, 4], ["z", "d.x", 1, 7]])  # a holder's word on it: not taken
    _, _, streams = replica.page(Pattern("d.>"), after=[["r", "d.x", 1, 0]])
    assert streams == {("r", "d.x"): "complete", ("z", "d.x"): "evicted"}
    assert read_all(replica, 1000) == [("r", seq) for seq in range(1, 9)]
    close(replica)


def test_a_copy_does_not_keep_older_messages_past_their_age(context):
    recorder = Recorder(context, "inproc://nowhere", [HistoryRule("d.>=100/1s")])
    recorder.record("d.a", body("me", 1, 1, time.time(), [1]))
    time.sleep(1.2)
    recorder.record_copies("H", [["d.b", "h", 1, 1, time.time(), msgpack.packb(1)]])
    assert [(m.subject, m.seq) for m in recorder.page(Pattern("d.>"), partial=True)[0]] == [("d.b", 1)]
    close(recorder)


def test_copies_and_evictions_are_read_back_from_disk_with_their_holder(context, tmp_path):
    recorder = make(context, store=HistoryStore(str(tmp_path)))
    recorder.record("d.x", body("me", 1, 1, NOW, range(1, 4)))
    recorder.record_copies("H", rows("h", range(1, 6)) + rows("h", range(6, 11), ts=NOW + 1))
    recorder.copy_evictions("H", [["h", "d.x", 0, 9]])
    recorder.record("d.x", body("h", 1, 9, NOW, range(9, 21)), at="H", held_to={("h", "d.x"): (1, 10)})
    before = read_all(recorder, 1000)
    assert before == [("me", 1), ("me", 2), ("me", 3)] + [("h", seq) for seq in range(1, 21)]
    close(recorder)

    again = make(context, store=HistoryStore(str(tmp_path)))
    assert read_all(again, 5) == before
    assert read_all(again, 5, own=True) == [("me", 1), ("me", 2), ("me", 3)]
    assert again.counters()["copies"] == 20
    _, _, streams = again.page(Pattern("d.>"), after=[["h", "d.x", 0, 5]])
    assert streams[("h", "d.x")] == "evicted"  # the holder's eviction was kept too
    close(again)


def test_a_history_file_written_before_copies_were_marked_is_read_as_this_nodes_own(context, tmp_path):
    path = tmp_path / "history.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE batches (n INTEGER PRIMARY KEY, subject TEXT NOT NULL, count INTEGER NOT NULL,
            live INTEGER NOT NULL, body BLOB NOT NULL);
        CREATE TABLE evicted (origin TEXT NOT NULL, subject TEXT NOT NULL, epoch INTEGER NOT NULL,
            seq INTEGER NOT NULL, ts REAL NOT NULL, PRIMARY KEY (origin, subject));""")
    db.execute("INSERT INTO batches VALUES (0, 'd.x', 3, 0, ?)", (body("me", 1, 1, NOW, [1, 2, 3]),))
    db.commit()
    db.close()
    recorder = make(context, store=HistoryStore(str(tmp_path)))
    assert read_all(recorder, 1000, own=True) == [("me", 1), ("me", 2), ("me", 3)]
    close(recorder)


def test_a_holders_eviction_of_what_a_copy_still_holds_marks_only_what_is_before_it(context, tmp_path):
    recorder = make(context, store=HistoryStore(str(tmp_path)))
    recorder.record_copies("H", rows("h", range(10, 21)))  # a copy from an earlier catch-up: 10..20
    recorder.copy_evictions("H", [["h", "d.x", 1, 15]])  # the holder has evicted up to 15 since
    _, _, streams = recorder.page(Pattern("d.>"), after=[["h", "d.x", 1, 9]])
    assert streams == {("h", "d.x"): "complete"}  # 10..20 are all here
    assert recorder.newest_evicted({("h", "d.x"): "evicted"}) == [["h", "d.x", 1, 9]]
    close(recorder)
    again = make(context, store=HistoryStore(str(tmp_path)))
    assert read_all(again, 1000) == [("h", seq) for seq in range(10, 21)]  # none dropped at the restart
    close(again)
