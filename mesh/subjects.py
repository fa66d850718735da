"""Subjects and patterns: validation, matching, and the ZeroMQ prefix a pattern needs.

A subject is dot-separated tokens (``orders.eu.new``). A pattern may use ``*``
(exactly one token) and ``>`` (one or more tokens, last token only), as in NATS.

ZeroMQ filters by byte prefix of the first frame. The topic frame on the wire is
the subject followed by one ``.`` so that a filter always ends on a token
boundary: ``news.`` never admits ``newsletter.``. The subscriber still does the
exact match with :class:`Pattern` (``orders.*.new`` filters on ``orders.``).

**System subjects** begin with ``$`` (``$events.``, ``$dead.``, ``$Q.``). As
in MQTT, a pattern whose first token is a wildcard does not match them: ``>``
is every application subject, and the mesh's own traffic is subscribed to by
name (``$events.>``).
"""

MAX_SUBJECT_BYTES = 512
_FORBIDDEN = frozenset(" \t\r\n\x00")


def _tokens(text, what):
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a str, got {type(text).__name__}")
    if not text:
        raise ValueError(f"{what} is empty")
    if len(text.encode("utf-8")) > MAX_SUBJECT_BYTES:
        raise ValueError(f"{what} {text[:40]!r}... is longer than {MAX_SUBJECT_BYTES} bytes")
    bad = _FORBIDDEN.intersection(text)
    if bad:
        raise ValueError(f"{what} {text!r} contains whitespace or NUL ({sorted(bad)!r})")
    tokens = text.split(".")
    if "" in tokens:
        raise ValueError(f"{what} {text!r} has an empty token (leading, trailing or double '.')")
    return tokens


def validate_subject(subject):
    """Check a concrete subject (no wildcards); return its topic frame bytes."""
    for token in _tokens(subject, "subject"):
        if "*" in token or ">" in token:
            raise ValueError(f"subject {subject!r} contains a wildcard; publish to a concrete subject")
    return topic_frame(subject)


def topic_frame(subject):
    """The first wire frame for a subject: its UTF-8 bytes and a trailing '.'."""
    return subject.encode("utf-8") + b"."


def is_reader_prefix(prefix):
    """True for a prefix a pattern can have (docs/PROTOCOL.md 3.3): empty, or
    ending on a token boundary. Only these are interest; a node's history
    recorder subscribes with prefixes that end inside a token (PROTOCOL.md 6)."""
    return not prefix or prefix.endswith(b".")


def subject_from_topic(frame):
    """Inverse of :func:`topic_frame`; raises ValueError for a frame that is not one."""
    if not frame.endswith(b"."):
        raise ValueError("topic frame does not end with '.'")
    return frame[:-1].decode("utf-8")


class Pattern:
    """A validated subscription pattern that matches subjects exactly."""

    __slots__ = ("text", "_head", "_open_tail", "_literal", "_wild_first", "prefix")

    def __init__(self, text):
        tokens = _tokens(text, "pattern")
        for i, token in enumerate(tokens):
            if token == ">":
                if i != len(tokens) - 1:
                    raise ValueError(f"pattern {text!r}: '>' may only be the last token")
            elif token != "*" and ("*" in token or ">" in token):
                raise ValueError(f"pattern {text!r}: wildcard {token!r} must be a whole token")
        self.text = text
        self._open_tail = tokens[-1] == ">"
        self._head = tokens[:-1] if self._open_tail else tokens
        self._literal = "*" not in tokens and ">" not in tokens
        self._wild_first = tokens[0] in ("*", ">")  # matches no system subject
        self.prefix = self._zmq_prefix(tokens)

    @staticmethod
    def _zmq_prefix(tokens):
        literal = []
        for token in tokens:
            if token in ("*", ">"):
                break
            literal.append(token)
        return "".join(t + "." for t in literal).encode("utf-8")

    def matches(self, subject):
        if self._literal:
            return subject == self.text
        if self._wild_first and subject[:1] == "$":
            return False
        got = subject.split(".")
        head = self._head
        if self._open_tail:
            if len(got) <= len(head):
                return False
        elif len(got) != len(head):
            return False
        for w, g in zip(head, got):
            if w != "*" and w != g:
                return False
        return True

    def covers(self, other):
        """True if every subject ``other`` matches is matched by this pattern too."""
        mine = self.text.split(".")
        theirs = other.text.split(".")
        if self._wild_first and theirs[0][:1] == "$":
            return False  # system subjects are named, not matched by a leading wildcard
        for i, token in enumerate(mine):
            if token == ">":
                return len(theirs) > i
            if i >= len(theirs) or theirs[i] == ">":
                return False
            if token != "*" and token != theirs[i]:
                return False
        return len(mine) == len(theirs)

    def __repr__(self):
        return f"Pattern({self.text!r})"
