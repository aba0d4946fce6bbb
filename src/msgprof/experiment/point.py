"""One sweep point end to end: server, client processes, shutdown, verification, verdict.

A point that hits a limit (descriptors, disk, timeouts) is a result, not a crash: it ends with a
verdict in point.json that names the limit. Every output is written atomically.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from msgprof import atomic
from msgprof.config import (
    ClientConfig,
    LoadOptions,
    PointConfig,
    ServerConfig,
    ServerOptions,
    command_argv,
    shared,
)
from msgprof.experiment import launch, sysinfo
from msgprof.experiment.monitor import ResourceMonitor
from msgprof.experiment.verify import verify_queues
from msgprof.stats import resource_summary
from msgprof.wire import security

log = logging.getLogger("msgprof.point")

#: Seconds the server gets to bind and write its ready file.
SERVER_START_TIMEOUT_S = 60.0
#: Seconds the server gets to flush and exit after SIGTERM before it is killed.
SERVER_STOP_TIMEOUT_S = 120.0
#: Seconds client processes get beyond their own deadline before they are killed.
CLIENT_GRACE_S = 30.0


def split_ids(first: int, count: int, parts: int) -> list[tuple[int, int]]:
    """Split ids first..first+count-1 into `parts` contiguous inclusive ranges of near-equal size."""
    ranges = []
    start = first
    for k in range(parts):
        size = count // parts + (1 if k < count % parts else 0)
        if size:
            ranges.append((start, start + size - 1))
            start += size
    return ranges


class ChildProcesses:
    """Child processes of a point, each with its log file; all are reaped on exit."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._logs: list[Any] = []

    def start(self, name: str, argv: list[str], log_path: Path) -> subprocess.Popen:
        log_file = open(log_path, "wb")
        self._logs.append(log_file)
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def kill_all(self) -> None:
        for _name, proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for name, proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # stuck in the kernel (D state): say so, go on
                log.error("%s (pid %d) did not exit 10 s after SIGKILL", name, proc.pid)
        for f in self._logs:
            f.close()


def _msgprof() -> list[str]:
    return [sys.executable, "-m", "msgprof"]


