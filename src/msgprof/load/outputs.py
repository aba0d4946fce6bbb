"""The outputs of one client process, made from what the loop recorded once it has ended.

rtt.parquet, one row per message sent, sorted by client_id, seq: ``client_id`` u32,
``seq`` u64, ``payload_bytes`` u32, ``rtt_ns`` i64 (from the actual send to the reply that
settled the message, whatever its status; -1 for TIMEOUT), ``status`` (a protocol status name,
TIMEOUT, MISMATCH or INVALID_ACK), ``t_send_ns`` i64 (perf_counter_ns at send, as in the
header), ``intended_ns`` i64 (the scheduled send; in a closed loop the actual one),
``latency_ns`` i64 (from the intended send to the reply: the corrected latency; -1 for
TIMEOUT), ``lag_ns`` i64 (actual − intended send), ``warmup`` bool (left out of every summary)
and ``window_wait_ns`` i64 (the part of the lag spent waiting for room in the client's full
in-flight window: the server's backpressure; the rest is the generator's own delay), as
`msgprof.load.latency` defines them.

latency.hlog: the HdrHistogram interval log of the process (msgprof.histlog).

clients.parquet, one row per client id in the order given: ``client_id``, ``connected``,
``connect_ns``, ``first_ack_ns`` (-1: never), ``sent``, ``acked`` (OK), ``duplicates``,
``errors`` (every other status, timeouts and mismatches included), ``timeouts``,
``rtt_median_ns``/``rtt_p90_ns``/``rtt_p99_ns``/``rtt_max_ns`` (exact, by the project's one
quantile rule, `msgprof.stats`: always a measured sample, never an interpolation; over the
client's OK and DUPLICATE samples; -1 if none), ``t_connect_ns`` and ``t_end_ns``
(perf_counter_ns at connect() and when its last message was settled; -1 if never), from which
the span in which all clients were active can be found across processes, ``resends`` (copies of
a message sent again in resend mode; 0 otherwise), ``source_address`` (the loopback address the
client connected from, msgprof.load.sockets; null: the kernel's choice).

client.json sums the run up, with, for resend mode: ``resends`` (total), ``disconnects`` and
``reconnects`` (connections lost and made again, as the socket monitors saw them; 0 when not
resending) and ``stale_replies`` (answers to earlier copies of a message already settled,
skipped). Its keys are always the same, in the same order, so runs aggregate alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zmq

from msgprof import atomic
from msgprof.client_ids import format_client_ids
from msgprof.config import ClientConfig
from msgprof.load.capacity import Capacity
from msgprof.load.latency import Schedule, schedule, schedule_summary, write_histograms
from msgprof.load.loop import Loop
from msgprof.load.rows import Rows
from msgprof.load.statuses import DUPLICATE, ERROR_KINDS, OK, STATUS_NAMES, TIMEOUT
from msgprof.stats import grouped_quantiles


class _Recorded(NamedTuple):
    """The loop's rows as numpy views (no copies), `index` widened to index with."""

    index: np.ndarray  # position of the client in config.client_ids
    seq: np.ndarray
    t_send: np.ndarray
    rtt: np.ndarray
    code: np.ndarray
    intended: np.ndarray | None  # a paced loop's scheduled sends
    window_wait: np.ndarray | None


class _Counts(NamedTuple):
    """Messages per client, by how they were settled."""

    sent: np.ndarray
    acked: np.ndarray
    duplicates: np.ndarray
    timeouts: np.ndarray


def write_outputs(
    config: ClientConfig, out_dir: Path, loop: Loop, capacity: Capacity, usage: dict[str, float]
) -> dict[str, Any]:
    """Write rtt.parquet, clients.parquet and client.json (last) to `out_dir`; return the last.

    `usage` is the run's wall and CPU time (wall_s, cpu_user_s, cpu_system_s, loop_cpu_s,
    busiest_thread_cpu_s). Each file is written to a temporary name and renamed, so a reader
    that finds client.json finds the other two complete.
    """
    rec = _recorded(loop.rows, loop.seq_base)
    counts = _counts(rec, loop.n)
    ids = np.asarray(loop.ids, dtype=np.uint32)
    sched = schedule(
        rec.index, rec.t_send, rec.rtt, rec.intended, rec.window_wait, loop.n, config.warmup_s
    )
    summary = {
        **_played(config, loop, rec, counts),
        **_timing(loop, counts, usage["wall_s"]),
        **schedule_summary(config, rec.code, rec.index, rec.t_send, rec.rtt, sched, loop.n),
        **_cpu(usage),
        **_limits(config, loop, capacity),
    }
    summary["histogram_clamped"] = write_histograms(
        out_dir / "latency.hlog", rec.code, rec.t_send, rec.rtt, sched,
        f"msgprof client {format_client_ids(loop.ids)} pid {os.getpid()}",
    )  # fmt: skip
    table = _rtt_table(rec, sched, ids, config.payload_bytes)
    atomic.write_parquet(out_dir / "rtt.parquet", table)
    atomic.write_parquet(out_dir / "clients.parquet", _clients_table(rec, counts, ids, loop))
    atomic.write_json(out_dir / "client.json", summary)
    return summary


