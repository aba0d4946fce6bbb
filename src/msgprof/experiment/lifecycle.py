"""The life of a run (a point, or the master case) around its load, and the owner of its children.

`Run` is what `msgprof point` and `msgprof master` share: it checks where the run can happen,
makes the output, work and queue directories, the CURVE keys and the limits record, holds the
server (`ServerRun`: `msgprof server` and its resource monitor), and on leaving, however it
leaves, stops the monitor and reaps every child process; `verify` and `clean_up` come after.

`ChildProcesses` is the one owner of a run's child processes (the server and every client
process): each is started through it with its log file, waited for with a bound, stopped, and
reaped when the run ends. Nothing else of a run starts or ends a process.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from msgprof import atomic
from msgprof.commands import command_argv
from msgprof.config import PointConfig, ServerConfig, ServerOptions, shared
from msgprof.experiment import budget, foreign, launch, sysinfo
from msgprof.experiment.monitor import ResourceMonitor
from msgprof.experiment.stopping import Interruption, die_with_parent
from msgprof.experiment.verify import verify_queues
from msgprof.wire import security

log = logging.getLogger("msgprof.point")

#: Seconds the server gets to bind and write its ready file.
SERVER_START_TIMEOUT_S = 60.0
#: Seconds the server gets to flush and exit after SIGTERM before it is killed.
SERVER_STOP_TIMEOUT_S = 120.0
#: Seconds a killed child gets to be gone before the run goes on without it.
REAP_TIMEOUT_S = 10.0


def msgprof_argv(argv: list[str]) -> list[str]:
    """`argv` (from commands.command_argv) run by this interpreter's msgprof."""
    return [sys.executable, "-m", "msgprof", *argv]


