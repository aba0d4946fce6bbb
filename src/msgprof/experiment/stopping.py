"""Stopping a run stops everything it started.

A user's Ctrl-C, Snakemake cancelling a job and a cluster job's time limit all reach `msgprof
point` or `master` as SIGINT or SIGTERM (SIGKILL after a grace). Its children run in sessions of
their own, so a terminal's Ctrl-C does not reach them directly: the run forwards it.

- The first SIGTERM or SIGINT asks every client process to stop (they write what they measured),
  lets the run stop its server as usual (it flushes), verify and write its documents with the
  verdict `interrupted`; no new process is started after it.
- A second one stops waiting: the run's children are killed at once.
- SIGKILL of the run cannot be caught: each child is started with PR_SET_PDEATHSIG, so the
  kernel sends it SIGTERM when the run dies, and it ends as above.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("msgprof.point")

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)
_HANDLED = (signal.SIGTERM, signal.SIGINT)


def die_with_parent() -> Callable[[], None]:
    """A `preexec_fn` for Popen: the child gets SIGTERM when this process dies (also SIGKILL).

    The death signal is tied to the thread that forks; runs start their children from the main
    thread, which lives as long as the run. If the parent is already gone when the child gets
    here (it died between fork and prctl), the child stops itself the same way.
    """
    parent = os.getpid()

    def preexec() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class Interruption:
    """SIGTERM/SIGINT handling of one run: records the signal and calls `on_stop` once.

    Installed only from the main thread (Python delivers signals there); elsewhere, e.g. a run
    started by a test in a thread, signals keep their previous handlers.
    """

    def __init__(self, on_stop: Callable[[], None], on_force: Callable[[], None]) -> None:
        self._on_stop = on_stop
        self._on_force = on_force
        #: Name of the first signal received (SIGTERM, SIGINT), or None.
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interruption:
        if threading.current_thread() is threading.main_thread():
            for signum in _HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def exit_code(self) -> int:
        """The shell's code for death by the signal received (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + int(signal.Signals[self.signal]) if self.signal else 0

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signal is not None:
            log.warning("%s again: killing the run's processes now", signal.Signals(signum).name)
            self._on_force()
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        log.warning(
            "%s: stopping the clients and the server; the run is written as interrupted "
            "(send it again to kill at once)",
            self.signal,
        )
        self._on_stop()