def _recorded(rows: Rows, seq_base: int = 0) -> _Recorded:
    """The loop's rows as arrays, each seq as on the wire (the loop counts from 1)."""
    intended = getattr(rows, "intended", None)
    window_wait = getattr(rows, "window_wait", None)
    return _Recorded(
        index=np.frombuffer(rows.index, dtype=np.uint32).astype(np.intp),
        seq=np.frombuffer(rows.seq, dtype=np.uint64) + np.uint64(seq_base),
        t_send=np.frombuffer(rows.t_send, dtype=np.int64),
        rtt=np.frombuffer(rows.rtt, dtype=np.int64),
        code=np.frombuffer(rows.code, dtype=np.int8),
        intended=None if intended is None else np.frombuffer(intended, dtype=np.int64),
        window_wait=None if window_wait is None else np.frombuffer(window_wait, dtype=np.int64),
    )


def _counts(rec: _Recorded, n: int) -> _Counts:
    def per_client(mask: np.ndarray) -> np.ndarray:
        return np.bincount(rec.index[mask], minlength=n).astype(np.int64)

    code = rec.code
    return _Counts(
        sent=per_client(np.ones(len(code), dtype=bool)),
        acked=per_client(code == OK),
        duplicates=per_client(code == DUPLICATE),
        timeouts=per_client(code == TIMEOUT),
    )


def _rtt_table(rec: _Recorded, sched: Schedule, ids: np.ndarray, payload_bytes: int) -> pa.Table:
    client_id = ids[rec.index]
    order = np.lexsort((rec.seq, client_id))
    names = pa.array(STATUS_NAMES, type=pa.string())
    return pa.table(
        {
            "client_id": pa.array(client_id[order], type=pa.uint32()),
            "seq": pa.array(rec.seq[order], type=pa.uint64()),
            "payload_bytes": pa.array(
                np.full(len(order), payload_bytes, dtype=np.uint32), type=pa.uint32()
            ),
            "rtt_ns": pa.array(rec.rtt[order], type=pa.int64()),
            "status": pc.take(names, pa.array(rec.code[order], type=pa.int8())),
            "t_send_ns": pa.array(rec.t_send[order], type=pa.int64()),
            "intended_ns": pa.array(sched.intended[order], type=pa.int64()),
            "latency_ns": pa.array(sched.latency[order], type=pa.int64()),
            "lag_ns": pa.array(sched.lag[order], type=pa.int64()),
            "warmup": pa.array(sched.warmup[order], type=pa.bool_()),
            "window_wait_ns": pa.array(sched.window_wait[order], type=pa.int64()),
        }
    )


def _clients_table(rec: _Recorded, counts: _Counts, ids: np.ndarray, loop: Loop) -> pa.Table:
    good = rec.code <= DUPLICATE  # OK and DUPLICATE: the message is stored
    q50, q90, q99, q100 = grouped_quantiles(
        rec.index[good], rec.rtt[good], loop.n, (0.5, 0.9, 0.99, 1.0), missing=-1
    )
    return pa.table(
        {
            "client_id": pa.array(ids, type=pa.uint32()),
            "connected": pa.array(np.asarray(loop.connected, dtype=bool), type=pa.bool_()),
            "connect_ns": pa.array(loop.connect_ns, type=pa.int64()),
            "first_ack_ns": pa.array(loop.first_ack_ns, type=pa.int64()),
            "sent": counts.sent,
            "acked": counts.acked,
            "duplicates": counts.duplicates,
            "errors": counts.sent - counts.acked - counts.duplicates,
            "timeouts": counts.timeouts,
            "rtt_median_ns": q50,
            "rtt_p90_ns": q90,
            "rtt_p99_ns": q99,
            "rtt_max_ns": q100,
            "t_connect_ns": np.asarray(loop.t_connect, dtype=np.int64),
            "t_end_ns": np.asarray(loop.t_end, dtype=np.int64),
            "resends": np.asarray(loop.resends, dtype=np.int64),
            "source_address": pa.array(loop.sources, type=pa.string()),
        }
    )


