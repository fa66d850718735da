"""Forgetting idle streams (mesh/generations.py): an entry lives between one and two
rotations after its last use, and a rotation a generation late forgets everything."""

from mesh.generations import Generations


def test_an_entry_used_in_a_generation_survives_the_next_rotation_only():
    streams = Generations(10.0, now=0.0)
    streams.recent["a"] = [0, 1]
    streams.rotate(10.0)
    assert "a" in streams and streams.get("a") == [0, 1] and len(streams) == 1
    assert streams.recent == {}
    forgotten = streams.rotate(20.0)
    assert "a" not in streams and forgotten == [{"a": [0, 1]}]


def test_revive_moves_an_older_entry_back_to_the_recent_generation():
    streams = Generations(10.0, now=0.0)
    streams.recent["a"] = [0, 1]
    streams.rotate(10.0)
    assert streams.revive("a") == [0, 1] and streams.recent == {"a": [0, 1]} and streams.older == {}
    assert streams.revive("missing") is None
    streams.rotate(20.0)
    assert streams.get("a") == [0, 1]  # used in the last generation: still there


def test_a_rotation_a_generation_late_forgets_both():
    streams = Generations(10.0, now=0.0)
    streams.recent["a"] = [0, 1]
    forgotten = streams.rotate(25.0)  # due at 10, nothing happened for more than a generation
    assert len(streams) == 0 and {"a": [0, 1]} in forgotten
    assert streams.rotate_at == 35.0


def test_merged_prefers_the_recent_entry():
    streams = Generations(10.0, now=0.0)
    streams.older["a"] = [0, 1]
    streams.recent["a"] = [0, 5]
    streams.recent["b"] = [1, 1]
    assert streams.merged() == {"a": [0, 5], "b": [1, 1]}
