"""The ``history`` control command (docs/PROTOCOL.md 7.3): a request checked,
then answered with a page of what this node's recorder holds.

A node without ``--history`` rules has no recorder and answers every request
with an empty page and ``recording: false``. With ``--history-replicas R``
(2 or more) the recorder also keeps copies of the holders this node is a
replica of (nodes/history/copies.py), so a page holds their messages too,
unless the request asks for ``own``.
"""

import msgpack

from mesh.subjects import Pattern

from nodes.control import Feature, RequestError, bounded_int, flag
from .copies import Copies
from .recorder import MAX_ASKED_STREAMS, MAX_PAGE_MESSAGES, Recorder


class History(Feature):
    def __init__(self, rules, name, replicas=1, channel=None):
        """``name``: this node's; ``replicas``: --history-replicas (1: it keeps only its own history);
        ``channel(record)``: the node's control channel to a member (nodes/relay.py), for catching up."""
        self.rules = rules
        self.name = name
        self.replicas = replicas
        self.channel = channel
        self.recorder = None
        self.copies = None  # a copies.Copies with replicas of 2 or more

    def start(self, context, out_endpoint, budget, curve=None, store=None):
        """Record from now on, if there are rules (once the node's data plane is up);
        ``store``: a HistoryStore (nodes/history/store.py) keeping it on disk, or None."""
        if self.rules:
            self.recorder = Recorder(context, out_endpoint, self.rules, budget, curve, store)
            if self.replicas > 1:
                self.copies = Copies(self.name, self.replicas, self.recorder,
                                     (context, curve, self.recorder.prefixes), self.channel)
            self.recorder.start()

    def members_changed(self, members):
        """The node's mesh (or group) is now ``members`` (name -> member record, this node not among
        them): record what is published at each holder whose replicas include this node."""
        if self.copies is not None:
            self.copies.update(members)

    def stop(self):
        if self.copies is not None:
            self.copies.stop()
        if self.recorder is not None:
            self.recorder.stop()

    def commands(self):
        return {"history": self.cmd_history}

    def stats(self):
        if self.recorder is None:
            return {}
        counters = self.recorder.counters()
        if self.copies is not None:
            counters.update(following=self.copies.holders, caught_up=dict(self.copies.caught_up),
                            malformed=counters["malformed"] + self.copies.malformed)
        return {"history": counters}

    def cmd_history(self, request):
        """A page of what this node recorded on a pattern."""
        if self.recorder is None:
            return {"messages": [], "next": None, "streams": [], "recording": False}
        partial, own = flag(request, "partial", False), flag(request, "own", False)
        try:
            pattern, since, after, cursor, limit = _page_request(request)
        except (ValueError, TypeError) as exc:
            raise RequestError("bad_request", str(exc)) from None
        messages, next_cursor, streams = self.recorder.page(pattern, since, after, cursor, limit, partial, own)
        return {"messages": [[e.subject, e.origin, e.epoch, e.seq, e.ts,
                              msgpack.unpackb(e.packed, raw=False, strict_map_key=False)] for e in messages],
                "next": next_cursor, "recording": True,
                "streams": [[origin, subject, state] for (origin, subject), state in streams.items()],
                "evicted": self.recorder.newest_evicted(streams)}


def _page_request(request):
    """(pattern, since, after, cursor, limit) of a ``history`` request; ValueError naming what is wrong."""
    pattern = Pattern(request.get("pattern"))
    since = request.get("since", 0.0)
    if isinstance(since, bool) or not isinstance(since, (int, float)) or since < 0:
        raise ValueError("since must be a number, 0 or more")
    cursor = request.get("cursor")
    if cursor is not None and (not isinstance(cursor, list) or len(cursor) != 2
                               or not isinstance(cursor[0], str) or type(cursor[1]) is not int):
        raise ValueError("cursor is the next of the previous page: [subject, number]")
    limit = bounded_int(request.get("limit"), "limit", 1, MAX_PAGE_MESSAGES, MAX_PAGE_MESSAGES)
    after = request.get("after", [])
    if not isinstance(after, list) or len(after) > MAX_ASKED_STREAMS:
        raise ValueError(f"after is a list of at most {MAX_ASKED_STREAMS} [origin, subject, epoch, seq]")
    for item in after:
        if (not isinstance(item, list) or len(item) != 4 or not all(isinstance(x, str) for x in item[:2])
                or not all(type(x) is int and x >= 0 for x in item[2:])):
            raise ValueError("each after entry is [origin, subject, epoch, seq]")
    return pattern, since, after, cursor, limit
