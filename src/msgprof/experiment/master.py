"""The seed's master test case: one long-lived server, clients ramped up, then down again.

Each step brings new clients (ids keep growing across steps) that send their messages; the
ramp-up grows clients and messages, the ramp-down repeats the steps in reverse order against
the same server, so it shows what the ramp-up left behind: queue files, memory, descriptors.
Every step is recorded like a point (its own directory with point.json and Parquet files);
`master.json` ties them together.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from msgprof import atomic
from msgprof.config import PointConfig
from msgprof.experiment import netstat
from msgprof.experiment.clients import Load, run_load
from msgprof.experiment.lifecycle import Run
from msgprof.experiment.profiler import start_profiler
from msgprof.experiment.progress import Progress
from msgprof.experiment.summary import write_point

log = logging.getLogger("msgprof.master")

PHASES = ("ramp_up", "ramp_down")


def parse_steps(text: str) -> list[tuple[int, int]]:
    """Parse "10x100,50x200" into [(10, 100), (50, 200)] (clients x messages per client)."""
    steps = []
    for item in text.split(","):
        clients, sep, messages = item.strip().lower().partition("x")
        if not sep or not clients.isdigit() or not messages.isdigit():
            raise ValueError(f"step {item!r} is not CLIENTSxMESSAGES, e.g. 10x100")
        if int(clients) < 1 or int(messages) < 1:
            raise ValueError(f"step {item!r}: clients and messages must be at least 1")
        steps.append((int(clients), int(messages)))
    if not steps:
        raise ValueError("no steps given")
    return steps


def step_plan(steps: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """The ramp: steps in order, then in reverse; client ids continue from step to step."""
    plan = []
    next_id = 1
    sequence = [("ramp_up", s) for s in steps] + [("ramp_down", s) for s in reversed(steps)]
    for number, (phase, (clients, messages)) in enumerate(sequence, start=1):
        plan.append(
            {
                "step": number,
                "phase": phase,
                "clients": clients,
                "messages": messages,
                "first_client_id": next_id,
                "name": f"{number:02d}-{phase}-{clients}x{messages}",
            }
        )
        next_id += clients
    return plan


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Server stats of one step: counters of `after` minus `before`, levels as in `after`."""
    if not after:
        return {}
    delta = dict(after)
    # service times of the step alone (the server's whole-life quantiles stay in the master's
    # own server.json)
    delta["service_ns"] = after.get("service_ns_since_snapshot", after.get("service_ns", {}))
    for key in ("received", "stored", "unanswered", "unroutable", "reply_dropped_hwm"):
        delta[key] = after.get(key, 0) - before.get(key, 0)
    for key in ("replies", "rejected"):
        diff = Counter(after.get(key, {}))
        diff.subtract(before.get(key, {}))
        delta[key] = {k: v for k, v in diff.items() if v}
    conn_after, conn_before = after.get("connections", {}), before.get("connections", {})
    connections = dict(conn_after)
    for key in ("accepted", "disconnected", "refused", "handshake_failed"):
        connections[key] = conn_after.get(key, 0) - conn_before.get(key, 0)
    failed = Counter(conn_after.get("accept_failed", {}))
    failed.subtract(conn_before.get("accept_failed", {}))
    connections["accept_failed"] = {k: v for k, v in failed.items() if v}
    delta["connections"] = connections
    return delta


def _slice(table: pa.Table | None, t_from: float, t_to: float) -> pa.Table | None:
    """Resource samples taken between two monitor times (seconds since the monitor started)."""
    if table is None:
        return None
    t = table["t_s"]
    return table.filter(pc.and_(pc.greater_equal(t, t_from), pc.less_equal(t, t_to)))


