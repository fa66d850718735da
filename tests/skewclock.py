"""Test processes whose wall clock is off by some seconds: libfaketime
(Debian package ``faketime``) preloaded into them.

``clock_prefix(seconds)`` is a command prefix (``env`` and its variables,
to put after a host's ``ip netns exec`` prefix) under which a Python program
sees ``time.time()`` shifted by ``seconds`` while its monotonic clock and its
waits are untouched; ``unavailable()`` says why that cannot be done here.

Two faults of libfaketime 0.9.10 with Python 3.11 decide how: with the
monotonic clock faked too, every timed wait on a thread lock hangs (it hands
sem_clockwait a fake deadline), so the monotonic clock is left alone
(FAKETIME_DONT_FAKE_MONOTONIC); that way ``time.sleep`` fails with EINVAL
(its clock_nanosleep with an absolute deadline is converted wrongly), so the
process also gets tests/faketime_site/sitecustomize.py, which makes
``time.sleep`` wait in select().
"""

import glob
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SITE = os.path.join(HERE, "faketime_site")


def _library():
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1") + glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    return found[0] if found else None


def unavailable():
    """Why clocks cannot be shifted here, or None when they can."""
    if _library() is None:
        return "libfaketime is not installed (Debian package faketime; scripts/bootstrap.sh --test installs it)"
    return None


def clock_prefix(seconds):
    """``env ...``: what follows runs with its wall clock ``seconds`` off (+ ahead, - behind)."""
    path = os.pathsep.join([SITE, ROOT, HERE, *filter(None, [os.environ.get("PYTHONPATH")])])
    return ["env", f"LD_PRELOAD={_library()}", f"FAKETIME={seconds:+g}", "FAKETIME_DONT_FAKE_MONOTONIC=1",
            f"PYTHONPATH={path}"]
