"""Forgetting idle streams: what is kept in two generations, with no per-use bookkeeping.

A publisher remembers its streams (mesh/publisher.py) and a subscription the
streams it hears from (mesh/subscription.py) only while they are used; both
forget one unused for ``idle`` seconds (at most twice that). :class:`Generations`
keeps the entries in two dicts: ``recent``, used since the last rotation, and
``older``, used only before it. Using an entry costs the caller one lookup in
``recent`` (done inline: it is the per-message path) and, the first time in a
generation, :meth:`revive`; a rotation every ``idle`` seconds drops ``older``.
"""


class Generations:
    __slots__ = ("recent", "older", "idle", "rotate_at")

    def __init__(self, idle, now):
        self.recent = {}  # key -> value, used since the last rotation
        self.older = {}  # used only before it: forgotten at the next
        self.idle = idle
        self.rotate_at = now + idle

    def __len__(self):
        return len(self.recent) + len(self.older)

    def __contains__(self, key):
        return key in self.recent or key in self.older

    def get(self, key):
        """The entry of ``key`` in either generation, or None (values are never falsy)."""
        return self.recent.get(key) or self.older.get(key)

    def revive(self, key):
        """The entry of ``key`` if the older generation has it, moved to the recent one; else None."""
        value = self.older.pop(key, None)
        if value is not None:
            self.recent[key] = value
        return value

    def merged(self):
        """Every entry, in one new dict."""
        return {**self.older, **self.recent}

    def rotate(self, now):
        """Forget what was not used for a whole generation; returns the dicts
        forgotten (both, if this rotation comes a generation late)."""
        forgotten = [self.older]
        if now >= self.rotate_at + self.idle:  # late by a generation: both are idle
            forgotten.append(self.recent)
            self.older = {}
        else:
            self.older = self.recent
        self.recent = {}
        self.rotate_at = now + self.idle
        return forgotten
