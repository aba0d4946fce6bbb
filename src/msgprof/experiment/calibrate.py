"""`msgprof calibrate`: the load generator's own floor on this host, before a run's points.

`msgprof client --echo` processes run against libzmq's proxy (`zmq.proxy(router, router)` in a
child process: C code that routes each request back to its sender unchanged, no Python in the
reply path), at 1 client and at 100 clients. What they time is the generator and the transport
alone, so an RTT of a point near that floor says nothing about the server. The result is
RUN_DIR/calibration.json (docs/results.md); the report quotes its `floor_rtt_p50_us`.
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zmq

from msgprof import __version__, atomic, stats
from msgprof.commands import command_argv
from msgprof.config import ClientConfig, PointConfig
from msgprof.experiment import launch, sysinfo
from msgprof.experiment.clients import CLIENT_GRACE_S, read_client_docs, split_ids
from msgprof.experiment.lifecycle import ChildProcesses, msgprof_argv, wait_ready
from msgprof.experiment.summary import load_window

#: (clients, share of --messages each client sends) of each case, the floor's first.
CASES = ((1, 1.0), (100, 0.1))
#: Messages of the 1-client case by default; the 100-client case sends a tenth of it each.
DEFAULT_MESSAGES = 2000
#: Seconds the proxy gets to bind and write its ready file.
PROXY_START_TIMEOUT_S = 30.0
#: Bounds of each client process: a reply, and the whole case.
TIMEOUT_S = 5.0
DEADLINE_S = 60.0
#: Seconds a process gets to exit after SIGTERM before it is killed.
STOP_GRACE_S = 5.0
QUANTILES = {"p50_us": 0.5, "p90_us": 0.9, "p99_us": 0.99}


class CalibrationError(RuntimeError):
    """The calibration could not measure the floor (the message says why and where to look)."""


def serve_proxy(ready: Path) -> None:
    """The echo: libzmq's own loop routes each request back to its sender unchanged. SIGTERM's
    default action ends the process (zmq.proxy never returns)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.BACKLOG, 1024)
    sock.bind("tcp://127.0.0.1:0")
    atomic.write_text(ready, sock.getsockopt_string(zmq.LAST_ENDPOINT) + "\n")
    zmq.proxy(sock, sock)


def run_case(endpoint: str, clients: int, messages: int, work: Path, procs: ChildProcesses) -> dict:
    """`clients` echo clients sending `messages` each, in as many processes as a point of that
    many clients would use; their RTT quantiles, throughput and CPU."""
    processes = launch.client_processes(PointConfig(clients=clients, messages=messages))
    ranges = split_ids(1, clients, processes)
    started = []
    for k, (lo, hi) in enumerate(ranges):
        client = ClientConfig(
            endpoint,
            range(lo, hi + 1),
            messages,
            echo=True,
            timeout_s=TIMEOUT_S,
            deadline_s=DEADLINE_S,
        )
        argv = msgprof_argv(command_argv("client", client, out=work / f"client-{k}"))
        started.append(procs.start(f"client-{k}", argv, work / f"client-{k}.log"))
    until = time.monotonic() + DEADLINE_S + CLIENT_GRACE_S
    for proc in started:
        code = procs.wait(proc, until)
        if code is None:
            procs.stop(proc, STOP_GRACE_S)
        if code != 0:
            raise CalibrationError(f"a client process failed at {clients} clients; see {work}")
    docs = read_client_docs(work, len(started))
    acked, window_s = load_window(docs)
    if acked != clients * messages:
        raise CalibrationError(
            f"{acked} of {clients * messages} echoes came back at {clients} clients; see {work}"
        )
    rtt_ns = np.concatenate(
        [_ok_rtts(work / f"client-{k}" / "rtt.parquet") for k in range(len(started))]
    )
    values = stats.quantiles(rtt_ns, list(QUANTILES.values()), overwrite=True)
    return {
        "clients": clients,
        "messages_per_client": messages,
        "processes": len(started),
        "messages": int(acked),
        **{key: value / 1e3 for key, value in zip(QUANTILES, values, strict=True)},
        "msgs_per_s": acked / window_s if window_s > 0 else None,
        "client_cpu": max(doc.get("cpu_utilization", 0.0) for doc in docs),
        "client_saturated": any(doc.get("saturated") for doc in docs),
        # a process of one client: its loop compiled ('native') or in Python; else None
        "solo_loop": docs[0].get("solo_loop") if len(docs) == 1 else None,
    }


def _ok_rtts(path: Path) -> np.ndarray:
    table = pq.read_table(path, columns=["rtt_ns", "status"])
    return table.filter(pc.equal(table["status"], "OK"))["rtt_ns"].to_numpy()


def calibrate(out_dir: Path, messages: int = DEFAULT_MESSAGES) -> dict[str, Any]:
    """Measure both cases against one proxy and write out_dir/calibration.json; its contents.

    Work files go to a temporary directory in out_dir, removed on success and kept (named in
    the error) on failure."""
    if messages < 10:
        raise ValueError(f"--messages must be at least 10, got {messages}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="calibrate-", dir=out_dir))
    procs = ChildProcesses()
    started = time.time()
    proxy = None
    try:
        proxy = procs.start(
            "proxy", [sys.executable, "-m", __name__, str(work / "ready")], work / "proxy.log"
        )
        endpoint = wait_ready(work / "ready", proxy, PROXY_START_TIMEOUT_S)
        if endpoint is None:
            raise CalibrationError(f"the echo proxy did not start; see {work / 'proxy.log'}")
        cases = []
        for clients, share in CASES:
            case_dir = work / f"{clients}-clients"
            case_dir.mkdir()
            cases.append(
                run_case(endpoint, clients, max(1, round(messages * share)), case_dir, procs)
            )
    finally:
        if proxy is not None:
            procs.stop(proxy, STOP_GRACE_S)
        procs.kill_all()
    doc = {
        "floor_rtt_p50_us": cases[0]["p50_us"],
        "cases": cases,
        "echo": "zmq.proxy(router, router) on tcp://127.0.0.1 (libzmq routes each request back)",
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": time.time() - started,
        "versions": {
            **sysinfo.package_versions(),
            "msgprof": __version__,
            "libzmq": zmq.zmq_version(),
        },
    }
    atomic.write_json(out_dir / "calibration.json", doc)
    shutil.rmtree(work, ignore_errors=True)
    return doc


if __name__ == "__main__":  # the proxy's own process: python -m msgprof.experiment.calibrate READY
    serve_proxy(Path(sys.argv[1]))
