"""The job book (nodes/queues/jobs.py) on its own: it takes the functions that
deliver, pick and dead-letter, and ``tick(now)``, so every path of a job is
driven here without a node or a clock. Each test accounts for every job
submitted: acknowledged, still held, or dead-lettered."""

import time

import pytest

from nodes.queues import jobs as jobs_module
from nodes.queues.dispatcher import Group, Member
from nodes.queues.jobs import DEAD_LETTER_TOPIC, JobBook


class Book:
    """A JobBook over one job group, recording what it sends and dead-letters."""

    def __init__(self, members=("w1", "w2"), attempts=3, deadline=10.0):
        self.group = Group("work", "jobs.>")
        self.group.jobs = {"deadline": deadline, "attempts": attempts}
        for name in members:
            self.group.members[name] = Member(name, "n1")
        self.sent = []  # (member id, subject, headers)
        self.dead = []  # (subject, headers)
        self.book = JobBook({("work", "jobs.>"): self.group}, self._send, self._pick, self._dead, "n1")
        self.seq = 0

    def _send(self, member, group, subject, data, headers):
        self.sent.append((member.member, subject, headers))

    def _pick(self, group, exclude=None):
        choices = [m for name, m in sorted(group.members.items()) if name != exclude] or list(group.members.values())
        return choices[0] if choices else None

    def _dead(self, subject, data, headers):
        self.dead.append((subject, headers))

    def submit(self, subject="jobs.a"):
        self.seq += 1
        self.book.submit(self.group, subject, {"n": self.seq}, "origin1", 7, self.seq)
        return f"work:origin1/7/{self.seq}"

    def later(self, seconds):
        return time.monotonic() + seconds


def test_a_job_is_delivered_once_and_acknowledged():
    b = Book()
    job = b.submit()
    assert [(m, s, h["j"], h["a"], h["h"]) for m, s, h in b.sent] == [("w1", "jobs.a", job, 1, "n1")]
    b.book.ack(job, "w1")
    b.book.tick(b.later(100))  # nothing is held: nothing goes out again
    assert len(b.sent) == 1 and b.dead == []
    assert b.book.counters() == {"held": 0, "acked": 1, "redelivered": 0, "dead": 0, "refused_acks": 0,
                                 "restored": 0, "adopted": 0, "resumed": 0}


def test_a_missed_deadline_goes_to_another_member_and_the_first_ack_is_refused():
    b = Book(deadline=5.0)
    job = b.submit()
    b.book.tick(b.later(1.0))  # within the deadline: held where it is
    assert len(b.sent) == 1
    b.book.tick(b.later(6.0))
    assert [(m, h["a"]) for m, _, h in b.sent] == [("w1", 1), ("w2", 2)]
    assert {h["j"] for _, _, h in b.sent} == {job}  # one id across attempts
    with pytest.raises(ValueError):
        b.book.ack(job, "w1")
    b.book.ack(job, "w2")
    assert b.book.counters() == {"held": 0, "acked": 1, "redelivered": 1, "dead": 0, "refused_acks": 1,
                                 "restored": 0, "adopted": 0, "resumed": 0}


def test_an_extended_job_is_not_redelivered_at_its_first_deadline():
    b = Book(deadline=5.0)
    job = b.submit()
    b.book.extend(job, "w1", 60.0)
    b.book.tick(b.later(6.0))
    assert len(b.sent) == 1
    b.book.tick(b.later(61.0))
    assert len(b.sent) == 2


def test_a_job_whose_member_left_is_given_to_another_at_the_next_tick():
    b = Book()
    b.submit()
    del b.group.members["w1"]  # its lease ran out
    b.book.tick(b.later(0.0))
    assert [m for m, _, _ in b.sent] == ["w1", "w2"]
    assert b.book.counters()["redelivered"] == 1


def test_a_job_that_finds_no_member_waits_and_is_delivered_when_one_comes():
    b = Book(members=())
    job = b.submit()
    assert b.sent == [] and b.book.counters()["held"] == 1
    b.group.members["w9"] = Member("w9", "n1")
    b.book.tick(b.later(0.0))
    assert [(m, h["j"], h["a"]) for m, _, h in b.sent] == [("w9", job, 1)]
    assert b.book.counters()["redelivered"] == 0  # it had not been delivered before