def wait_ready(ready_file: Path, server: subprocess.Popen, timeout_s: float) -> str | None:
    """The endpoint from the ready file, or None when the server died or never got ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready_file.exists():
            return ready_file.read_text().splitlines()[0]
        if server.poll() is not None:
            return None
        time.sleep(0.02)
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_client_docs(work: Path, processes: int) -> list[dict[str, Any]]:
    """client.json of each client process (an empty dict for one that wrote none)."""
    return [_read_json(work / f"client-{k}" / "client.json") for k in range(processes)]


def load_window(client_docs: list[dict[str, Any]]) -> tuple[int, float]:
    """(acked, seconds) over the window from the first send to the last ack of any process.

    All processes stamp the window with CLOCK_MONOTONIC, which is shared on one host.
    """
    windows = [
        (doc["window_start_ns"], doc["window_end_ns"])
        for doc in client_docs
        if doc.get("window_start_ns") and doc.get("window_end_ns")
    ]
    acked = sum(doc.get("acked", 0) for doc in client_docs)
    if not windows:
        return acked, 0.0
    return acked, (max(w[1] for w in windows) - min(w[0] for w in windows)) / 1e9


def throughput(
    rtt: pa.Table | None, client_docs: list[dict[str, Any]], shared_clock: bool = True
) -> dict[str, Any]:
    """Acknowledged messages per second while all clients of the point were active.

    The window runs from the last client's start to the first client's last reply, over all
    processes (CLOCK_MONOTONIC is shared on a host). When clients never overlapped (few
    messages each), the whole load window (first send to last ack) is used and named so.
    Client processes on other hosts share no clock: their own rates (acks over their own load
    window) are added up instead, window "per_process".
    """
    if not shared_clock:
        rates = [doc.get("acked_per_s") or 0.0 for doc in client_docs]
        windows = [
            (doc["window_end_ns"] - doc["window_start_ns"]) / 1e9
            for doc in client_docs
            if doc.get("window_start_ns") and doc.get("window_end_ns")
        ]
        return {"msgs_per_s": sum(rates), "window_s": max(windows, default=0.0), "window": "per_process"}
    starts = [d.get("all_active_start_ns") for d in client_docs]
    ends = [d.get("all_active_end_ns") for d in client_docs]
    if rtt is not None and rtt.num_rows and all(starts) and all(ends) and starts:
        lo, hi = max(starts), min(ends)
        if hi > lo:
            ok = rtt.filter(pc.equal(rtt["status"], "OK"))
            acked_at = pc.add(ok["t_send_ns"], ok["rtt_ns"])
            inside = pc.and_(pc.greater_equal(acked_at, lo), pc.less_equal(acked_at, hi))
            count = pc.sum(inside.cast(pa.int64())).as_py() or 0
            window_s = (hi - lo) / 1e9
            return {"msgs_per_s": count / window_s, "window_s": window_s, "window": "all_active"}
    acked, window_s = load_window(client_docs)
    return {
        "msgs_per_s": acked / window_s if window_s > 0 else 0.0,
        "window_s": window_s,
        "window": "load",
    }


def _concat_parquet(paths: list[Path]) -> pa.Table | None:
    tables = [pq.read_table(p) for p in paths if p.exists()]
    return pa.concat_tables(tables) if tables else None


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
        argv = server_argv(self.config, self.data_dir, self.work)
        self.process = self.procs.start("server", argv, self.log_path)
        self.endpoint = wait_ready(self.work / "ready", self.process, SERVER_START_TIMEOUT_S)
        if self.endpoint is not None:
            self.monitor = ResourceMonitor(self.process.pid, self.data_dir).start()
        return self.endpoint

    def snapshot(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """The running server's stats now (SIGUSR1), or {} if it does not answer in time."""
        if self.process is None or self.process.poll() is not None:
            return {}
        self._snapshots += 1
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stats = _read_json(self.stats_path)
            if stats.get("snapshot", 0) >= self._snapshots:
                return stats
            time.sleep(0.02)
        return {}

    def stop(self, problems: list[str]) -> dict[str, Any]:
        """SIGTERM, wait with a bound (then kill), stop the monitor; the final stats or {}."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                if self.process.wait(timeout=SERVER_STOP_TIMEOUT_S) != 0:
                    problems.append("server_failed")
            except subprocess.TimeoutExpired:
                problems.append("server_hung")
                self.process.kill()
        elif self.process is not None and self.process.returncode not in (0, None):
            problems.append("server_failed")
        if self.monitor is not None:
            self.monitor.stop()
        stats = _read_json(self.stats_path)
        return stats if stats.get("final") else {}


@dataclass
class Load:
    """What the client processes of one point or step recorded."""

    docs: list[dict[str, Any]]
    rtt: pa.Table | None
    clients: pa.Table | None


def run_load(
    config: PointConfig,
    endpoint: str,
    work: Path,
    log_dir: Path,
    procs: ChildProcesses,
    problems: list[str],
) -> Load:
    """Run the clients of `config` against `endpoint` and gather their outputs."""
    started = run_client_processes(config, endpoint, work, log_dir, procs, problems)
    return Load(
        docs=read_client_docs(work, started),
        rtt=_concat_parquet(sorted(work.glob("client-*/rtt.parquet"))),
        clients=_concat_parquet(sorted(work.glob("client-*/clients.parquet"))),
    )


def fresh_dirs(config: PointConfig, out_dir: Path) -> tuple[Path, Path]:
    """Create out_dir, an empty work dir in it, and the data dir; return (work, data_dir).
    First the launcher is checked against this host, so a run that cannot start writes nothing."""
    launch.check(config.launcher, config.bind)
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


def write_point(
    out_dir: Path,
    config: PointConfig,
    load: Load,
    server_stats: dict[str, Any],
    resources: pa.Table | None,
    check: dict[str, Any] | None,
    problems: list[str],
    timings: dict[str, float],
    started: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a point's (or a step's) outputs atomically; return its point.json document."""
    if load.rtt is not None:
        atomic.write_parquet(out_dir / "rtt.parquet", load.rtt)
    if load.clients is not None:
        atomic.write_parquet(out_dir / "clients.parquet", load.clients)
    if server_stats:
        atomic.write_json(out_dir / "server.json", server_stats)
    if resources is not None:
        atomic.write_parquet(out_dir / "resources.parquet", resources)
    document = _summarise(config, started, timings, problems, server_stats, load.docs, check)
    launcher = launch.describe(config)
    rate = throughput(load.rtt, load.docs, launcher.get("shared_clock", True))
    document.update(
        {f"throughput_{k}" if k != "msgs_per_s" else "throughput_msgs_per_s": v
         for k, v in rate.items()}
    )  # fmt: skip
    document["server"]["resources"] = resource_summary(resources)
    document["launcher"] = launcher
    document.update(extra or {})
    atomic.write_json(out_dir / "point.json", document)
    return document


