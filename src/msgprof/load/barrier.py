"""The start barrier of a point's client processes: all send once all have connected.

With start="all_connected" each process connects all its clients, then holds them; without a
barrier it lets them send as soon as its own are connected, so a process that connects faster
is done before a slower one has connected (a point's clients are then never all connected at
once). The point makes a directory holding `parties` (how many processes); each process marks
itself connected there (a file named by its pid) and sends once the marks reach `parties`, or
once its connect timeout has passed since it arrived (a process that died must not hold the
others for ever).
"""

from __future__ import annotations

import os
from pathlib import Path

PARTIES = "parties"
MARK = "connected-"


def make_barrier(directory: Path, parties: int) -> Path:
    """The barrier directory of a point with `parties` client processes (made empty)."""
    directory.mkdir(parents=True, exist_ok=True)
    for mark in directory.glob(f"{MARK}*"):
        mark.unlink()
    (directory / PARTIES).write_text(f"{parties}\n")
    return directory


class StartBarrier:
    """One process's side of the barrier; `passed(now)` is polled by its loop."""

    def __init__(self, directory: Path, timeout_ns: int) -> None:
        self.directory = Path(directory)
        self.parties = int((self.directory / PARTIES).read_text())
        self.timeout_ns = timeout_ns
        self.arrived_at: int | None = None
        self.timed_out = False

    @property
    def waiting(self) -> bool:
        """This process has connected its clients and waits for the others."""
        return self.arrived_at is not None

    def passed(self, now: int) -> bool:
        """Whether every process has connected (marking this one on the first call)."""
        if self.arrived_at is None:
            self.arrived_at = now
            (self.directory / f"{MARK}{os.getpid()}").touch()
        if sum(1 for _ in self.directory.glob(f"{MARK}*")) >= self.parties:
            return True
        self.timed_out = now - self.arrived_at >= self.timeout_ns
        return self.timed_out
