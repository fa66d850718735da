"""pytest fixtures for a real headless Chromium (Debian's /usr/bin/chromium) driven
by Playwright's sync API.  This module owns the browser's whole life: launching it,
the pages handed to tests, and making sure no Chromium process outlives the session.

Import them from conftest.py or a test module:
    from browser_fixtures import chromium, page  # noqa: F401

``page_wait_until(page, predicate)`` waits for something the page's events change
(``page.console_log``, handlers): Playwright's sync API delivers events only while
one of its calls runs, so such a wait must not use time.sleep.

- ``chromium`` (session): a ``playwright.sync_api.Browser``.  Playwright never
  downloads a browser here: it launches /usr/bin/chromium through
  ``executable_path``.  ``chromium.chromium_pids`` holds the PIDs of its processes
  found at launch; at teardown every process of it still running after close (or
  after 15 s of a close that hangs) is SIGKILLed by PID.
- ``page`` (function): a page in its own fresh context, closed after the test.
  ``page.console_log`` is a list of the page's console messages and uncaught
  errors, printed at teardown (pytest shows it only when the test failed).
  Entries read "console.<type>: <text>" or "pageerror: <error>"; a failed resource
  load gets its URL appended, except the 404 of the /favicon.ico Chromium asks
  every site for, which is dropped.  A context close that hangs for 15 s kills
  the browser and fails the test.

No Chromium installed is a failure, not a skip: the test command installs it.

Flags: Playwright's ``launch`` already passes --headless, --no-sandbox,
--no-first-run, --disable-background-networking, --disable-component-update,
--disable-sync and a fresh empty temporary --user-data-dir that it deletes on
close (it refuses a --user-data-dir in ``args``; that is what
``launch_persistent_context`` is for).  We repeat the machine's flags anyway so the
list does not depend on Playwright's defaults.  /usr/bin/chromium is Debian's shell
wrapper: it adds the flags of /etc/chromium.d (GPU rasterization, remote
extensions, ...; ours come after them) and execs /usr/lib/chromium/chromium, so
the PID Playwright starts is the browser's.  With /dev/shm mounted twice, its
/dev/shm check prints "[: ...: unexpected operator" to stderr: harmless.

Home: the browser runs with HOME and XDG_CONFIG_HOME/XDG_CACHE_HOME in a temp dir of
this module's, removed at teardown.  Debian's Chromium always starts two
chrome_crashpad_handler processes that detach from the browser (reparented to PID 1,
so they are no descendants of ours) with --database=$XDG_CONFIG_HOME/chromium/...;
the temp dir keeps that out of ~/.config and names them, so they are found and
killed by PID too.  (--disable-crashpad-for-testing would stop them, but with it
Chromium 150's network service crash-loops and every page load fails.)
"""

import os
import shutil
import signal
import tempfile
import threading
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
]

LAUNCH_TIMEOUT_MS = 30_000
PAGE_TIMEOUT_MS = 10_000
CLOSE_TIMEOUT_S = 15


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


def _chromium_processes():
    """{pid: stat} of every process whose comm is "chromium" (the browser, zygotes,
    renderers, utilities) or "chrome_crashpad" (Debian's crash handlers)."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _proc_stat(int(name))
            if stat and stat[0].startswith("chrom"):
                out[int(name)] = stat
    return out


def _read_nul_list(pid, what):
    try:
        with open(f"/proc/{pid}/{what}", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def _cmdline_tokens(pid):
    # Chromium's child processes rewrite their argv into one space-joined string
    # (which also overwrites their /proc/PID/environ).
    return " ".join(_read_nul_list(pid, "cmdline")).split()


class _ChromiumProcesses:
    """The PIDs (with start times, so a reused PID is never killed) of one
    browser's processes.  They are told apart from any other Chromium (another
    session's, or a second browser in this one) by what only ours carry: the
    browser and its crash handlers have HOME=<our temp dir> in their environment,
    the crash handlers name it in --database=, and the browser's zygotes,
    renderers and utilities all carry the browser's --user-data-dir=."""

    def __init__(self, home):
        self.env_entry = f"HOME={home}"
        self.marker = home + os.sep
        self.profile_args = set()  # "--user-data-dir=<Playwright's temp profile>"
        self.seen = {}  # pid -> starttime
        self.lock = threading.Lock()  # the close watchdog runs in a thread

    @property
    def profile_dirs(self):
        return [arg.split("=", 1)[1] for arg in self.profile_args]

    def record(self):
        """Add the browser's processes now running; returns all recorded PIDs."""
        with self.lock:
            procs = _chromium_processes()
            tokens = {pid: _cmdline_tokens(pid) for pid in procs}
            for pid in procs:
                if self.env_entry in _read_nul_list(pid, "environ"):
                    self.seen.setdefault(pid, procs[pid][3])
                    self.profile_args.update(
                        t for t in tokens[pid] if t.startswith("--user-data-dir="))
            for pid, toks in tokens.items():
                if self.profile_args.intersection(toks) or any(self.marker in t for t in toks):
                    self.seen.setdefault(pid, procs[pid][3])
            return sorted(self.seen)

    def alive(self):
        """Recorded PIDs that are still the same, running (not zombie) process."""
        with self.lock:
            seen = list(self.seen.items())
        out = []
        for pid, start in seen:
            stat = _proc_stat(pid)
            if stat and stat[3] == start and stat[2] != "Z":
                out.append(pid)
        return out

    def kill(self):
        """SIGKILL every process of the browser still alive; returns their PIDs."""
        self.record()
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

    def kill_leftovers(self, grace=5.0):
        """Wait up to `grace` s for a graceful exit, then SIGKILL what is left."""
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.kill()


