"""Helpers for tests that publish and subscribe through real nodes."""

import time

WARM_UP = "warm-up"


def warm_up(publisher, subject, subscriptions, timeout=10.0):
    """Publish ``subject`` until every subscription has received it once.

    Subscriptions reach publishers asynchronously; this makes sure each
    subscriber's interest has arrived before a test counts messages. Messages on
    the warm-up data that are still in flight are skipped by :func:`collect`.
    """
    pending = list(subscriptions)
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(pending)} subscriptions never received {subject!r}")
        publisher.publish(subject, WARM_UP)
        for sub in list(pending):
            try:
                while sub.get(timeout=0.02).subject != subject:
                    pass
                pending.remove(sub)
            except TimeoutError:
                pass


def collect(subscription, count, timeout=10.0):
    """Read ``count`` messages, skipping warm-up messages."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        message = subscription.get(timeout=max(0.01, deadline - time.monotonic()))
        if message.data != WARM_UP:
            got.append(message)
    return got


def drain(subscription, quiet=1.5):
    """Every message that arrives until none has for ``quiet`` seconds."""
    got = []
    while True:
        try:
            got.append(subscription.get(timeout=quiet))
        except TimeoutError:
            return got


def assert_quiet(subscription, seconds=0.3, data_of=lambda message: message.data):
    """Nothing but warm-up messages arrives for ``seconds`` (``data_of``: how to
    read a message's data, for subscribers that are not the library's)."""
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            message = subscription.get(timeout=remaining)
        except TimeoutError:
            return
        assert data_of(message) == WARM_UP, f"unexpected extra message {message!r}"


class _NoReceiver:  # what a Subscription needs of its receiver when a test feeds it directly
    def remove(self, sub):
        pass


def fed_subscription(pending_limit=10_000, pattern="r.>", stream_idle=60.0):
    """A Subscription that a test feeds batches itself (``accept``, ``apply_mark``), with no client."""
    from mesh.subjects import Pattern
    from mesh.subscription import Subscription

    return Subscription(_NoReceiver(), Pattern(pattern), pending_limit, stream_idle, None)
