"""The server's heap trimmer: freed pages in the middle of the heap go back to the OS, and the
server runs one and reports it."""

from __future__ import annotations

import time

import psutil
import pytest

from msgprof.server.heap import HeapTrimmer

MIB = 2**20


def test_a_trim_gives_back_pages_freed_in_the_middle_of_the_heap():
    trimmer = HeapTrimmer()
    if trimmer.stats()["available"] is False:
        pytest.skip("no glibc malloc_trim here")
    # 2 KiB blocks come from malloc's heap (pymalloc takes only up to 512 bytes); keeping every
    # 16th pins the heap's top, so free() alone returns nothing
    blocks = [bytes(2048) for _ in range(100_000)]
    kept = blocks[::16]
    del blocks
    before = psutil.Process().memory_info().rss
    trimmer.trim()
    after = psutil.Process().memory_info().rss
    assert before - after > 100 * MIB, (before / MIB, after / MIB)
    assert trimmer.stats()["trims"] == 1
    assert len(kept) == 6250


def test_the_trimmer_thread_trims_every_interval_until_stopped():
    trimmer = HeapTrimmer(interval_s=0.05).start()
    deadline = time.monotonic() + 10
    while trimmer.trims < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    trimmer.stop()
    stopped_at = trimmer.trims
    time.sleep(0.2)
    assert stopped_at >= 3
    assert trimmer.trims == stopped_at
    assert not trimmer._thread.is_alive()
    assert trimmer.stats()["max_ms"] > 0
