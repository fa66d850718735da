"""pytest fixtures for a real headless Chromium (Debian's /usr/bin/chromium) driven
by Playwright's sync API.  This module owns the browser's whole life: launching it,
the pages handed to tests, and making sure no Chromium process outlives the session.

Import them from conftest.py or a test module:
    from browser_fixtures import chromium, page  # noqa: F401

- ``chromium`` (session): a ``playwright.sync_api.Browser``.  Playwright never
  downloads a browser here: it launches /usr/bin/chromium through
  ``executable_path``.  ``chromium.chromium_pids`` holds the PIDs of the browser's
  processes found so far; every one still running at teardown is SIGKILLed by PID.
- ``page`` (function): a page in its own fresh context, closed after the test.
  ``page.console_log`` is a list of the page's console messages and uncaught
  errors, printed at teardown (pytest shows it only when the test failed).

No Chromium installed is a failure, not a skip: the test command installs it.

Flags: Playwright's ``launch`` already passes --headless, --no-sandbox,
--no-first-run, --disable-background-networking, --disable-component-update,
--disable-sync and a fresh empty temporary --user-data-dir that it deletes on
close (it refuses a --user-data-dir in ``args``; that is what
``launch_persistent_context`` is for).  We repeat the machine's flags anyway so the
list does not depend on Playwright's defaults, and add --disable-crashpad-for-testing:
otherwise Debian's Chromium starts two chrome_crashpad_handler processes that
detach from the browser (reparented to PID 1) and write under ~/.config/chromium.
"""

import os
import signal
import time

import pytest

CHROMIUM_PATH = "/usr/bin/chromium"

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-crashpad-for-testing",
]

LAUNCH_TIMEOUT_MS = 30_000
PAGE_TIMEOUT_MS = 10_000


# --- Chromium processes, by PID -------------------------------------------------

def _proc_stat(pid):
    """(comm, ppid, state, starttime) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 of proc(5): state, ppid (4), ..., starttime (22).
    return comm, int(fields[1]), fields[0], int(fields[19])


def _descendants(root_pids):
    """{pid: stat} of every live process below root_pids (not the roots)."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _proc_stat(int(name))
            if stat:
                children.setdefault(stat[1], []).append((int(name), stat))
    found, todo = {}, list(root_pids)
    while todo:
        for pid, stat in children.get(todo.pop(), ()):
            if pid not in found:
                found[pid] = stat
                todo.append(pid)
    return found


def _is_chromium(stat):
    # comm is "chromium" for the browser, zygotes, renderers and utilities
    # ("chrome_crashpad" for the crash handler, should one ever start).
    return stat[0].startswith("chrom")


class _ChromiumProcesses:
    """The PIDs (with start times, so a reused PID is never killed) of the Chromium
    processes started below this pytest process."""

    def __init__(self):
        self.seen = {}  # pid -> starttime

    def record(self):
        roots = [os.getpid(), *self.seen]
        for pid, stat in _descendants(roots).items():
            if _is_chromium(stat):
                self.seen.setdefault(pid, stat[3])
        return sorted(self.seen)

    def alive(self):
        """Recorded PIDs that are still the same, running (not zombie) process."""
        out = []
        for pid, start in self.seen.items():
            stat = _proc_stat(pid)
            if stat and stat[3] == start and stat[2] != "Z":
                out.append(pid)
        return out

    def kill_leftovers(self, grace=5.0):
        """Wait up to `grace` s for a graceful exit, then SIGKILL what is left."""
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.record()  # children of a crashed browser's zygotes, if any
        left = self.alive()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return left


# --- fixtures -------------------------------------------------------------------

@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium (Playwright Browser), shared by the session."""
    if not (os.path.isfile(CHROMIUM_PATH) and os.access(CHROMIUM_PATH, os.X_OK)):
        pytest.fail(
            f"Chromium not found at {CHROMIUM_PATH}: install it (apt-get install chromium); "
            "browser tests never download a browser",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"the Python package playwright is not installed: {exc}", pytrace=False)

    procs = _ChromiumProcesses()
    pw = sync_playwright().start()
    browser = None
    try:
        started = time.monotonic()
        browser = pw.chromium.launch(
            executable_path=CHROMIUM_PATH,
            headless=True,
            args=CHROMIUM_ARGS,
            timeout=LAUNCH_TIMEOUT_MS,
        )
        browser.launch_seconds = time.monotonic() - started
        browser.chromium_pids = procs.record()
        yield browser
    finally:
        procs.record()  # renderers started since launch
        try:
            if browser is not None:
                browser.close()
        finally:
            pw.stop()
            left = procs.kill_leftovers()
            if left:
                print(f"browser_fixtures: killed leftover Chromium PIDs {left}")


@pytest.fixture
def page(chromium):
    """A page in a new browser context; ``page.console_log`` collects console
    messages and uncaught page errors."""
    context = chromium.new_context()
    try:
        pg = context.new_page()
        pg.set_default_timeout(PAGE_TIMEOUT_MS)
        log = pg.console_log = []
        pg.on("console", lambda msg: log.append(f"console.{msg.type}: {msg.text}"))
        pg.on("pageerror", lambda err: log.append(f"pageerror: {err}"))
        yield pg
    finally:
        context.close()
    # Shown by pytest only when the test failed.
    if log:
        print("--- browser console ---\n" + "\n".join(log))
