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


def test_older_history_goes_first_once_and_pages_neither_skip_nor_repeat(context):
    recorder = make(context)
    recorder.record("d.x", body("h", 1, 11, NOW, range(11, 21)), at="H")  # the copy tap: 11..20
    recorder.record("d.x", body("me", 1, 1, NOW, range(1, 4)))  # published here
    added = recorder.insert_older("H", rows("h", range(1, 16)), [])  # the holder kept 1..15: 11..15 are held
    assert added == 10
    everything = [("h", seq) for seq in range(1, 21)] + [("me", 1), ("me", 2), ("me", 3)]
    for limit in (1, 3, 7, 1000):
        assert read_all(recorder, limit) == everything, limit
    assert read_all(recorder, 4, own=True) == [("me", 1), ("me", 2), ("me", 3)]
    assert recorder.counters()["copies"] == 20
    assert recorder.insert_older("H", rows("h", range(1, 11)), []) == 0  # a second pass adds nothing
    close(recorder)


def test_the_count_rule_evicts_the_older_copies_first_and_says_so(context):
    recorder = make(context, count=12)
    recorder.record("d.x", body("h", 1, 11, NOW, range(11, 21)), at="H")
    recorder.insert_older("H", rows("h", range(3, 11)), [["h", "d.x", 1, 2]])  # the holder had evicted 1..2
    assert read_all(recorder, 1000) == [("h", seq) for seq in range(9, 21)]
    _, _, streams = recorder.page(Pattern("d.>"), after=[["h", "d.x", 1, 4]])
    assert streams == {("h", "d.x"): "evicted"}
    assert recorder.newest_evicted(streams) == [["h", "d.x", 1, 8]]
    assert recorder.counters()["copies"] == 12
    close(recorder)


def test_copies_and_older_history_are_read_back_from_disk_with_their_holder(context, tmp_path):
    recorder = make(context, store=HistoryStore(str(tmp_path)))
    recorder.record("d.x", body("h", 1, 11, NOW, range(11, 21)), at="H")
    recorder.record("d.x", body("me", 1, 1, NOW, range(1, 4)))
    recorder.insert_older("H", rows("h", range(1, 6)) + rows("h", range(6, 11), ts=NOW + 1), [["h", "d.x", 0, 9]])
    before = read_all(recorder, 1000)
    close(recorder)

    again = make(context, store=HistoryStore(str(tmp_path)))
    assert read_all(again, 5) == before
    assert read_all(again, 5, own=True) == [("me", 1), ("me", 2), ("me", 3)]
    assert again.counters()["copies"] == 20
    _, _, streams = again.page(Pattern("d.>"), after=[["h", "d.x", 0, 5]])
    assert streams[("h", "d.x")] == "evicted"  # the holder's eviction was kept too
    assert again.insert_older("G", rows("g", range(1, 3)), []) == 2  # numbered below those read back
    assert read_all(again, 1000)[:3] == [("g", 1), ("g", 2), ("h", 1)]
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
