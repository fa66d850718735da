"""Recovering what a subscription missed from the history the mesh keeps (docs/HISTORY.md).

A :class:`Position` is how far a reader got: per stream (origin, subject) the
(epoch, seq) of the last message it handed out, and the time it was taken.
``Client.subscribe(pattern, since=position)`` subscribes live first, holding
live messages back; asks every node of the mesh (its own and its peers: each
records what was published at it) at once for the messages after the
position, page by page, each page within ``history_timeout``; checks every
stream for continuity; then queues the replayed messages, then the held live
ones that were not replayed, and goes live.

All or nothing per stream: a stream is replayed whole (from the message after
its position up to where live delivery takes over) or not at all, and the
:class:`Recovery` names it with the reason. Streams the position does not
name (new publishers, or ones forgotten while idle) are replayed from the
position's time minus SKEW_SECONDS, to allow for clocks that differ between
hosts.

A stream may be kept by several nodes (``--history-replicas``), each copy
whole or with its oldest messages evicted. The copies are merged by (epoch,
seq): a stream is complete when their union is (:func:`_complete`), whatever
one node evicted.
"""

import json
import threading
import time

from .envelope import Message
from .everynode import at_every_node

SKEW_SECONDS = 5.0
DEFAULT_MAX_REPLAY = 100_000
HISTORY_TIMEOUT = 1.0  # seconds a node has to answer each page; one that does not is unreachable
MAX_NAMED_STREAMS = 1000  # the history command's bound


class Position:
    """``streams``: {(origin, subject): (epoch, seq)}; ``time``: Unix seconds."""

    def __init__(self, streams, time):
        self.streams = dict(streams)
        self.time = time

    def to_json(self):
        return json.dumps({"t": self.time, "s": [[o, s, e, q] for (o, s), (e, q) in sorted(self.streams.items())]},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text):
        """A Position from ``to_json()``'s text; ValueError naming what is wrong."""
        try:
            value = json.loads(text)
            when, entries = value["t"], value["s"]
        except (ValueError, TypeError, KeyError):
            raise ValueError("a position is JSON {\"t\": TIME, \"s\": [[origin, subject, epoch, seq], ...]}") \
                from None
        if isinstance(when, bool) or not isinstance(when, (int, float)) or not isinstance(entries, list):
            raise ValueError("a position's t is a time and its s a list")
        streams = {}
        for entry in entries:
            if (not isinstance(entry, list) or len(entry) != 4 or not all(isinstance(x, str) for x in entry[:2])
                    or not all(type(x) is int and x >= 0 for x in entry[2:])):
                raise ValueError("each stream of a position is [origin, subject, epoch >= 0, seq >= 0]")
            streams[(entry[0], entry[1])] = (entry[2], entry[3])
        return cls(streams, float(when))

    def __repr__(self):
        return f"Position({len(self.streams)} streams, time={self.time})"


class Recovery:
    """What a recovery did. ``recovered``: every stream complete and every
    node answered. ``streams``: {(origin, subject): state} for every stream
    replayed, named by the position, or reported by a node: "complete",
    "evicted" (a message it needed is gone from history), "unknown" (every
    node answered and none has it: its node stopped, or the subject has no
    history), "unreachable" (named by the position, and no node that answered
    has it: it may be on one that did not), "gap" (history and live delivery
    did not meet), "too_many" (over ``max_replay``). ``unreachable``: the
    nodes that did not answer, each with why. ``replayed``: messages queued.
    ``lost``: messages of the position's streams known to be missing when
    the recovery ended (counted in the subscription's ``gaps``; what is
    missing before the next live message of such a stream is counted when
    it comes)."""

    def __init__(self):
        self.streams = {}
        self.unreachable = []
        self.replayed = 0
        self.problems = []
        self.lost = 0
        self.evicted_at = {}  # (origin, subject) -> {(epoch, seq)}: the newest message each node evicted

    @property
    def evicted_to(self):
        """{(origin, subject): (epoch, seq)}: the newest message any node evicted."""
        newest = {}
        for key, points in self.evicted_at.items():
            numbered = [at for at in points if at is not None]
            if numbered:
                newest[key] = max(numbered)
        return newest

    @property
    def recovered(self):
        return not self.unreachable and not self.problems and all(
            state == "complete" for state in self.streams.values())

    def __repr__(self):
        bad = {key: state for key, state in self.streams.items() if state != "complete"}
        return f"Recovery(recovered={self.recovered}, replayed={self.replayed}, not complete={bad}, " \
               f"unreachable={self.unreachable}, problems={self.problems})"


