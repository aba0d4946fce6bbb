"""`run_clients`: the entry point of ``msgprof client``, from a ClientConfig to the outputs.

It plans capacity before the first socket, plays the loop with the garbage collector frozen,
times the run (wall, process and per-thread CPU, so a saturated generator is flagged) and hands
what the loop recorded to the output writer. Named after the command it serves.
"""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import zmq

from msgprof import limits
from msgprof.config import ClientConfig
from msgprof.load import solo
from msgprof.load.capacity import plan_capacity
from msgprof.load.loop import Loop, Stop
from msgprof.load.outputs import write_outputs
from msgprof.load.pacing import PacedLoop


def progress_line(counts: dict[str, int]) -> str:
    """A client process's progress as its log shows it."""
    return (f"connected {counts['connected']}/{counts['clients']} "
            f"acked {counts['acked']}/{counts['planned']} errors {counts['errors']}")  # fmt: skip


def run_clients(
    config: ClientConfig,
    out_dir: Path,
    progress: Callable[[dict[str, int]], None] | None = None,
    stop: Stop | None = None,
) -> dict[str, Any]:
    """Play all clients of `config`, write rtt.parquet, clients.parquet and client.json.

    `stop` (e.g. a threading.Event): once set, the run ends within `loop.STOP_POLL_NS` as it
    does at the deadline (messages in flight are TIMEOUT, the rest not sent) and the outputs
    are written; ``stopped`` in client.json says so.

    Each output is written to a temporary name in `out_dir` and renamed, client.json last; their
    columns and keys are told in `msgprof.load.outputs`. Returns the client.json dict. Raises
    CapacityError before any socket is made when the clients cannot fit this process's
    descriptor or socket limits. What a reply does to a client (go on or stop) is in the
    package docstring (`msgprof.load`). `progress` gets the counts (connected, clients, acked,
    planned, errors) at most once a second and a last time at the end.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rlimit = limits.raise_nofile(config.client_rlimit_nofile)
    ctx = zmq.Context(io_threads=1)
    try:
        capacity = plan_capacity(
            len(config.client_ids),
            config.connect_window,
            config.max_sockets,
            limits.open_fds(),
            rlimit,
            ctx.get(zmq.SOCKET_LIMIT),
            keep_monitors=config.resend,
        )
        ctx.set(zmq.MAX_SOCKETS, capacity.max_sockets)  # before the first socket
        kind = Loop if config.rate is None else PacedLoop
        loop = kind(config, ctx, capacity, progress)
        if loop.solo and not config.resend:
            solo.path(loop)  # builds or loads the compiled loop before the run's clock starts
        try:
            usage = _timed_run(loop, config.deadline_s, stop)
        finally:
            loop.close()
    finally:
        ctx.destroy(linger=0)  # closes whatever an exception left open; never blocks
    return write_outputs(config, out_dir, loop, capacity, usage)


def _timed_run(loop: Loop, deadline_s: float, stop: Stop | None) -> dict[str, float]:
    """Run `loop` with the garbage collector off; return its wall and CPU time.

    A collection pass over thousands of clients' state would stall every client at once and
    show up as an RTT spike that is the generator's, not the server's.
    """
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        threads0 = _thread_cpu_s()
        thread0 = time.thread_time_ns()
        loop.run(t0 + int(deadline_s * 1e9), stop)
        thread_s = (time.thread_time_ns() - thread0) / 1e9
        threads1 = _thread_cpu_s()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        wall_s = (time.perf_counter_ns() - t0) / 1e9
    finally:
        if gc_was_enabled:
            gc.enable()
        gc.unfreeze()
    return {
        "wall_s": wall_s,
        "cpu_user_s": ru1.ru_utime - ru0.ru_utime,
        "cpu_system_s": ru1.ru_stime - ru0.ru_stime,
        "loop_cpu_s": thread_s,
        "busiest_thread_cpu_s": max(
            (cpu - threads0.get(tid, 0.0) for tid, cpu in threads1.items()), default=thread_s
        ),
    }


def _thread_cpu_s() -> dict[int, float]:
    """CPU seconds used so far by each thread of this process (the loop, libzmq's I/O thread)."""
    try:
        return {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}
    except psutil.Error:
        return {}