def _played(config: ClientConfig, loop: Loop, rec: _Recorded, counts: _Counts) -> dict[str, Any]:
    """What was planned, sent and settled, and how the run ended."""
    code = rec.code
    errors = dict.fromkeys(ERROR_KINDS, 0)
    for c, count in enumerate(np.bincount(code.astype(np.intp), minlength=len(STATUS_NAMES))):
        if c not in (OK, DUPLICATE):
            errors[STATUS_NAMES[c]] = int(count)
    planned = len(code) + loop.unsent()
    errors["not_connected"] = loop.n_not_connected
    errors["not_sent"] = planned - len(code)
    return {
        "endpoint": config.endpoint,
        "client_ids": format_client_ids(loop.ids),
        "clients": loop.n,
        "connected": loop.n_connected,
        "refused": loop.n_refused,
        "messages_per_client": config.messages,
        "payload_bytes": config.payload_bytes,
        "messages_planned": planned,
        "sent": len(code),
        "acked": int(counts.acked.sum()),
        "duplicates": int(counts.duplicates.sum()),
        "errors": errors,
        "deadline_hit": loop.deadline_hit,
        "stopped": loop.stopped,
        "resend": config.resend,
        "curve": config.curve_secret is not None,
        "resends": int(sum(loop.resends)),
        "reconnects": loop.reconnects,
        "disconnects": loop.disconnects,
        "stale_replies": loop.stale_replies,
        "start": config.start,
        "released_ns": loop.released_at if loop.released_at >= 0 else None,
    }


def _timing(loop: Loop, counts: _Counts, wall_s: float) -> dict[str, Any]:
    """The throughput window and the span in which all clients were active."""
    # All clients active: from the last client's connect to the first client's last reply.
    active = counts.sent > 0
    t_connect = np.asarray(loop.t_connect, dtype=np.int64)
    t_end = np.asarray(loop.t_end, dtype=np.int64)
    all_start = int(t_connect[active].max()) if active.any() else None
    all_end = int(t_end[active].min()) if active.any() else None
    if all_start is not None and all_end <= all_start:
        all_start = all_end = None
    window = (loop.last_reply - loop.first_send) / 1e9 if loop.first_send >= 0 else 0.0
    acked = int(counts.acked.sum())
    return {
        "wall_s": wall_s,
        "window_start_ns": loop.first_send if loop.first_send >= 0 else None,
        "window_end_ns": loop.last_reply if loop.last_reply >= 0 else None,
        "acked_per_s": acked / window if window > 0 else None,
        "all_active_start_ns": all_start,
        "all_active_end_ns": all_end,
        "clock": "time.perf_counter_ns (CLOCK_MONOTONIC on Linux, shared by the host)",
    }


def _cpu(usage: dict[str, float]) -> dict[str, Any]:
    """The generator's own CPU use, and whether it may have been the bottleneck."""
    wall_s = usage["wall_s"]
    cpu_s = usage["cpu_user_s"] + usage["cpu_system_s"]
    busiest = usage["busiest_thread_cpu_s"] / wall_s if wall_s > 0 else 0.0
    return {
        "cpu_user_s": usage["cpu_user_s"],
        "cpu_system_s": usage["cpu_system_s"],
        "cpu_utilization": cpu_s / wall_s if wall_s > 0 else 0.0,
        "loop_cpu_s": usage["loop_cpu_s"],
        "loop_cpu_utilization": usage["loop_cpu_s"] / wall_s if wall_s > 0 else 0.0,
        "busiest_thread_utilization": busiest,
        # A thread (the loop or libzmq's I/O thread) busy > 90% of the time cannot go faster.
        # Process CPU / wall is no such sign: two threads at 60% each add up to 1.2.
        "saturated": busiest > 0.9,
    }


def _limits(config: ClientConfig, loop: Loop, capacity: Capacity) -> dict[str, Any]:
    """The timeouts, the capacity plan and the versions the run had."""
    return {
        "timeout_s": config.timeout_s,
        "connect_timeout_s": config.connect_timeout_s,
        "deadline_s": config.deadline_s,
        "event_loop": loop.waiter.name,
        # a process of one closed-loop client: its loop compiled ('native') or in Python; else None
        "solo_loop": loop.solo_path,
        "connect_window": capacity.connect_window,
        "max_sockets": capacity.max_sockets,
        "fds_needed": capacity.fds_needed,
        "socket_retries": loop.socket_retries,
        # the point's other client processes were not all connected within the connect timeout
        "start_barrier_timed_out": bool(loop.barrier and loop.barrier.timed_out),
        "rlimit_nofile": capacity.rlimit_nofile,
        "rlimit_nofile_hard": capacity.rlimit_nofile_hard,
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "pid": os.getpid(),
    }
