"""One sweep point end to end: server, client processes, shutdown, verification, verdict.

A point that hits a limit (descriptors, disk, timeouts) is a result, not a crash: it ends with a
verdict in point.json that names the limit. The run's setup and teardown are msgprof.experiment
.lifecycle's, its load msgprof.experiment.clients', its point.json msgprof.experiment.summary's.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from msgprof import atomic
from msgprof.config import PointConfig
from msgprof.experiment import netstat
from msgprof.experiment.clients import Load, run_load
from msgprof.experiment.lifecycle import Run
from msgprof.experiment.profiler import start_profiler
from msgprof.experiment.progress import Progress
from msgprof.experiment.summary import write_point

log = logging.getLogger("msgprof.point")


def client_profiles(profile_dir: Path, processes: int) -> list[dict[str, Any]]:
    """What each client process's own profiler recorded (--profile-clients: profile.json of
    profile/client-K/), or why there is none."""
    docs = []
    for k in range(processes):
        path = profile_dir / f"client-{k}" / "profile.json"
        try:
            docs.append(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            reason = f"no profile.json ({err.__class__.__name__})"
            docs.append({"profiled": False, "reason": reason})
    return docs


def load_acked(load: Load) -> int:
    """Messages the client processes saw acknowledged."""
    return sum(doc.get("acked", 0) for doc in load.docs)


def record_process_limits(
    limits: dict[str, Any], server_stats: dict[str, Any], client_docs: list[dict[str, Any]]
) -> bool:
    """Add the descriptor limits the server and the client processes ran under (each may
    raise or lower its own) to `limits`; whether there was any."""
    before = len(limits)
    if server_stats.get("rlimit_nofile"):
        limits["server_rlimit_nofile_soft"] = server_stats["rlimit_nofile"]["soft"]
        limits["server_rlimit_nofile_hard"] = server_stats["rlimit_nofile"]["hard"]
    ran = [doc for doc in client_docs if doc.get("rlimit_nofile")]
    if ran:  # the lowest: the one a client process would hit first
        limits["client_rlimit_nofile_soft"] = min(r["rlimit_nofile"] for r in ran)
        limits["client_rlimit_nofile_hard"] = min(r["rlimit_nofile_hard"] for r in ran)
    return len(limits) > before


def run_point(config: PointConfig, out_dir: Path) -> dict[str, Any]:
    """Run the point, write its outputs to `out_dir`, return the point.json document."""
    run = Run(config, out_dir)
    config = run.config
    timings: dict[str, float] = {}
    load = Load([], None, None, [])
    profile: dict[str, Any] = {"profiled": False, "reason": None if config.profile else "off"}
    counters = netstat.read_counters()
    with run:
        t0 = time.monotonic()
        endpoint = run.server.start()
        timings["server_start_s"] = time.monotonic() - t0
        if endpoint is None:
            run.problems.append("server_failed")
        else:
            log.info("server ready at %s (%.2f s)", endpoint, timings["server_start_s"])
            profiler = start_profiler(config, run, run.out_dir)
            t1 = time.monotonic()
            with Progress(run.work, config.clients, run.server.monitor):
                load = run_load(config, endpoint, run.work, run.out_dir, run.procs, run.problems)
            timings["clients_wall_s"] = time.monotonic() - t1
            if profiler is not None:
                profile = profiler.stop()
            if config.profile_clients:
                profile["clients"] = client_profiles(run.out_dir / "profile", len(load.docs))
        tcp = netstat.deltas(counters, netstat.read_counters())
        t2 = time.monotonic()
        server_stats = run.server.stop(run.problems)
        timings["server_stop_s"] = time.monotonic() - t2
    if run.interruption.requested:
        run.problems.insert(0, "interrupted")

    t3 = time.monotonic()
    if config.store == "file":
        log.info("verifying: the queues against %d acknowledged messages", load_acked(load))
    check = run.verify(load.rtt)
    timings["verify_s"] = time.monotonic() - t3
    if record_process_limits(run.limits, server_stats, load.docs):
        atomic.write_json(run.out_dir / "limits.json", run.limits)
    extra: dict[str, Any] = {"kernel_tcp": tcp, "profile": profile}
    if run.interruption.requested:
        extra["interrupted_by"] = run.interruption.signal
    document = write_point(
        run.out_dir, config, load, server_stats, run.resources(), check, run.problems, timings,
        run.started, extra=extra,
    )  # fmt: skip
    run.clean_up()
    log.info(
        "point %d clients x %s: verdict %s, acked %d, lost %s",
        config.clients,
        f"{config.messages} messages" if config.messages else f"{config.duration_s:g} s",
        document["verdict"],
        document["acked"],
        "not verified" if document["lost"] is None else document["lost"],
    )
    return document
