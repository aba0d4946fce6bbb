"""Giving freed heap back to the OS: glibc's malloc keeps what the server frees in its arenas
(the serving thread's, the store flusher's, libzmq's I/O thread's) and returns a page only
when the top of a heap is free. Connections coming and going and the flusher's joined buffers
leave free pages in the middle, so a long-running server's RSS crept up by about 0.2 MiB a
minute in benchmarks/soak.py with nothing live behind it; `malloc_trim(0)` every 10 s
releases them (the same soak: flat). A trim holds each arena's lock while it walks it: under a
millisecond when there is little to give back, 31 ms at most over a 30-minute soak of 1,000
clients (docs/reliability.md, "Soak"). Where there is no glibc, nothing is done.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from typing import Any

log = logging.getLogger("msgprof.server")

#: Seconds between two trims.
TRIM_INTERVAL_S = 10.0


def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None. A ctypes call releases the interpreter lock meanwhile."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: libc is among them
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class HeapTrimmer:
    """A daemon thread that trims the heap every `interval_s` until stopped; counts the trims
    and the longest (a trim holds each arena's lock while it walks it)."""

    def __init__(self, interval_s: float = TRIM_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._trim = _malloc_trim()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="msgprof-heap-trim", daemon=True)
        self.trims = 0
        self.max_ns = 0

    def start(self) -> HeapTrimmer:
        if self._trim is None:
            log.info("malloc_trim not available: freed heap stays with the allocator")
        else:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def trim(self) -> None:
        """One trim now (the thread's step)."""
        if self._trim is None:
            return
        t0 = time.perf_counter_ns()
        self._trim(0)
        self.max_ns = max(self.max_ns, time.perf_counter_ns() - t0)
        self.trims += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.trim()

    def stats(self) -> dict[str, Any]:
        return {
            "available": self._trim is not None,
            "interval_s": self.interval_s,
            "trims": self.trims,
            "max_ms": round(self.max_ns / 1e6, 3),
        }
