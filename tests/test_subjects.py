import pytest
from hypothesis import given, strategies as st

from mesh.sublist import Sublist
from mesh.subjects import MAX_SUBJECT_BYTES, Pattern, subject_from_topic, topic_frame, validate_subject

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_é", min_size=1, max_size=6)
subjects = st.lists(token, min_size=1, max_size=5).map(".".join)


@pytest.mark.parametrize("pattern,subject,expected", [
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.b", "a.b.c", False),
    ("news", "newsletter", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.b.d", False),
    ("a.*.c", "a.b.x.c", False),
    ("a.*", "a", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("a.>", "a.b", True),
    ("a.>", "a.b.c.d", True),
    ("a.>", "a", False),
    (">", "x", True),
    (">", "x.y.z", True),
    ("*.b.>", "a.b.c", True),
    ("*.b.>", "a.b", False),
    ("*.b.>", "a.c.d", False),
    # System subjects ($...) are matched by name, never by a leading wildcard.
    (">", "$events.node.exit", False),
    ("*.node.exit", "$events.node.exit", False),
    ("*", "$events", False),
    ("$events.>", "$events.node.exit", True),
    ("$events.*.exit", "$events.node.exit", True),
    ("$events.node.exit", "$events.node.exit", True),
    ("a.>", "a.$b", True),  # only the first token makes a subject a system one
])
def test_pattern_matching(pattern, subject, expected):
    assert Pattern(pattern).matches(subject) is expected


@pytest.mark.parametrize("pattern,prefix", [
    ("a.b.c", b"a.b.c."), ("a.*.c", b"a."), ("a.>", b"a."), ("*", b""), (">", b""), ("news", b"news."),
])
def test_zmq_prefix_is_token_aligned(pattern, prefix):
    assert Pattern(pattern).prefix == prefix


@pytest.mark.parametrize("bad,needle", [
    ("", "empty"), ("a..b", "empty token"), (".a", "empty token"), ("a.", "empty token"),
    ("a b", "whitespace"), ("a.>.b", "last token"), ("a.b*", "whole token"), ("a.>x", "whole token"),
    ("x" * (MAX_SUBJECT_BYTES + 1), "longer than"),
])
def test_invalid_patterns_name_the_problem(bad, needle):
    with pytest.raises(ValueError, match=needle):
        Pattern(bad)


@pytest.mark.parametrize("bad,needle", [
    ("a.*", "wildcard"), ("a.>", "wildcard"), ("", "empty"), ("a\x00b", "NUL"), (b"a.b", "must be a str"),
])
def test_invalid_subjects_name_the_problem(bad, needle):
    with pytest.raises(ValueError, match=needle):
        validate_subject(bad)


@given(subjects)
def test_topic_frame_round_trips(subject):
    assert subject_from_topic(topic_frame(subject)) == subject
    assert validate_subject(subject) == topic_frame(subject)


@given(subjects)
def test_literal_full_wildcard_and_star_patterns_match_their_subject(subject):
    tokens = subject.split(".")
    assert Pattern(subject).matches(subject)
    assert Pattern(">").matches(subject)
    assert Pattern(".".join("*" for _ in tokens)).matches(subject)
    if len(tokens) > 1:
        assert Pattern(tokens[0] + ".>").matches(subject)


@given(subjects, subjects)
def test_zmq_prefix_never_filters_out_a_match(pattern_subject, subject):
    """If a pattern matches a subject, its ZeroMQ prefix admits the topic frame."""
    for pattern_text in (pattern_subject, pattern_subject + ".>", "*." + pattern_subject):
        pattern = Pattern(pattern_text)
        if pattern.matches(subject):
            assert topic_frame(subject).startswith(pattern.prefix)


@given(subjects, subjects)
def test_literal_pattern_matches_only_equal_subject(a, b):
    assert Pattern(a).matches(b) == (a == b)


@pytest.mark.parametrize("wide,narrow,expected", [
    (">", "a.b", True), (">", "*", True), (">", ">", True),
    ("a.>", "a.b.c", True), ("a.>", "a.*", True), ("a.>", "a.>", True), ("a.>", "a", False),
    ("a.>", ">", False), ("a.*", "a.b", True), ("a.*", "a.*", True), ("a.*", "a.>", False),
    ("a.*", "a.b.c", False), ("a.b", "a.b", True), ("a.b", "a.*", False), ("*.b", "x.b", True),
    ("*", ">", False),
    (">", "$events.>", False), ("*.>", "$events.x", False), ("$events.>", "$events.node", True),
])
def test_pattern_covers(wide, narrow, expected):
    assert Pattern(wide).covers(Pattern(narrow)) is expected


@given(subjects, subjects)
def test_covers_is_consistent_with_matching(pattern_subject, subject):
    """If A covers B and B matches a subject, A matches it too."""
    for wide_text in (pattern_subject, pattern_subject.split(".")[0] + ".>", "*." + pattern_subject, ">"):
        wide = Pattern(wide_text)
        for narrow in (Pattern(subject), Pattern(subject + ".>")):
            if wide.covers(narrow) and narrow.matches(subject + ".x"):
                assert wide.matches(subject + ".x")
        if wide.covers(Pattern(subject)):
            assert wide.matches(subject)


system_or_not = st.one_of(subjects, subjects.map(lambda s: "$" + s))


@given(system_or_not, st.lists(st.one_of(system_or_not, system_or_not.map(lambda s: s + ".>"),
                                         system_or_not.map(lambda s: "*." + s), st.just(">"), st.just("*")),
                               min_size=1, max_size=6))
def test_the_sublist_matches_exactly_what_the_patterns_match(subject, pattern_texts):
    """mesh/sublist.py (the receive path) and Pattern.matches agree, system subjects included."""
    sublist = Sublist()
    patterns = [Pattern(text) for text in pattern_texts]
    for i, pattern in enumerate(patterns):
        sublist.add(pattern, i)
    assert sorted(sublist.match(subject)) == [i for i, p in enumerate(patterns) if p.matches(subject)]
