"""Progress of a long point: one line every few seconds while its clients run.

A point of tens of thousands of clients runs for minutes; its log says, every PERIOD_S (a live
line redrawn every second when stderr is a terminal): the phase (connecting, sending, then
verifying), clients connected of all, messages acknowledged of those planned, the current rate,
and the server's RSS and descriptors. The counts come from each client process's progress.json
(written once a second by `msgprof client`), the server's from the run's resource monitor.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path

from msgprof.experiment.monitor import ResourceMonitor

log = logging.getLogger("msgprof.point")

#: Seconds between two progress lines in a log.
PERIOD_S = 5.0
#: Seconds between two redraws of the live line on a terminal.
LIVE_PERIOD_S = 1.0
COUNTS = ("connected", "clients", "acked", "planned", "errors")


def client_counts(work: Path) -> dict[str, int]:
    """The client processes' latest counts under `work`, summed (zeros before the first)."""
    total = dict.fromkeys(COUNTS, 0)
    for path in sorted(work.glob("client-*/progress.json")):
        try:
            counts = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for name in COUNTS:
            total[name] += int(counts.get(name, 0))
    return total


def progress_line(phase: str, clients: int, counts: dict[str, int], rate: float | None,
                  server: tuple[int, int] | None) -> str:  # fmt: skip
    """One progress line."""
    line = f"{phase}: connected {counts['connected']:,}/{clients:,}"
    if counts["planned"]:
        line += f", acked {counts['acked']:,}/{counts['planned']:,}"
    if counts["errors"]:
        line += f", {counts['errors']:,} errors"
    if rate is not None:
        line += f", {rate:,.0f} msg/s"
    if server is not None:
        line += f"; server RSS {server[0] / 1e6:,.0f} MB, {server[1]:,} descriptors"
    return line


class Progress:
    """Reports the progress of the clients under `work` until stopped (a context manager)."""

    def __init__(self, work: Path, clients: int, monitor: ResourceMonitor | None) -> None:
        self.work = work
        self.clients = clients
        self.monitor = monitor
        self.phase = "connecting"
        self.live = sys.stderr.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._last: tuple[float, int] | None = None

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.live:
            sys.stderr.write("\n")

    def line(self) -> str:
        counts = client_counts(self.work)
        now = time.monotonic()
        rate = None
        if self._last is not None and now > self._last[0]:
            rate = (counts["acked"] - self._last[1]) / (now - self._last[0])
        self._last = (now, counts["acked"])
        if counts["acked"] or (counts["clients"] and counts["connected"] >= self.clients):
            self.phase = "sending"
        server = self.monitor.latest() if self.monitor is not None else None
        return progress_line(self.phase, self.clients, counts, rate, server)

    def _run(self) -> None:
        period = LIVE_PERIOD_S if self.live else PERIOD_S
        while not self._stop.wait(period):
            text = self.line()
            if self.live:
                sys.stderr.write(f"\r\033[K{text}")
                sys.stderr.flush()
            else:
                log.info("%s", text)
