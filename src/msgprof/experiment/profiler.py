"""Where the server's CPU goes: py-spy samples it for the whole point (and, asked, where each
client process's goes).

py-spy (a PyPI package that ships its own binary) attaches to the running server by pid, as
root or with CAP_SYS_PTRACE, and records every `rate_hz`-th of a second the stack of each thread
that is not idle, aggregated by function (`--function`); `native` adds the C frames of libzmq
and the interpreter, `threads` a root frame per thread. It reads the stacks without pausing the
server (`--nonblocking`): paused
100 times a second the server lost 10-20 % of its throughput at 100 clients on this host
(benchmarks/profiler_overhead.py), and a stack read while it changes is rare enough for shares.
From its collapsed stacks the point's profile/ directory gets (a client process sampled with
--profile-clients the same in profile/client-K/, named `client.*`):

- server.speedscope.json: the samples, to open in https://www.speedscope.app;
- server.svg: a flame graph of them (msgprof.report.flamegraph);
- top.csv: one row per function: `function`, `file`, `line` (its first line), `self_pct` (share
  of the samples in which it was running itself), `total_pct` (share in which it was on the
  stack), `samples` (the samples in which it was on the stack);
- server.collapsed: py-spy's own output (one line per stack: frames joined by ';', a count).

A point too short (or a server too idle) to be caught by a sample still gets every file, with
no sample in them, so that two runs of one config hold the same files.

A profiler that cannot start (no binary, not permitted) or dies leaves the point measuring as it
would have: the reason is recorded, never a failed point.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from msgprof import atomic
from msgprof.report.flamegraph import write_flamegraph
from msgprof.report.stacks import read_collapsed, speedscope, top_rows

log = logging.getLogger("msgprof.point")

#: Seconds py-spy gets to attach before the point goes on without it, and to write its file.
ATTACH_S = 0.5
STOP_TIMEOUT_S = 30.0
TOP_COLUMNS = ["function", "file", "line", "self_pct", "total_pct", "samples"]


def py_spy() -> str | None:
    """The py-spy binary: beside this interpreter (its venv), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


#: Starts a process: (name, argv, log path) -> the process.
Launch = Callable[[str, list[str], Path], subprocess.Popen]


def _plain_child(_name: str, argv: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


class Profiler:
    """py-spy on one process (a point's server, a client process) for as long as it runs or
    until `stop()`."""

    def __init__(self, out_dir: Path, rate_hz: int, native: bool, threads: bool = False,
                 name: str = "server") -> None:  # fmt: skip
        self.dir = Path(out_dir)
        self.rate_hz = rate_hz
        self.native = native
        self.threads = threads
        self.name = name
        self.process: subprocess.Popen | None = None
        self.reason: str | None = None

    @property
    def collapsed(self) -> Path:
        return self.dir / f"{self.name}.collapsed"

    def start(self, pid: int, launch: Launch | None = None) -> bool:
        """Attach to `pid`; False (with `reason`) when py-spy is missing or cannot attach.
        `launch(name, argv, log_path)` starts py-spy (a run's ChildProcesses.start, so the run
        owns and reaps it); by default a plain child process."""
        binary = py_spy()
        if binary is None:
            self.reason = "py-spy not found (pip install py-spy)"
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [binary, "record", "--pid", str(pid), "--rate", str(self.rate_hz), "--function",
                "--nonblocking", "--format", "raw", "--output", str(self.collapsed)]  # fmt: skip
        if self.native:
            argv.append("--native")
        if self.threads:
            argv.append("--threads")
        log_path = self.dir / f"{self.name}.py-spy.log"
        self.process = (launch or _plain_child)(f"py-spy-{self.name}", argv, log_path)
        time.sleep(ATTACH_S)
        if self.process.poll() is not None:
            self.reason = self._failure()
            self.process = None
            return False
        return True

    def _failure(self) -> str:
        text = (self.dir / f"{self.name}.py-spy.log").read_text(errors="replace").strip()
        last = text.splitlines()[-1] if text else "no output"
        if "ermission" in text or "ptrace" in text.lower():
            return f"py-spy may not attach (run as root, or grant CAP_SYS_PTRACE): {last}"
        return f"py-spy exited: {last}"

    def stop(self) -> dict[str, Any]:
        """Stop sampling, write the profile files; what point.json records of it."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                self.reason = "py-spy did not stop within 30 s"
        stacks = read_collapsed(self.collapsed) if self.collapsed.is_file() else []
        if self.process is not None:  # it ran: the same files every time, empty when no sample
            atomic.write_text(self.dir / f"{self.name}.speedscope.json",
                              json.dumps(speedscope(stacks, self.name)))  # fmt: skip
            self._write_top(top_rows(stacks))
            write_flamegraph(stacks, self.dir / f"{self.name}.svg", f"{self.name} profile")
        if not stacks and self.reason is None and self.process is not None:
            self.reason = "py-spy recorded no sample"
        return {
            "profiled": bool(stacks),
            "reason": self.reason,
            "rate_hz": self.rate_hz,
            "native": self.native,
            "threads": self.threads,
            "samples": sum(count for _frames, count in stacks),
        }

    def _write_top(self, rows: list[dict[str, Any]]) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=TOP_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)

        atomic.replace_into(self.dir / "top.csv", write)


def start_profiler(config: Any, run: Any, out_dir: Path) -> Profiler | None:
    """py-spy on the run's server into `out_dir`/profile with --profile (None without): for
    a point, or for one step of the master case. One that cannot start says why in the log
    and in point.json, and the point measures on. `config` is the run's PointConfig, `run`
    its lifecycle.Run."""
    if not config.profile or run.server.process is None:
        return None
    profiler = Profiler(
        out_dir / "profile", config.profile_rate_hz, config.profile_native,
        config.profile_threads,
    )  # fmt: skip
    if not profiler.start(run.server.process.pid, run.procs.start):
        log.warning("the server is not profiled: %s", profiler.reason)
    return profiler