def read_json(path: Path) -> dict[str, Any]:
    """The JSON document at `path`, or {} when it is missing or not (yet) whole."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class ChildProcesses:
    """The child processes of a run, each with its log file; all are reaped on `kill_all`."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._logs: list[IO[bytes]] = []
        #: Set once the run is asked to stop: no new client process is started after it.
        self.stopping = False

    def start(self, name: str, argv: list[str], log_path: Path) -> subprocess.Popen:
        """Start `argv` in a session of its own, stdout and stderr to `log_path`; it gets
        SIGTERM when this process dies (stopping.die_with_parent)."""
        log_file = open(log_path, "wb")
        self._logs.append(log_file)
        proc = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self.procs.append((name, proc))
        return proc

    def stop_clients(self) -> None:
        """Ask every running client process to stop (SIGTERM: it writes what it measured)."""
        self.stopping = True
        for name, proc in self.procs:
            if name != "server" and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    @staticmethod
    def wait(proc: subprocess.Popen, until: float) -> int | None:
        """The exit code of `proc`, waiting up to time.monotonic() `until`; None if it runs on."""
        try:
            return proc.wait(timeout=max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None

    @staticmethod
    def stop(proc: subprocess.Popen, grace_s: float) -> int | None:
        """End `proc`: SIGTERM and up to `grace_s` seconds to exit (its exit code), else SIGKILL
        (None; kill_all reaps it). With no grace, SIGKILL at once."""
        if proc.poll() is not None:
            return proc.returncode
        if grace_s > 0:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        proc.kill()
        return None

    def kill_all(self) -> None:
        """SIGKILL every child still running, reap each (bounded) and close the logs."""
        for _name, proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for name, proc in self.procs:
            try:
                proc.wait(timeout=REAP_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # stuck in the kernel (D state): say so, go on
                log.error("%s (pid %d) did not exit 10 s after SIGKILL", name, proc.pid)
        for f in self._logs:
            f.close()


def wait_ready(
    ready_file: Path,
    server: subprocess.Popen,
    timeout_s: float,
    procs: ChildProcesses | None = None,
) -> str | None:
    """The endpoint from the ready file, or None when the server died, never got ready or the
    run was asked to stop."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (procs and procs.stopping):
        if ready_file.exists():
            return ready_file.read_text().splitlines()[0]
        if server.poll() is not None:
            return None
        time.sleep(0.02)
    return None


def server_config(config: PointConfig, data_dir: Path, work: Path) -> ServerConfig:
    """The server of a run: the point's server settings, ready file and stats in `work`,
    queues in `data_dir`, bound where the launcher says, CURVE keys from the run's keys_dir."""
    keys = config.keys_dir
    curve = (
        {}
        if keys is None
        else {"curve_secret": keys / "server.key_secret", "curve_allow": keys / "allow"}
    )
    return ServerConfig(
        **shared(ServerOptions, config),
        data_dir=data_dir,
        ready_file=work / "ready",
        stats_out=work / "server.json",
        bind=launch.placement(config).bind,
        **curve,
    )


def server_argv(config: PointConfig, data_dir: Path, work: Path) -> list[str]:
    """`msgprof server` for this point: ready file and stats in `work`, queues in `data_dir`."""
    return msgprof_argv(command_argv("server", server_config(config, data_dir, work)))


class ServerRun:
    """A `msgprof server` child process with its resource monitor: start, snapshot, stop."""

    def __init__(self, config: PointConfig, data_dir: Path, work: Path, log_path: Path,
                 procs: ChildProcesses) -> None:  # fmt: skip
        self.config = config
        self.data_dir = data_dir
        self.work = work
        self.log_path = log_path
        self.procs = procs
        self.process: subprocess.Popen | None = None
        self.monitor: ResourceMonitor | None = None
        self.endpoint: str | None = None
        self._snapshots = 0

    @property
    def stats_path(self) -> Path:
        return self.work / "server.json"

    def start(self) -> str | None:
        """Start the server and its monitor; the endpoint, or None if it never got ready."""
        template = self.config.server_command
        if template is not None:
            self.endpoint = self._start_foreign(template)
        else:
            argv = server_argv(self.config, self.data_dir, self.work)
            self.process = self.procs.start("server", argv, self.log_path)
            self.endpoint = wait_ready(
                self.work / "ready", self.process, SERVER_START_TIMEOUT_S, self.procs
            )
        if self.endpoint is not None:
            family = self.config.server_command is not None  # its children too
            self.monitor = ResourceMonitor(self.process.pid, self.data_dir, children=family)
            self.monitor.start()
        return self.endpoint

    def _start_foreign(self, template: str) -> str | None:
        """--server-command: filled in, started, ready by its {ready} file or its {port}."""
        endpoint = launch.placement(self.config).bind  # tcp://HOST:PORT
        host = endpoint.partition("://")[2].rpartition(":")[0] or "127.0.0.1"
        port = foreign.free_port(host)
        ready = self.work / "ready"
        argv = foreign.server_argv(template, ready, self.data_dir, port)
        self.process = self.procs.start("server", argv, self.log_path)
        if "{ready}" in template:
            return wait_ready(ready, self.process, SERVER_START_TIMEOUT_S, self.procs)
        up = foreign.wait_port(host, port, self.process, SERVER_START_TIMEOUT_S,
                               lambda: self.procs.stopping)  # fmt: skip
        return f"tcp://{host}:{port}" if up else None

    def snapshot(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """The running server's stats now (SIGUSR1), or {} if it does not answer in time (or
        is a --server-command server, which SIGUSR1 might end)."""
        if self.process is None or self.process.poll() is not None or self.config.server_command:
            return {}
        self._snapshots += 1
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stats = read_json(self.stats_path)
            if stats.get("snapshot", 0) >= self._snapshots:
                return stats
            time.sleep(0.02)
        return {}

    def stop(self, problems: list[str]) -> dict[str, Any]:
        """SIGTERM, wait with a bound (then kill), stop the monitor; the final stats or {}."""
        clean = foreign.stopped_cleanly if self.config.server_command else (lambda c: c == 0)
        if self.process is not None and self.process.poll() is None:
            code = self.procs.stop(self.process, SERVER_STOP_TIMEOUT_S)
            if code is None:
                problems.append("server_hung")
            elif not clean(code):
                problems.append("server_failed")
        elif self.process is not None and self.process.returncode not in (0, None):
            problems.append("server_failed")
        if self.monitor is not None:
            self.monitor.stop()
        stats = read_json(self.stats_path)
        return stats if stats.get("final") else {}


def fresh_dirs(config: PointConfig, out_dir: Path) -> tuple[Path, Path]:
    """Create out_dir, an empty work dir in it, and the data dir; return (work, data_dir)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    data_dir = Path(config.data_dir) if config.data_dir else out_dir / "queues"
    if data_dir.exists() and any(data_dir.iterdir()):
        if config.data_dir is not None:
            raise ValueError(f"--data-dir {data_dir} is not empty: a point starts on fresh queues")
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    return work, data_dir


def with_keys(config: PointConfig, work: Path) -> PointConfig:
    """For a CURVE run: a key pair for the server and one for its clients, made in work/keys."""
    if not config.curve:
        return config
    keys = work / "keys"
    security.keygen(keys, "server")
    client_public, _secret = security.keygen(keys, "client")
    (keys / "allow").mkdir()
    shutil.copy(client_public, keys / "allow" / client_public.name)
    return replace(config, keys_dir=keys)


class Run:
    """The setup and teardown a point and the master case share. Use as a context manager
    around the load: leaving it (also by an exception) stops the monitor and reaps every child.

    Made, in this order: the launcher's check against this host and the descriptor limits
    the clients need (msgprof.experiment.budget; both before anything is written),
    out_dir with an empty work dir and fresh queues, the run's CURVE keys, limits.json.
    """

    def __init__(self, config: PointConfig, out_dir: Path, peak_clients: int | None = None) -> None:
        launch.check(config.launcher, config.bind)
        config = budget.fit(config, peak_clients)
        self.out_dir = Path(out_dir)
        self.work, self.data_dir = fresh_dirs(config, self.out_dir)
        #: The run's settings, with its keys when it uses CURVE.
        self.config = with_keys(config, self.work)
        self.started = time.time()
        self.limits = sysinfo.limits(self.data_dir)
        atomic.write_json(self.out_dir / "limits.json", self.limits)
        #: What went wrong in the run as a whole (server_failed, deadline, ...).
        self.problems: list[str] = []
        self.procs = ChildProcesses()
        self.server = ServerRun(
            self.config, self.data_dir, self.work, self.out_dir / "server.log", self.procs
        )
        #: SIGTERM/SIGINT while the run's processes live (msgprof.experiment.stopping).
        self.interruption = Interruption(self.procs.stop_clients, self.procs.kill_all)

    def __enter__(self) -> Run:
        self.interruption.__enter__()
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            if self.server.monitor is not None:
                self.server.monitor.stop()
            self.procs.kill_all()
        finally:
            self.interruption.__exit__()

    def resources(self) -> pa.Table | None:
        """The server's resource samples (after the run), or None when it never got ready."""
        return self.server.monitor.table() if self.server.monitor else None

    def verify(
        self, rtt: pa.Table | None, client_ids: range | None = None
    ) -> dict[str, Any] | None:
        """Check what the server stored against the acknowledged rows (of `client_ids`,
        default all): its queue files read back (--verify file), a user's command (--verify
        command), or not at all (none: the counts unknown); None when msgprof's server stores
        nothing (--store none)."""
        how = self.config.verification
        if how == "file":
            return verify_queues(self.data_dir, rtt, self.config.payload_bytes,
                                 client_ids=client_ids)  # fmt: skip
        if how == "command":
            return foreign.verify_by_command(self.config.verify_command, self.data_dir, rtt)
        if self.config.server_command is None and self.config.store != "file":
            return None
        return foreign.not_verified("not verified (--verify none): msgprof reads back only its "
                                    "own queue files; --verify command checks another's")

    def clean_up(self) -> None:
        """Delete the queues (unless --keep-queues) and the work dir (the run's secret keys)."""
        if not self.config.keep_queues:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)
