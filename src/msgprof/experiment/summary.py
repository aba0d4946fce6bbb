"""point.json: what a point (or a master step) measured, its throughput and verdict, written
with its Parquet files and the server's stats. Every output is written atomically.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from msgprof import atomic, histlog
from msgprof.config import PointConfig
from msgprof.experiment import launch
from msgprof.experiment.clients import Load
from msgprof.experiment.offered import generator_behind, offered_summary
from msgprof.experiment.overload import descriptor_limit
from msgprof.experiment.verdict import Counts, reasons, verdict
from msgprof.stats import resource_summary


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
        return {
            "msgs_per_s": sum(rates),
            "window_s": max(windows, default=0.0),
            "window": "per_process",
        }
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


def planned(config: PointConfig, client_docs: list[dict[str, Any]]) -> int:
    """Messages the point was to send: clients × messages, or on a timed schedule what the
    processes' schedules held (the expected count for clients that never began theirs)."""
    if config.messages is not None:
        return config.clients * config.messages
    counted = sum(doc.get("messages_planned") or 0 for doc in client_docs)
    missing = config.clients - sum(doc.get("clients") or 0 for doc in client_docs)
    return counted + round(missing * config.messages_per_client(None))


def _counts(
    config: PointConfig, client_docs: list[dict[str, Any]], check: dict[str, Any] | None
) -> Counts:
    errors: Counter = Counter()
    for doc in client_docs:
        errors.update({kind: n for kind, n in doc.get("errors", {}).items() if n})
    return Counts(
        planned=planned(config, client_docs),
        generator_behind=generator_behind(client_docs) if config.paced else None,
        connected=sum(doc.get("connected", 0) for doc in client_docs),
        acked=sum(doc.get("acked", 0) for doc in client_docs),
        lost=check["lost"] if check else 0,
        duplicates=check["duplicates_stored"] if check else 0,
        corrupt=check["corrupt"] if check else 0,
        errors=dict(errors),
    )


def _server_summary(server: dict[str, Any]) -> dict[str, Any]:
    connections = server.get("connections", {})
    return {
        "peak_connections": connections.get("peak", 0),
        "accept_failed": connections.get("accept_failed", {}),
        "refused": connections.get("refused", 0),
        "max_connections": connections.get("max_connections"),
        "service_ns": server.get("service_ns", {}),
        "open_fds_at_stop": server.get("open_fds_at_stop"),
        "rlimit_nofile": server.get("rlimit_nofile"),
        "disk_bytes": server.get("disk_bytes"),
    }


def summarise(
    config: PointConfig,
    started: float,
    timings: dict[str, float],
    problems: list[str],
    server: dict[str, Any],
    client_docs: list[dict[str, Any]],
    check: dict[str, Any] | None,
) -> dict[str, Any]:
    """Build point.json: parameters, counts, errors by kind and a verdict naming the limit hit."""
    counts = _counts(config, client_docs, check)
    found = reasons(config, problems, server, counts)
    kind, detail = verdict(found)
    cpu = [doc.get("busiest_thread_utilization", 0.0) for doc in client_docs]
    return {
        "verdict": kind,
        "verdict_detail": detail,
        "verdicts": [k for k, _text in found],
        "clients": config.clients,
        "messages": config.messages,
        "planned": counts.planned,
        "connected": counts.connected,
        "sent": sum(doc.get("sent", 0) for doc in client_docs),
        "acked": counts.acked,
        "lost": counts.lost,
        "duplicates_stored": counts.duplicates,
        "corrupt": counts.corrupt,
        "stored_unacked": check["stored_unacked"] if check else 0,
        "verification": check or {},
        "errors": counts.errors,
        "server_rejected": server.get("rejected", {}),
        "client_processes": len(client_docs),
        "client_busiest_thread_max": max(cpu) if cpu else 0.0,
        "client_saturated": any(doc.get("saturated") for doc in client_docs),
        "server": _server_summary(server),
        "descriptor_limit": descriptor_limit(server, client_docs),
        "timings": timings,
        "started_unix_s": started,
        "ended_unix_s": time.time(),
        "parameters": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()
        },
        "client_processes_detail": client_docs,
    }


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
    if load.histograms:
        histlog.write_log(out_dir / "latency.hlog", load.histograms,
                          [f"msgprof point {out_dir.name}: all client processes"])  # fmt: skip
    if server_stats:
        atomic.write_json(out_dir / "server.json", server_stats)
    if resources is not None:
        atomic.write_parquet(out_dir / "resources.parquet", resources)
    document = summarise(config, started, timings, problems, server_stats, load.docs, check)
    launcher = launch.describe(config)
    shared_clock = launcher.get("shared_clock", True)
    rate = throughput(load.rtt, load.docs, shared_clock)
    document.update(
        {f"throughput_{k}" if k != "msgs_per_s" else "throughput_msgs_per_s": v
         for k, v in rate.items()}
    )  # fmt: skip
    document.update(offered_summary(config, load.rtt, load.docs, load.histograms, shared_clock))
    document["server"]["resources"] = resource_summary(resources)
    document["launcher"] = launcher
    document.update(extra or {})
    atomic.write_json(out_dir / "point.json", document)
    return document