def run_master(base: PointConfig, steps: list[tuple[int, int]], out_dir: Path) -> dict[str, Any]:
    """Run the ramp against one server; write a directory per step and master.json."""
    run = Run(base, out_dir, peak_clients=max(clients for clients, _ in steps))
    plan = step_plan(steps)
    done: list[dict[str, Any]] = []
    final_stats: dict[str, Any] = {}
    with run:
        endpoint = run.server.start()
        if endpoint is None:
            run.problems.append("server_failed")
        previous: dict[str, Any] = {}
        for step in plan if endpoint else []:
            if run.procs.stopping:  # SIGTERM/SIGINT: the steps not begun are not run
                break
            done.append(_run_step(run, step, endpoint, previous))
            previous = done[-1]["snapshot"] or previous
        final_stats = run.server.stop(run.problems)

    resources = run.resources()
    if resources is not None:
        atomic.write_parquet(run.out_dir / "resources.parquet", resources)
    if final_stats:
        atomic.write_json(run.out_dir / "server.json", final_stats)
    summaries = [_record_step(run, step, resources) for step in done]
    if run.interruption.requested:
        run.problems.insert(0, "interrupted")
    master = {
        "verdict": _overall(summaries, run.problems, len(plan)),
        "steps": summaries,
        "planned_steps": len(plan),
        "problems": run.problems,
        "interrupted_by": run.interruption.signal,
        "started_unix_s": run.started,
        "ended_unix_s": time.time(),
        "server": {k: final_stats.get(k) for k in ("received", "stored", "replies", "connections")},
    }
    atomic.write_json(run.out_dir / "master.json", master)
    run.clean_up()
    log.info("master test case: %d steps, verdict %s", len(summaries), master["verdict"])
    return master


def _run_step(
    run: Run, step: dict[str, Any], endpoint: str, previous: dict[str, Any]
) -> dict[str, Any]:
    """Run the clients of one step against the run's server; what its record needs."""
    config = replace(
        run.config,
        clients=step["clients"],
        messages=step["messages"],
        first_client_id=step["first_client_id"],
    )
    step_dir = run.out_dir / step["name"]
    step_work = step_dir / "work"
    shutil.rmtree(step_work, ignore_errors=True)
    step_work.mkdir(parents=True)
    log.info("step %(step)d %(phase)s: %(clients)d clients x %(messages)d messages", step)
    step_problems: list[str] = []
    monitor = run.server.monitor
    t_from = monitor.elapsed() if monitor else 0.0
    counters = netstat.read_counters()
    profiler = start_profiler(config, run, step_dir)  # the server's samples of this step alone
    t0 = time.monotonic()
    with Progress(step_work, config.clients, monitor):
        load = run_load(config, endpoint, step_work, step_dir, run.procs, step_problems)
    wall = time.monotonic() - t0
    profile = {"profiled": False, "reason": "off"} if profiler is None else profiler.stop()
    tcp = netstat.deltas(counters, netstat.read_counters())
    if run.procs.stopping:
        step_problems.insert(0, "interrupted")
    snapshot = run.server.snapshot()
    t_to = monitor.elapsed() if monitor else 0.0
    return {**step, "config": config, "load": load, "problems": step_problems,
            "server": stats_delta(previous, snapshot), "snapshot": snapshot,
            "window": (t_from, t_to), "wall_s": wall, "started": time.time() - wall,
            "kernel_tcp": tcp, "profile": profile}  # fmt: skip


def _record_step(run: Run, step: dict[str, Any], resources: pa.Table | None) -> dict[str, Any]:
    """Verify one step's clients, write its directory like a point's; its line of master.json."""
    step_dir = run.out_dir / step["name"]
    load: Load = step["load"]
    check = run.verify(
        load.rtt, range(step["first_client_id"], step["first_client_id"] + step["clients"])
    )
    atomic.write_json(step_dir / "limits.json", run.limits)
    document = write_point(
        step_dir,
        step["config"],
        load,
        step["server"],
        _slice(resources, *step["window"]),
        check,
        step["problems"] + run.problems,
        {"clients_wall_s": step["wall_s"]},
        step["started"],
        extra={"phase": step["phase"], "step": step["step"], "kernel_tcp": step["kernel_tcp"],
               "profile": step["profile"]},  # fmt: skip
    )
    shutil.rmtree(step_dir / "work", ignore_errors=True)
    return {k: document[k] for k in ("verdict", "clients", "messages", "acked", "lost")} | {
        "step": step["step"], "phase": step["phase"], "dir": step["name"]}  # fmt: skip


def _overall(summaries: list[dict[str, Any]], problems: list[str], planned: int) -> str:
    """ok when every planned step ran and was ok; else the first step verdict or problem."""
    if problems:
        return problems[0]
    for summary in summaries:
        if summary["verdict"] != "ok":
            return summary["verdict"]
    return "ok" if len(summaries) == planned else "incomplete"