def recover(client, subscription, position, max_replay=DEFAULT_MAX_REPLAY, history_timeout=HISTORY_TIMEOUT):
    """Fill ``subscription`` (holding its live messages) from every node's
    history after ``position``; returns the Recovery (also set on the
    subscription). Runs in the subscribing thread."""
    recovery, replayed, delivered_to = fetch(client, subscription.pattern, position, max_replay,
                                             subscription.held, history_timeout)
    subscription.recovery = recovery

    def keep_live(message):
        last = delivered_to.get((message.origin, message.subject))
        return last is None or (message.epoch, message.seq) > last

    named = {key: at for key, at in position.streams.items() if subscription.pattern.matches(key[1])}
    lost_to = {key: at for key, at in recovery.evicted_to.items() if key in named}
    recovery.lost = subscription.end_hold(replayed, keep_live, named, lost_to)
    return recovery


def fetch(client, pattern, position, max_replay, held, history_timeout=HISTORY_TIMEOUT):
    """What ``pattern``'s subscribers missed after ``position``, from the
    history of ``client``'s node and every other node (asked at once, each
    page within ``history_timeout`` seconds): ``(Recovery, messages to
    replay, {stream: (epoch, seq) the replay reaches})``. ``held()`` gives the
    live messages received meanwhile (each with origin, subject, epoch, seq):
    the replay must meet them. A stream whose replay does not is asked for
    again once (a message published elsewhere while the subscription was on
    its way there), then reported as a ``gap``."""
    recovery = Recovery()
    named = {key: value for key, value in position.streams.items() if pattern.matches(key[1])}
    if len(named) > MAX_NAMED_STREAMS:
        recovery.problems.append(f"the position names {len(named)} streams; at most {MAX_NAMED_STREAMS}")
        return recovery, [], {}
    found, states = {}, {}  # key -> {(epoch, seq): Message}; key -> state from the nodes
    after = [[origin, subject, epoch, seq] for (origin, subject), (epoch, seq) in named.items()]
    asks = [(after, position.time - SKEW_SECONDS)]
    for attempt in range(2):
        for asked_after, since in asks:
            try:
                _collect(client, pattern.text, asked_after, since, found, states, recovery, max_replay,
                         history_timeout)
            except _TooMany:
                recovery.problems.append(f"more than {max_replay} messages to replay (max_replay)")
                recovery.streams = {key: "too_many" for key in set(found) | set(named)}
                return recovery, [], {}
        replayed, delivered_to = _check_streams(pattern, named, found, states, held(), recovery)
        gaps = [key for key, state in recovery.streams.items() if state == "gap"]
        if not gaps or attempt:
            break
        # Only the named and gap streams: a time nothing was published at.
        asks = [([[o, s, *max([named.get((o, s), (0, 0)), *found.get((o, s), {})])] for o, s in gaps],
                 time.time() + 3600)]
    recovery.replayed = len(replayed)
    return recovery, replayed, delivered_to


def _collect(client, pattern, after, since, found, states, recovery, max_replay, history_timeout):
    fetched = set()  # the messages fetched by this pass, each once however many nodes hold a copy
    lock = threading.Lock()

    def read(channel):
        pages = []
        for reply in _pages(channel, pattern, after, since, history_timeout):
            pages.append(reply)
            with lock:
                fetched.update((origin, subject, epoch, seq) for subject, origin, epoch, seq, *_ in reply["messages"])
                if len(fetched) > max_replay:
                    raise _TooMany()
        return pages

    answers, missing = at_every_node(client, read, history_timeout)
    for name, why in sorted(missing.items()):
        if not any(entry.startswith(f"{name}: ") for entry in recovery.unreachable):
            recovery.unreachable.append(f"{name}: {why}")  # a node that failed a first pass stays unreachable
    for name, pages in sorted(answers.items()):
        for reply in pages:
            _merge(reply, found, states, recovery)
    if sum(len(m) for m in found.values()) > max_replay:
        raise _TooMany()


