"""Which subscriptions match a subject: a token trie of patterns (NATS calls it a sublist).

A client carries all its subscriptions on one socket, so each arriving batch
must find the subscriptions whose pattern matches its subject. Walking a trie
of pattern tokens costs a few dictionary lookups per subject token, whatever
the number of patterns; a bounded cache makes repeated subjects one lookup.
"""

_CACHE_LIMIT = 4096  # subjects remembered; cleared whole when full (high-cardinality subjects)


class _Level:
    __slots__ = ("next", "here")

    def __init__(self):
        self.next = {}  # token (or "*" or ">") -> _Level
        self.here = []  # subscriptions whose pattern ends at this level


class Sublist:
    def __init__(self):
        self._root = _Level()
        self._cache = {}
        self.count = 0

    def add(self, pattern, item):
        level = self._root
        for token in pattern.text.split("."):
            level = level.next.setdefault(token, _Level())
        level.here.append(item)
        self.count += 1
        self._cache = {}

    def remove(self, pattern, item):
        """Remove ``item`` (added under ``pattern``); prune levels left empty."""
        path = [self._root]
        for token in pattern.text.split("."):
            level = path[-1].next.get(token)
            if level is None:
                return
            path.append(level)
        try:
            path[-1].here.remove(item)
        except ValueError:
            return
        self.count -= 1
        self._cache = {}
        tokens = pattern.text.split(".")
        for depth in range(len(tokens), 0, -1):
            level = path[depth]
            if level.here or level.next:
                break
            del path[depth - 1].next[tokens[depth - 1]]

    def match(self, subject):
        """The items whose pattern matches ``subject`` (a tuple, maybe empty)."""
        found = self._cache.get(subject)
        if found is not None:
            return found
        tokens = subject.split(".")
        last = len(tokens) - 1
        result = []
        levels = [self._root]
        system = tokens[0][:1] == "$"  # no leading wildcard matches it (mesh/subjects.py)
        for i, token in enumerate(tokens):
            reached = []
            wild = not (system and i == 0)
            for level in levels:
                nxt = level.next
                if not nxt:
                    continue
                tail = nxt.get(">") if wild else None
                if tail is not None:
                    result.extend(tail.here)  # '>' takes this token and all after it
                if token != "*" and token != ">":  # a raw publisher's literal wildcard: no second path
                    exact = nxt.get(token)
                    if exact is not None:
                        reached.append(exact)
                star = nxt.get("*") if wild else None
                if star is not None:
                    reached.append(star)
            if not reached:
                break
            levels = reached
            if i == last:
                for level in levels:
                    result.extend(level.here)
        found = tuple(result)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache = {}
        self._cache[subject] = found
        return found