def _close_or_kill(close, procs, what):
    """close(), but if it has not returned after CLOSE_TIMEOUT_S (a hung browser:
    Playwright's close has no timeout), SIGKILL the browser's processes by PID so
    that it does; then fail, naming them."""
    fired, killed = threading.Event(), []

    def kill():
        fired.set()
        killed.extend(procs.kill())

    watchdog = threading.Timer(CLOSE_TIMEOUT_S, kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        close()
    except Exception:
        if not fired.is_set():
            raise
    finally:
        watchdog.cancel()
        watchdog.join()
    if fired.is_set():
        pytest.fail(f"Chromium did not close {what} within {CLOSE_TIMEOUT_S} s: "
                    f"killed PIDs {killed}", pytrace=False)


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

    home = tempfile.mkdtemp(prefix="meshnode-chromium-")
    env = {**os.environ, "HOME": home,
           "XDG_CONFIG_HOME": os.path.join(home, ".config"),
           "XDG_CACHE_HOME": os.path.join(home, ".cache")}
    procs = _ChromiumProcesses(home)
    pw = sync_playwright().start()
    browser = None
    try:
        started = time.monotonic()
        browser = pw.chromium.launch(
            executable_path=CHROMIUM_PATH,
            headless=True,
            args=CHROMIUM_ARGS,
            env=env,
            timeout=LAUNCH_TIMEOUT_MS,
        )
        browser.launch_seconds = time.monotonic() - started
        browser.chromium_pids = procs.record()
        browser.chromium_processes = procs
        yield browser
    finally:
        procs.record()  # renderers started since launch (or what a failed launch left)
        try:
            if browser is not None:
                _close_or_kill(browser.close, procs, "the browser")
        finally:
            pw.stop()
            left = procs.kill_leftovers()
            shutil.rmtree(home, ignore_errors=True)
            # Playwright removes its profile dir on a clean close, not after a kill.
            for path in procs.profile_dirs:
                if os.path.basename(path).startswith("playwright_chromiumdev_profile-"):
                    shutil.rmtree(path, ignore_errors=True)
            if left:
                print(f"browser_fixtures: killed leftover Chromium PIDs {left}")


def page_wait_until(page, predicate, timeout=10.0, what="condition"):
    """Poll predicate() until true, letting Playwright deliver the page's events
    (console messages, page errors, handlers) in between; returns its value."""
    from meshtest.nodeproc import wait_until

    return wait_until(predicate, timeout, 0.05, what, sleep=lambda seconds: page.wait_for_timeout(seconds * 1000))


def _log_console(log, msg):
    text = msg.text
    if text.startswith("Failed to load resource"):
        url = (msg.location or {}).get("url", "")
        if url.split("?", 1)[0].endswith("/favicon.ico"):
            return  # Chromium asks every site for one by itself: not the page's error
        text += f" ({url})"
    log.append(f"console.{msg.type}: {text}")


@pytest.fixture
def page(chromium):
    """A page in a new browser context; ``page.console_log`` collects console
    messages and uncaught page errors."""
    context = chromium.new_context()
    log = []
    try:
        pg = context.new_page()
        pg.set_default_timeout(PAGE_TIMEOUT_MS)
        pg.console_log = log
        pg.on("console", lambda msg: _log_console(log, msg))
        pg.on("pageerror", lambda err: log.append(f"pageerror: {err}"))
        yield pg
    finally:
        # Shown by pytest only when the test failed.
        if log:
            print("--- browser console ---\n" + "\n".join(log))
        _close_or_kill(context.close, chromium.chromium_processes, "a page's context")
