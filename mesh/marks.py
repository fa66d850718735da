"""Marks (docs/PROTOCOL.md 4.3): where a publisher's streams end, said again and again.

A mark entry ``[subject, epoch, seq]`` goes out on every subscription prefix
the publisher knows of that covers the subject on a token boundary; the
entries of one prefix share messages (at most ``MARKS_MAX_ENTRIES`` and
about ``MARKS_MAX_BYTES`` each). Marks are repeated every ``MARK_SECONDS``
for as long as the stream is remembered, so a subscriber whose queue was
full when they went by learns the end of the stream from the next round.
:class:`MarkSet` keeps a set of streams' entries grouped that way and updates
them in place, so a round costs one packing per message, not a walk over
every stream; the grouping is redone only when streams are forgotten or the
interest changes.

A closing publisher can no longer repeat its marks: :func:`hand_over` gives
the last entries to its node (control command ``marks``, PROTOCOL.md 7.3),
which repeats them on its behalf (nodes/closedmarks.py).
"""

import time

from .control import ControlError

MARK_SECONDS = 1.0  # between two rounds of marks
MARKS_MAX_ENTRIES = 1024  # entries in one marks message
MARKS_MAX_BYTES = 64 * 1024  # and about this many bytes (less where the node's max_payload is lower)
HAND_OVER_MAX_ENTRIES = 1000  # entries in one ``marks`` control request
HAND_OVER_MAX_BYTES = 48 * 1024  # within the node's 64 KiB request limit
HAND_OVER_SECONDS = 2.0  # the most a close waits for its node to take the marks


def entry_cost(subject):
    """A bound on the bytes ``[subject, epoch, seq]`` takes in msgpack (UTF-8 of the subject, two uint64)."""
    return len(subject) * 4 + 24


def covering_prefixes(topic, interest):
    """The prefixes in ``interest`` that start ``topic`` (a topic frame) on a token boundary."""
    end = 0
    while end >= 0:  # b"", b"a.", b"a.b.", ...: every token prefix of the topic
        prefix = topic[:end]
        if prefix in interest:
            yield prefix
        end = topic.find(b".", end) + 1 or -1


class MarkSet:
    """The mark entries of a set of streams, grouped by covering prefix in chunks."""

    def __init__(self):
        self._entries = {}  # subject -> (topic, [subject, epoch, seq]), the list shared with the chunks
        self._chunks = None  # prefix -> [[bytes, [entry, ...]], ...]; None: to be grouped again
        self._interest = None  # the interest the chunks were grouped for
        self._room = 0

    def __len__(self):
        return len(self._entries)

    def __contains__(self, subject):
        return subject in self._entries

    def set(self, topic, subject, epoch, seq):
        """The stream on ``subject`` ends at (``epoch``, ``seq``)."""
        known = self._entries.get(subject)
        if known is not None:
            known[1][1], known[1][2] = epoch, seq  # in place: every chunk holding it sees it
            return
        entry = [subject, epoch, seq]
        self._entries[subject] = (topic, entry)
        if self._chunks is not None:
            self._place(topic, entry)

    def discard(self, subject):
        if self._entries.pop(subject, None) is not None:
            self._chunks = None

    def entries(self):
        """Every entry, ``[subject, epoch, seq]``."""
        return [entry for _, entry in self._entries.values()]

    def messages(self, interest, room=MARKS_MAX_BYTES):
        """``(prefix, entries)`` for each marks message of a round: ``interest``
        is the set of prefixes subscribed now, ``room`` the bytes a body may take."""
        if self._chunks is None or interest != self._interest or room != self._room:
            self._interest, self._room, self._chunks = set(interest), room, {}
            for topic, entry in self._entries.values():
                self._place(topic, entry)
        for prefix, chunks in self._chunks.items():
            for _, entries in chunks:
                yield prefix, entries

    def _place(self, topic, entry):
        cost = entry_cost(entry[0])
        for prefix in covering_prefixes(topic, self._interest):
            chunks = self._chunks.setdefault(prefix, [])
            last = chunks[-1] if chunks else None
            if last is None or last[0] + cost > self._room or len(last[1]) >= MARKS_MAX_ENTRIES:
                last = [0, []]
                chunks.append(last)
            last[0] += cost
            last[1].append(entry)


def hand_over(control, origin, entries, seconds):
    """Give a closing publisher's last ``entries`` to its node (``control``, a
    ControlChannel), which repeats them for ``seconds``. Returns how many the
    node took; a node that cannot be reached in time, or does not know the
    command, takes none (the marks sent on close are then the last)."""
    deadline = time.monotonic() + HAND_OVER_SECONDS
    taken, chunk, size = 0, [], 0
    try:
        for entry in entries:
            cost = entry_cost(entry[0])
            if chunk and (size + cost > HAND_OVER_MAX_BYTES or len(chunk) >= HAND_OVER_MAX_ENTRIES):
                taken += _hand_over_one(control, origin, chunk, seconds, deadline)
                chunk, size = [], 0
            chunk.append(entry)
            size += cost
        if chunk:
            taken += _hand_over_one(control, origin, chunk, seconds, deadline)
    except (TimeoutError, ControlError):
        pass
    return taken


def _hand_over_one(control, origin, chunk, seconds, deadline):
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("no time left to hand the marks over")
    control.request("marks", timeout=remaining, origin=origin, streams=chunk, seconds=seconds)
    return len(chunk)