def run_point(config: PointConfig, out_dir: Path) -> dict[str, Any]:
    """Run the point, write its outputs to `out_dir`, return the point.json document."""
    out_dir = Path(out_dir)
    work, data_dir = fresh_dirs(config, out_dir)
    config = with_keys(config, work)
    started = time.time()
    limits = sysinfo.limits(data_dir)
    atomic.write_json(out_dir / "limits.json", limits)
    timings: dict[str, float] = {}
    problems: list[str] = []
    procs = ChildProcesses()
    server = ServerRun(config, data_dir, work, out_dir / "server.log", procs)
    load = Load([], None, None)
    server_stats: dict[str, Any] = {}
    try:
        t0 = time.monotonic()
        endpoint = server.start()
        timings["server_start_s"] = time.monotonic() - t0
        if endpoint is None:
            problems.append("server_failed")
        else:
            log.info("server ready at %s (%.2f s)", endpoint, timings["server_start_s"])
            t1 = time.monotonic()
            load = run_load(config, endpoint, work, out_dir, procs, problems)
            timings["clients_wall_s"] = time.monotonic() - t1
        t2 = time.monotonic()
        server_stats = server.stop(problems)
        timings["server_stop_s"] = time.monotonic() - t2
    finally:
        if server.monitor is not None:
            server.monitor.stop()
        procs.kill_all()

    t3 = time.monotonic()
    check = verify_queues(data_dir, load.rtt, config.payload_bytes) if config.store == "file" else None
    timings["verify_s"] = time.monotonic() - t3
    resources = server.monitor.table() if server.monitor else None
    if server_stats.get("rlimit_nofile"):  # the server may run with a lower limit than we do
        limits["server_rlimit_nofile_soft"] = server_stats["rlimit_nofile"]["soft"]
        atomic.write_json(out_dir / "limits.json", limits)
    document = write_point(
        out_dir, config, load, server_stats, resources, check, problems, timings, started
    )
    if not config.keep_queues:
        shutil.rmtree(data_dir, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    log.info(
        "point %d clients x %d messages: verdict %s, acked %d, lost %d",
        config.clients,
        config.messages,
        document["verdict"],
        document["acked"],
        document["lost"],
    )
    return document


def server_argv(config: PointConfig, data_dir: Path, work: Path) -> list[str]:
    """`msgprof server` for this point: ready file and stats in `work`, queues in `data_dir`."""
    keys = config.keys_dir
    curve = {} if keys is None else {"curve_secret": keys / "server.key_secret",
                                     "curve_allow": keys / "allow"}  # fmt: skip
    server = ServerConfig(
        **shared(ServerOptions, config),
        data_dir=data_dir,
        ready_file=work / "ready",
        stats_out=work / "server.json",
        bind=launch.placement(config).bind,
        **curve,
    )
    return _msgprof() + command_argv("server", server)


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


def run_client_processes(
    config: PointConfig,
    endpoint: str,
    work: Path,
    out_dir: Path,
    procs: ChildProcesses,
    problems: list[str],
) -> int:
    """Start the client processes, wait for them with a bound; return how many were started.

    Process k writes to work/client-k/ and logs to out_dir/client-k.log.
    """
    ranges = split_ids(config.first_client_id, config.clients, launch.client_processes(config))
    keys = config.keys_dir
    curve = {} if keys is None else {"curve_secret": keys / "client.key_secret",
                                     "curve_server_key": keys / "server.key"}  # fmt: skip
    started = []
    for k, (lo, hi) in enumerate(ranges):
        client = ClientConfig(
            endpoint, range(lo, hi + 1), config.messages, **shared(LoadOptions, config), **curve
        )
        argv = _msgprof() + command_argv("client", client, out=work / f"client-{k}")
        argv = launch.client_argv(config, k, len(ranges), argv)
        started.append(procs.start(f"client-{k}", argv, out_dir / f"client-{k}.log"))
    deadline = time.monotonic() + config.deadline_s + CLIENT_GRACE_S
    for proc in started:
        try:
            code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            if code != 0:
                problems.append("client_failed")
        except subprocess.TimeoutExpired:
            problems.append("deadline")
            launch.stop(proc, config.launcher)
    return len(started)


def _summarise(
    config: PointConfig,
    started: float,
    timings: dict[str, float],
    problems: list[str],
    server: dict[str, Any],
    client_docs: list[dict[str, Any]],
    check: dict[str, Any] | None,
) -> dict[str, Any]:
    """Build point.json: parameters, counts, errors by kind and a verdict naming the limit hit."""
    from collections import Counter

    errors: Counter = Counter()
    for doc in client_docs:
        errors.update({kind: n for kind, n in doc.get("errors", {}).items() if n})
    sent = sum(doc.get("sent", 0) for doc in client_docs)
    connected = sum(doc.get("connected", 0) for doc in client_docs)
    acked = sum(doc.get("acked", 0) for doc in client_docs)
    connections = server.get("connections", {})
    accept_failed = connections.get("accept_failed", {})
    refused = connections.get("refused", 0)
    server_replies = server.get("replies", {})
    lost = check["lost"] if check else 0
    duplicates = check["duplicates_stored"] if check else 0
    corrupt = check["corrupt"] if check else 0
    planned = config.clients * config.messages

    verdict, detail = "ok", "all clients connected, every message acknowledged and stored once"
    reasons = []
    if "server_failed" in problems or (not server and config.store == "file"):
        reasons.append(("server_failed", "the server did not start or did not exit cleanly"))
    if "server_hung" in problems:
        reasons.append(("server_hung", "the server did not stop within its bound after SIGTERM"))
    if accept_failed or refused:
        reasons.append(
            (
                "descriptor_limit",
                f"the server ran out of descriptors for connections (soft RLIMIT_NOFILE "
                f"{server.get('rlimit_nofile', {}).get('soft')}, at most "
                f"{connections.get('max_connections')} connections): {refused} connections "
                f"refused, accept failures {accept_failed or 'none'}",
            )
        )
    if server_replies.get("STORAGE_FULL"):
        reasons.append(("storage_full", f"{server_replies['STORAGE_FULL']} STORAGE_FULL replies"))
    if server_replies.get("STORAGE_ERROR"):
        reasons.append(("storage_error", f"{server_replies['STORAGE_ERROR']} STORAGE_ERROR replies"))
    if lost or duplicates or corrupt:
        reasons.append(
            ("data_loss", f"lost {lost}, stored twice {duplicates}, corrupt {corrupt} acknowledged messages")
        )
    if connected < config.clients:
        reasons.append(("not_connected", f"{config.clients - connected} of {config.clients} clients never connected"))
    if "deadline" in problems:
        reasons.append(("deadline", f"clients did not finish within {config.deadline_s} s"))
    if errors.get("TIMEOUT"):
        reasons.append(("timeouts", f"{errors['TIMEOUT']} acks did not come within {config.timeout_s} s"))
    if "client_failed" in problems:
        reasons.append(("client_failed", "a client process exited with an error (see client-*.log)"))
    if acked < planned and not reasons:
        reasons.append(("incomplete", f"{acked} of {planned} messages acknowledged"))
    if reasons:
        verdict = reasons[0][0]
        detail = "; ".join(text for _kind, text in reasons)

    cpu = [doc.get("busiest_thread_utilization", 0.0) for doc in client_docs]
    return {
        "verdict": verdict,
        "verdict_detail": detail,
        "verdicts": [kind for kind, _text in reasons],
        "clients": config.clients,
        "messages": config.messages,
        "planned": planned,
        "connected": connected,
        "sent": sent,
        "acked": acked,
        "lost": lost,
        "duplicates_stored": duplicates,
        "corrupt": corrupt,
        "stored_unacked": check["stored_unacked"] if check else 0,
        "verification": check or {},
        "errors": dict(errors),
        "server_rejected": server.get("rejected", {}),
        "client_processes": len(client_docs),
        "client_busiest_thread_max": max(cpu) if cpu else 0.0,
        "client_saturated": any(doc.get("saturated") for doc in client_docs),
        "server": {
            "peak_connections": server.get("connections", {}).get("peak", 0),
            "accept_failed": accept_failed,
            "refused": refused,
            "max_connections": connections.get("max_connections"),
            "service_ns": server.get("service_ns", {}),
            "open_fds_at_stop": server.get("open_fds_at_stop"),
            "rlimit_nofile": server.get("rlimit_nofile"),
            "disk_bytes": server.get("disk_bytes"),
        },
        "timings": timings,
        "started_unix_s": started,
        "ended_unix_s": time.time(),
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "client_processes_detail": client_docs,
    }
