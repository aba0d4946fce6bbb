"""The load of a point or a master step: its client processes, run against the server, and what
they recorded.

The clients of a point are split into contiguous id ranges, one per process; process k plays
its range as `msgprof client` (work/client-k/, log out_dir/client-k.log), started where the
launcher says, and gets the point's deadline plus a grace before it is stopped. With start
all_connected the local processes share a start barrier (msgprof.load.barrier), so the point's
clients are all connected before any sends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from msgprof import histlog
from msgprof.commands import command_argv, profile_out_argv
from msgprof.config import ClientConfig, LoadOptions, PointConfig, shared
from msgprof.experiment import launch
from msgprof.experiment.lifecycle import ChildProcesses, msgprof_argv, read_json
from msgprof.experiment.offered import merge_logs
from msgprof.load.barrier import make_barrier

#: Seconds client processes get beyond their own deadline before they are stopped.
CLIENT_GRACE_S = 30.0


def split_ids(first: int, count: int, parts: int) -> list[tuple[int, int]]:
    """Split ids first..first+count-1 into `parts` contiguous inclusive ranges of near-equal
    size."""
    ranges = []
    start = first
    for k in range(parts):
        size = count // parts + (1 if k < count % parts else 0)
        if size:
            ranges.append((start, start + size - 1))
            start += size
    return ranges


def client_argv(config: PointConfig, endpoint: str, ids: tuple[int, int], out: Path,
                barrier: Path | None = None) -> list[str]:  # fmt: skip
    """`msgprof client` for ids lo..hi of this point: its load settings, the run's client keys,
    the point's start barrier."""
    keys = config.keys_dir
    curve = {} if keys is None else {"curve_secret": keys / "client.key_secret",
                                     "curve_server_key": keys / "server.key"}  # fmt: skip
    client = ClientConfig(
        endpoint, range(ids[0], ids[1] + 1), config.messages, **shared(LoadOptions, config),
        **curve, start_barrier=barrier,
    )  # fmt: skip
    return msgprof_argv(command_argv("client", client, out=out))


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
    barrier = None  # all_connected: every process of the point connects before any sends
    if config.start == "all_connected" and len(ranges) > 1 and config.launcher == "local":
        barrier = make_barrier(work / "start-barrier", len(ranges))
    started = []
    for k, ids in enumerate(ranges):
        if procs.stopping:  # the run was asked to stop: start nothing more
            break
        argv = client_argv(config, endpoint, ids, work / f"client-{k}", barrier)
        if config.profile_clients:
            argv += profile_out_argv(config, out_dir / "profile" / f"client-{k}")
        argv = launch.client_argv(config, k, len(ranges), argv)
        started.append(procs.start(f"client-{k}", argv, out_dir / f"client-{k}.log"))
    deadline = time.monotonic() + config.deadline_s + CLIENT_GRACE_S
    for proc in started:
        code = procs.wait(proc, deadline)
        if code is None:
            problems.append("deadline")
            procs.stop(proc, launch.stop_grace_s(config.launcher))
        elif code != 0:
            problems.append("client_failed")
    return len(started)


def read_client_docs(work: Path, processes: int) -> list[dict[str, Any]]:
    """client.json of each client process (an empty dict for one that wrote none)."""
    return [read_json(work / f"client-{k}" / "client.json") for k in range(processes)]


def _concat_parquet(paths: list[Path]) -> pa.Table | None:
    tables = [pq.read_table(p) for p in paths if p.exists()]
    return pa.concat_tables(tables) if tables else None


@dataclass
class Load:
    """What the client processes of one point or step recorded."""

    docs: list[dict[str, Any]]
    rtt: pa.Table | None
    clients: pa.Table | None
    #: The processes' latency interval logs, merged (msgprof.experiment.offered).
    histograms: list[histlog.Interval]


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
        histograms=merge_logs(sorted(work.glob("client-*/latency.hlog"))),
    )
