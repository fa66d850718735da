"""Request/reply over the mesh: one inbox per client, replies matched to requests.

A request is a message whose headers name a ``reply`` subject
(PROTOCOL.md 4.2, section 9): ``_INBOX.<client id>.<n>``. The client
subscribes once, lazily, to ``_INBOX.<client id>.>``; a reader hands each
reply to the request waiting for that ``n``. A responder answers with one
call, ``client.respond(message, data)``, which publishes on the reply
subject once the requester's inbox subscription has reached it (a reply is
useless before). ``client.serve(pattern, handler)`` is a whole responder:
``handler(message)``'s return value is the reply; if it raises, the reply
carries the error and the requester gets :class:`RemoteError`.

A request to a subject no subscriber in the mesh covers fails at once with
:class:`NoResponders` (the publisher already knows the interest), one that
gets no answer in time with :class:`RequestTimeout`.
"""

import itertools
import threading
import uuid

INBOX_PREFIX = "_INBOX"
REPLY_INTEREST_SECONDS = 2.0
INTEREST_SETTLE_SECONDS = 0.2  # how long a responder waits for the requester's inbox to reach it


class NoResponders(RuntimeError):
    """No subscriber anywhere in the mesh covers the request's subject."""


class RequestTimeout(TimeoutError):
    """Responders exist, but none answered in time."""


class RemoteError(RuntimeError):
    """The responder failed; the message is what it said."""


def inbox_prefix():
    """A client's own reply subjects: ``_INBOX.<random>``, then ``.<n>`` per request."""
    return f"{INBOX_PREFIX}.{uuid.uuid4().hex}"


def reply_number(subject):
    """The request number ``n`` of a reply subject ``<prefix>.<n>``, or None."""
    try:
        return int(subject.rsplit(".", 1)[1])
    except (ValueError, IndexError):
        return None


def reply_or_raise(reply):
    """The reply Message, or RemoteError with what the responder said went wrong."""
    error = (reply.headers or {}).get("error")
    if error is not None:
        raise RemoteError(str(error))
    return reply


def response(message, data=None, error=None):
    """``(reply subject, payload, headers)`` answering the request ``message``."""
    reply = message.reply
    if not reply:
        raise ValueError(f"the message on {message.subject!r} is not a request (it names no reply subject)")
    if error is not None:
        return reply, None, {"error": str(error)}
    return reply, data, {}


class Requests:
    def __init__(self, client):
        self._client = client
        self._ids = itertools.count(1)
        self._pending = {}  # n -> [Event, reply Message or None]
        self._lock = threading.Lock()
        self._inbox = None
        self.prefix = inbox_prefix()

    def _open_inbox(self):
        with self._lock:
            if self._inbox is None:
                self._inbox = self._client.subscribe(f"{self.prefix}.>", self._on_reply)
                self._client.wait_for_subscription(f"{self.prefix}.>", self._client.timeout)

    def _on_reply(self, message):
        slot = self._pending.get(reply_number(message.subject))
        if slot is not None and slot[1] is None:
            slot[1] = message
            slot[0].set()

    def request(self, subject, data, timeout):
        client = self._client
        # The interest a client sees arrives just after it connects: give a young
        # client that moment, then fail fast.
        if not client.wait_for_interest(subject, min(timeout, INTEREST_SETTLE_SECONDS)):
            raise NoResponders(f"no subscriber in the mesh covers {subject!r}")
        self._open_inbox()
        n = next(self._ids)
        slot = self._pending[n] = [threading.Event(), None]
        try:
            client.publish(subject, data, {"reply": f"{self.prefix}.{n}"})
            if not slot[0].wait(timeout):
                raise RequestTimeout(f"no reply on {subject!r} within {timeout} s")
        finally:
            del self._pending[n]
        return reply_or_raise(slot[1])

    def respond(self, message, data=None, error=None):
        reply, payload, headers = response(message, data, error)
        client = self._client
        client.wait_for_interest(reply, REPLY_INTEREST_SECONDS)
        client.publish(reply, payload, headers)

    def serve(self, pattern, handler, queue=None):
        def answer(message):
            if not message.reply:
                return  # a plain publish on the subject: nothing to answer
            try:
                result = handler(message)
            except Exception as exc:  # the requester hears of it
                self.respond(message, error=f"{type(exc).__name__}: {exc}")
                return
            try:
                self.respond(message, result)
            except (TypeError, ValueError) as exc:  # an answer msgpack cannot carry, or too large
                self.respond(message, error=f"the reply could not be sent: {exc}")

        return self._client.subscribe(pattern, answer, queue=queue)
