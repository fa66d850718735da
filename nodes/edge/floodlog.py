"""Log lines for what comes in floods (clients resetting, bad frames): one line
per cause per interval, saying how many happened since the last one, and no
traceback for what a client did. The counts themselves are in the edge's stats."""

import logging
import time

INTERVAL_SECONDS = 10.0


class FloodLog:
    def __init__(self, logger, interval=INTERVAL_SECONDS):
        self.logger = logger
        self.interval = interval
        self._causes = {}  # cause -> [last logged at, happened since]

    def note(self, cause, text, level=logging.INFO):
        """One more ``cause``; log ``text`` (with the count) if its interval has passed."""
        now = time.monotonic()
        entry = self._causes.get(cause)
        if entry is None:
            entry = self._causes[cause] = [now - self.interval, 0]
        entry[1] += 1
        if now - entry[0] >= self.interval:
            self.logger.log(level, "%s (%d since the last such line; next at most in %.0f s)",
                            text, entry[1], self.interval)
            entry[0], entry[1] = now, 0