def test_after_its_attempts_a_job_is_dead_lettered_with_the_reason():
    b = Book(attempts=2, deadline=1.0)
    job = b.submit("jobs.x")
    b.book.tick(b.later(2.0))
    b.book.tick(b.later(4.0))
    assert len(b.sent) == 2
    assert b.dead == [(f"{DEAD_LETTER_TOPIC}.work.jobs.x", {"j": job, "a": 2, "reason": "attempts", "s": "jobs.x"})]
    assert b.book.counters()["held"] == 0 and b.book.counters()["dead"] == 1


def test_a_full_book_dead_letters_at_once(monkeypatch):
    monkeypatch.setattr(jobs_module, "MAX_JOBS", 3)
    b = Book()
    submitted = [b.submit() for _ in range(5)]
    held, dead = b.book.counters()["held"], [h["j"] for _, h in b.dead]
    assert held == 3 and dead == submitted[3:]
    assert {h["reason"] for _, h in b.dead} == {"full"}
    assert held + len(dead) == len(submitted)


def test_acks_for_unknown_jobs_are_refused_and_counted():
    b = Book()
    with pytest.raises(ValueError):
        b.book.ack("work:nobody/1/1", "w1")
    with pytest.raises(ValueError):
        b.book.extend("work:nobody/1/1", "w1", 5.0)
    assert b.book.counters()["refused_acks"] == 2


def held_elsewhere(b, member, until):
    """A job record as another holder (its store, or a replica's copy) kept it: attempt 1 at ``member``."""
    other = Book()
    job = other.submit()
    record = other.book.jobs[job].record()
    return {**record, "member": member, "deadline": until}


def test_an_adopted_job_stays_with_its_worker_until_its_deadline_and_its_ack_settles_it():
    b = Book(deadline=10.0)
    record = held_elsewhere(b, "w2", time.time() + 4)
    assert b.book.adopt([record]) == 1 and b.book.counters()["resumed"] == 1
    b.book.tick(b.later(3))  # before the deadline: not given out again
    assert b.sent == []
    b.book.ack(record["id"], "w2")  # the worker's acknowledgement, sent again to this node, settles it
    b.book.tick(b.later(100))
    assert b.sent == [] and b.book.counters()["held"] == 0


def test_an_adopted_job_not_acknowledged_by_its_deadline_goes_out_again():
    b = Book(deadline=10.0)
    b.book.adopt([held_elsewhere(b, "w2", time.time() + 4)])
    b.book.tick(b.later(5))
    assert [(m, h["a"]) for m, _, h in b.sent] == [("w1", 2)]  # another member, the attempt raised


def test_an_adopted_jobs_deadline_is_at_most_the_groups_deadline_from_now():
    b = Book(deadline=10.0)
    b.book.adopt([held_elsewhere(b, "w2", time.time() + 3600)])  # a far clock, or a long extension
    b.book.tick(b.later(9))
    assert b.sent == []
    b.book.tick(b.later(11))
    assert len(b.sent) == 1


def test_an_adopted_jobs_worker_that_is_not_a_member_goes_out_again_after_its_lease():
    b = Book(deadline=10.0)
    b.book.adopt([held_elsewhere(b, "gone", time.time() + 8)])
    b.book.tick(b.later(1))  # it may not have announced itself here yet
    assert b.sent == []
    b.book.tick(b.later(jobs_module.LEASE_SECONDS + 0.1))
    assert [m for m, _, _ in b.sent] == ["w1"]


def test_a_record_without_member_and_deadline_goes_out_at_the_next_tick():
    b = Book()
    record = held_elsewhere(b, None, None)
    del record["member"], record["deadline"]  # as an older holder sends it
    b.book.adopt([record])
    b.book.tick(b.later(0))
    assert len(b.sent) == 1 and b.book.counters()["resumed"] == 0
