"""Loaded at start-up by a process run with tests/skewclock.py's prefix:
time.sleep waits in select(), which libfaketime leaves alone when the
monotonic clock is not faked (its clock_nanosleep then fails with EINVAL)."""

import select
import time


def _sleep(seconds):
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


time.sleep = _sleep
