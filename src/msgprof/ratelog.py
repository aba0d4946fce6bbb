"""Repeated warnings, rate-limited: the first line at once, then one line per interval with a count.

A condition that lasts (a storm of refused connections, a log file that cannot be started) is
news once; after that what matters is how often it happened, not a line every 100 ms.
"""

from __future__ import annotations

import logging
import threading
import time


class Throttled:
    """Log a repeated condition at most once per `interval_s`.

    The first call logs its message at once. Calls within the interval are counted; the first
    call after it logs its own message with "(and N more like it in the last S s)" appended, and
    `flush()` logs what is still counted (call it when the condition ends or the process stops).
    Thread-safe.
    """

    def __init__(
        self, logger: logging.Logger, level: int = logging.WARNING, interval_s: float = 10.0
    ) -> None:
        self.logger = logger
        self.level = level
        self.interval_s = interval_s
        self.total = 0
        self._lock = threading.Lock()
        self._last = -float("inf")  # monotonic time of the last line logged
        self._suppressed = 0
        self._pending: tuple[str, tuple] | None = None  # the latest suppressed message

    def __call__(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            self.total += 1
            if now - self._last < self.interval_s:
                self._suppressed += 1
                self._pending = (msg, args)
                return
            suppressed, self._suppressed, self._pending = self._suppressed, 0, None
            since, self._last = self._last, now
        self._emit(msg, args, suppressed, now - since)

    def flush(self) -> None:
        """Log the suppressed calls, if any, as one line (the latest message with its count)."""
        now = time.monotonic()
        with self._lock:
            if not self._suppressed or self._pending is None:
                return
            (msg, args), suppressed = self._pending, self._suppressed
            self._suppressed, self._pending = 0, None
            since, self._last = self._last, now
        self._emit(msg, args, suppressed - 1, now - since)

    def _emit(self, msg: str, args: tuple, more: int, since_s: float) -> None:
        if more > 0:
            msg = f"{msg} (and {more} more like it in the last {since_s:.1f} s)"
        self.logger.log(self.level, msg, *args)