def _merge(reply, found, states, recovery):
    """Add one ``history`` page (from any node) to ``found`` ({stream: {(epoch,
    seq): Message}}: a message held by several nodes is kept once), ``states``
    ({stream: the worst state a node told}) and ``recovery.evicted_at``."""
    numbered = set()
    for origin, subject, epoch, seq in reply.get("evicted", ()):
        key = (origin, subject)
        numbered.add(key)
        recovery.evicted_at.setdefault(key, set()).add((epoch, seq))
    for origin, subject, state in reply["streams"]:
        key = (origin, subject)
        if states.get(key) != "evicted":
            states[key] = state
        if state == "evicted" and key not in numbered:  # a node that does not say up to where
            recovery.evicted_at.setdefault(key, set()).add(None)
    for subject, origin, epoch, seq, ts, data in reply["messages"]:
        found.setdefault((origin, subject), {})[(epoch, seq)] = Message(
            subject, data, origin, seq, ts, epoch, replayed=True)


class _TooMany(Exception):
    pass


def _pages(channel, pattern, after, since, timeout):
    cursor = None
    while True:
        reply = channel.request("history", timeout=timeout, pattern=pattern, after=after, since=since,
                                partial=True, **({} if cursor is None else {"cursor": cursor}))
        yield reply
        cursor = reply["next"]
        if cursor is None:
            return


def _check_streams(pattern, named, found, states, held, recovery):
    """The messages to replay, oldest first per stream, and per stream the
    (epoch, seq) up to which they reach; every stream's state in ``recovery``."""
    live = {}
    for message in held:
        live.setdefault((message.origin, message.subject), []).append((message.epoch, message.seq))
    replayed, delivered_to = [], {}
    recovery.streams = {}
    for key in set(named) | set(found) | set(states):  # a stream only reported (evicted whole) too
        if not pattern.matches(key[1]):
            continue
        state = states.get(key)
        if key in named and state is None:
            state = "unreachable" if recovery.unreachable else "unknown"
        messages = [found[key][position] for position in sorted(found.get(key, {}))]
        if state not in ("unknown", "unreachable"):
            if _complete(named.get(key), messages, live.get(key), recovery.evicted_at.get(key, ())):
                state = "complete"
            elif state != "evicted":
                state = "gap"
        recovery.streams[key] = state
        if state == "complete" and messages:
            replayed.extend(messages)
            delivered_to[key] = (messages[-1].epoch, messages[-1].seq)
    return replayed, delivered_to


def _complete(start, messages, live, evicted_at):
    """True if the union of the copies, ``messages``, is the whole stream:
    continuous from ``start`` (the position's, or None) to the first ``live``
    message, and holding the newest message each node that evicted some
    evicted (``evicted_at``; None for a node that did not say which): what
    one copy lost, another kept."""
    positions = {(m.epoch, m.seq) for m in messages}
    return _continuous(start, messages, live) and all(at in positions for at in evicted_at)


def _continuous(start, messages, live):
    """True if ``messages`` follow ``start`` (epoch, seq) without a hole (a
    new epoch must begin at seq 1) and reach the first live message, if any."""
    positions = [(m.epoch, m.seq) for m in messages]
    previous = start
    for position in positions:
        if previous is not None and not _next(previous, position):
            return False
        previous = position
    if live:
        first = min(live)
        if previous is not None and first > previous and not _next(previous, first):
            return False
    return True


def _next(previous, position):
    epoch, seq = position
    return (epoch == previous[0] and seq == previous[1] + 1) or (epoch > previous[0] and seq == 1)


def position_after_time(seconds_ago=0.0):
    """A Position naming no stream: recover everything from ``seconds_ago`` seconds back."""
    return Position({}, time.time() - seconds_ago)
