"""Server-side resource sampling (the seed's open to-do: "server side resource profiling").

A thread samples the server process with psutil a few times a second: CPU, memory, descriptors,
threads, context switches, and the bytes its queues hold on disk. Walking thousands of queue
directories is not free, so the disk scan adapts its rate to stay a small share of the time.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa

COLUMNS = (
    "t_s",
    "cpu_user_s",
    "cpu_system_s",
    "cpu_percent",
    "rss_bytes",
    "open_fds",
    "threads",
    "ctx_voluntary",
    "ctx_involuntary",
    "queue_files",
    "queue_bytes",
)


def queue_usage(root: Path) -> tuple[int, int]:
    """(files, bytes) of everything under `root`, tolerant of files vanishing while walked."""
    files = total = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            files += 1
                            total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            continue
    return files, total


class ResourceMonitor:
    """Sample process `pid` every `interval_s` until `stop()`; `table()` gives the samples.
    With `children`, each sample is the sum over the process and its descendants (a server
    started by a wrapper script or that forks workers: --server-command)."""

    def __init__(self, pid: int, data_dir: Path | None, interval_s: float = 0.25,
                 children: bool = False) -> None:  # fmt: skip
        self.process = psutil.Process(pid)
        self.children = children
        self._known: dict[int, psutil.Process] = {}  # keeps each child's cpu_percent state
        self.data_dir = data_dir
        self.interval_s = interval_s
        self.rows: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-monitor", daemon=True)
        self._t0 = time.monotonic()
        self._scan_cost_s = 0.0
        self._next_scan = 0.0
        self._last_scan = (0, 0)

    def elapsed(self) -> float:
        """Seconds since the monitor was made: the `t_s` clock of its samples."""
        return time.monotonic() - self._t0

    def start(self) -> "ResourceMonitor":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            try:
                self._sample()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                return
            if self._stop.wait(self.interval_s):
                return

    def _scan(self, now: float) -> tuple[int, int]:
        """Queue usage, rescanned only when the last scan's cost is under 10% of the gap."""
        if self.data_dir is None:
            return (0, 0)
        if now >= self._next_scan:
            t = time.monotonic()
            self._last_scan = queue_usage(self.data_dir)
            self._scan_cost_s = time.monotonic() - t
            self._next_scan = now + max(self.interval_s, 10 * self._scan_cost_s)
        return self._last_scan

    @staticmethod
    def _numbers(p: psutil.Process) -> dict[str, float]:
        with p.oneshot():
            cpu = p.cpu_times()
            mem = p.memory_info()
            ctx = p.num_ctx_switches()
            return {
                "cpu_user_s": cpu.user,
                "cpu_system_s": cpu.system,
                "cpu_percent": p.cpu_percent(None),
                "rss_bytes": mem.rss,
                "open_fds": p.num_fds(),
                "threads": p.num_threads(),
                "ctx_voluntary": ctx.voluntary,
                "ctx_involuntary": ctx.involuntary,
            }

    def _descendants(self) -> list[psutil.Process]:
        try:
            found = self.process.children(recursive=True)
        except psutil.Error:
            return []
        return [self._known.setdefault(child.pid, child) for child in found]

    def _sample(self) -> None:
        row = self._numbers(self.process)  # the process itself gone: the sampling ends
        if self.children:
            for child in self._descendants():
                try:
                    extra = self._numbers(child)
                except psutil.Error:  # ended between listing and reading
                    continue
                row = {name: row[name] + extra[name] for name in row}
        if not row["rss_bytes"]:
            return  # the process is exiting: its memory and descriptors are already gone
        now = time.monotonic()
        row["t_s"] = now - self._t0
        row["queue_files"], row["queue_bytes"] = self._scan(now)
        for name in COLUMNS:
            self.rows[name].append(row[name])

    def latest(self) -> tuple[int, int] | None:
        """(RSS bytes, open descriptors) of the last sample, or None before the first."""
        rss, fds = self.rows["rss_bytes"], self.rows["open_fds"]
        n = min(len(rss), len(fds))  # the sampling thread appends one column at a time
        return (rss[n - 1], fds[n - 1]) if n else None

    def table(self) -> pa.Table:
        """Samples so far as a pyarrow Table with the COLUMNS above. Its schema metadata
        ``t0_monotonic_s`` is the CLOCK_MONOTONIC time of ``t_s`` = 0, so the samples line up
        with the clients' latency logs, which are stamped on that clock."""
        table = pa.table({name: self.rows[name] for name in COLUMNS})
        return table.replace_schema_metadata({"t0_monotonic_s": repr(self._t0)})
