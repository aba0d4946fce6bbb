#!/usr/bin/env python3
"""Where does the round trip go? Transport floor vs protocol handling vs storage, in one run.

Drives six servers with the same `msgprof client` processes, one after another, in rounds:

  bare     examples/servers/bare_server.py: protocol v1 and nothing else, sharing no code with msgprof
           (the baseline of every ratio)
  echo     a plain pyzmq ROUTER that turns each request header into an ACK
  none     `msgprof server --store none` (protocol and sequence checks, no storage)
  buffer   `msgprof server --ack-after buffer`
  write    `msgprof server --ack-after write`
  fsync    `msgprof server --ack-after fsync` (group commit)

and prints median and p99 RTT at 1 client and throughput at 100 clients for each, with ratios to
`bare` measured in the same run. On a shared, noisy machine one run proves little, so each ratio
is taken within a round (the servers of a round run back to back, in alternating order) and the
table shows the median over rounds of those paired ratios. It also prints the server's CPU time
per message at 100 clients (all its threads, over the clients' run), which says what storing
costs independently of how busy the host is.

Throughput at 100 clients is the point's achieved rate after a warm-up (`--warmup-s`
WARMUP_S, msgprof.experiment.offered.achieved): the OK replies to messages sent after each
client's first 0.5 s, read while every client of both processes was past its warm-up and still
sending. A storing server creates each new client's queue (directory and segment file) on its
first messages; that one-off cost is left out of the hot path's figure and shown apart, as the
whole-run ratio printed under the table.

When `cc` and zmq.h are present, a C client (benchmarks/c/) also measures the RTT at 1 client of
`bare`, `write` and `proxy` (libzmq's `zmq.proxy(router, router)`, which sends each request back
to its sender unchanged: the transport floor, which `msgprof client` cannot measure since it
refuses a DATA frame as reply). The C client has no interpreter in its timing, so
`client/C p50` = msgprof client p50 / C client p50 against the same server says what msgprof's
generator adds to an RTT (its one-client loop runs compiled where the host builds it,
msgprof.load.native; the line under the table says in how many runs it did). The minimal pyzmq
client (benchmarks/minimal_pyzmq_client.py: the C client's loop in Python, sharing no code with
msgprof) takes its turns beside them: `pyzmq/C p50` is what any client on pyzmq adds, so
client/C over pyzmq/C is msgprof's own share. Without cc or zmq.h those columns and the proxy
row are skipped with the reason printed.

A target's 1-client RTT comes from one server process and --rtt-runs short runs (the
--rtt-messages split between them), msgprof client, C client and minimal pyzmq client taking
turns: `client/C p50` is the median of the ratios of runs seconds apart against the same
process, and the p50 and p99 are the medians over runs. (Measured one server instance each,
minutes apart, a client/C ratio moved between 0.88 and 1.55 from round to round on this 2-core
host.)

    python benchmarks/transport_overhead.py              # the table, ~7 minutes on 2 cores
    python benchmarks/transport_overhead.py --markdown   # the same as a Markdown table

The 1-client runs (msgprof client and the two baseline clients) put the server on one CPU and
the client on another (each process's threads share its CPU; `--no-pin` leaves placement to the
scheduler):
on a 2-core host that shares them with other work, where the scheduler puts four busy threads
moves a median RTT by more than the differences measured here.

Targets checked at the end (the "Hot paths" goals): write/bare RTT p50 ratio <= 1.10,
write/bare throughput ratio >= 0.95, msgprof client/C client RTT p50 <= 1.10 against `bare` and
against `write`; fsync/write throughput is printed. Exit status 0 whether they are met or
not: this reports, it does not gate; 1 when a run could not be measured (a server that did not
start, a message not acknowledged, a throughput run too short for its warm-up), with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zmq

from msgprof import atomic
from msgprof.config import PointConfig
from msgprof.experiment.clients import read_client_docs, run_client_processes
from msgprof.experiment.lifecycle import ChildProcesses, server_argv, wait_ready
from msgprof.experiment.offered import achieved
from msgprof.experiment.summary import load_window

BENCH_DIR = Path(__file__).resolve().parent
BARE_SERVER = BENCH_DIR.parent / "examples" / "servers" / "bare_server.py"
MINIMAL_PYZMQ_CLIENT = BENCH_DIR / "minimal_pyzmq_client.py"
sys.path.insert(0, str(BENCH_DIR / "c"))
from build import build_c_client  # noqa: E402

TARGETS = ("bare", "echo", "none", "buffer", "write", "fsync")  # measured by msgprof client
#: RTT at 1 client measured by the C client and the minimal pyzmq client too
C_TARGETS = ("bare", "write", "proxy")
BASELINE = "bare"
ALL_TARGETS = (*TARGETS, *(t for t in C_TARGETS if t not in TARGETS))
#: The throughput run's warm-up (`--warmup-s`), left out of its rate (all targets alike): a
#: storing server creates a new client's queue (a directory and a segment file) on its first
#: messages: two inode allocations on ext4, ~0.27 ms the pair on the reference host, 27 ms for
#: 100 clients (docs/performance.md). The rate over the whole run is `cold_msgs_per_s`.
WARMUP_S = 0.5
#: The CPUs of the 1-client runs: the server's, then the client's (None: fewer than 2 CPUs).
PINNED = tuple(sorted(os.sched_getaffinity(0))[:2]) if len(os.sched_getaffinity(0)) >= 2 else None


def serve_echo(ready: Path) -> None:
    """Answer each request by flipping its header's type byte to ACK (no sequence checks)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.BACKLOG, 1024)
    sock.bind("tcp://127.0.0.1:0")
    atomic.write_text(ready, sock.getsockopt_string(zmq.LAST_ENDPOINT) + "\n")
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    while not stopping:
        if not sock.poll(100):
            continue
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            header = frames[1]
            sock.send_multipart([frames[0], header[:3] + b"\x02" + header[4:]])
    sock.close(linger=1000)
    ctx.term()


def serve_proxy(ready: Path) -> None:
    """The transport floor: libzmq's own loop routes each request back to its sender unchanged.
    SIGTERM's default action ends the process (zmq.proxy never returns)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind("tcp://127.0.0.1:0")
    atomic.write_text(ready, sock.getsockopt_string(zmq.LAST_ENDPOINT) + "\n")
    zmq.proxy(sock, sock)


def _target_argv(target: str, config: PointConfig, tmp: Path, work: Path) -> list[str]:
    if target == "bare":
        return [sys.executable, str(BARE_SERVER), "--ready", str(work / "ready")]
    if target in ("echo", "proxy"):
        return [sys.executable, __file__, f"--serve-{target}", str(work / "ready")]
    return server_argv(config, tmp / "queues", work)


def _config(
    target: str, clients: int, messages: int, processes: int, warmup_s: float = 0.0
) -> PointConfig:
    return PointConfig(
        clients=clients,
        messages=messages,
        processes=processes,
        warmup_s=warmup_s,
        store="file" if target in ("buffer", "write", "fsync") else "none",
        ack_after=target if target in ("buffer", "write", "fsync") else "write",
        timeout_s=10,
        deadline_s=300,
    )


@contextlib.contextmanager
def serving(target: str, config: PointConfig, tmp: Path, pin: bool = False):
    """Start `target`'s server; yield (endpoint, its psutil.Process, the ChildProcesses to start
    clients with); stop it with SIGTERM on success and kill everything left in any case.

    With `pin` (and PINNED), the server runs on PINNED[0] and what is started within on
    PINNED[1]: a child inherits the CPUs its parent may use when it is started."""
    work = tmp / "work"
    work.mkdir(parents=True)
    procs = ChildProcesses()
    cpus = os.sched_getaffinity(0)
    pin = pin and PINNED is not None
    try:
        if pin:
            os.sched_setaffinity(0, {PINNED[0]})
        server = procs.start("server", _target_argv(target, config, tmp, work), tmp / "server.log")
        if pin:
            os.sched_setaffinity(0, {PINNED[1]})
        endpoint = wait_ready(work / "ready", server, 60)
        if endpoint is None:
            raise RuntimeError(f"{target} server did not start: {(tmp / 'server.log').read_text()}")
        yield endpoint, psutil.Process(server.pid), procs
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    finally:
        os.sched_setaffinity(0, cpus)
        procs.kill_all()


def _msgprof_rtts(
    target: str, config: PointConfig, endpoint: str, work: Path, tmp: Path, procs: ChildProcesses
) -> tuple[np.ndarray, pa.Table, list[dict]]:
    """Run `config`'s msgprof client processes against `endpoint`; the RTTs of the OK replies,
    the processes' rtt.parquet rows (send time, RTT, status, warm-up) and their client.json
    documents. Raises unless every message was acknowledged."""
    problems: list[str] = []
    started = run_client_processes(config, endpoint, work, tmp, procs, problems)
    if problems:
        raise RuntimeError(f"{target}: {problems}; see {tmp}")
    docs = read_client_docs(work, started)
    columns = ["t_send_ns", "rtt_ns", "status", "warmup"]
    table = pa.concat_tables(
        pq.read_table(work / f"client-{k}" / "rtt.parquet", columns=columns) for k in range(started)
    )
    rtt = table.filter(pc.equal(table["status"], "OK"))["rtt_ns"].to_numpy()
    if len(rtt) != config.clients * config.messages:
        raise RuntimeError(f"{target}: {len(rtt)} of {config.clients * config.messages} acked")
    return rtt, table, docs


def steady_rate(rtt: pa.Table, docs: list[dict]) -> float:
    """The achieved rate past the warm-up (msgprof.experiment.offered.achieved). Raises when
    the window in which every client was past it and still sending is under a second."""
    rate, window_s = achieved(rtt, docs)
    if rate is None or window_s < 1.0:
        raise RuntimeError(
            f"the throughput run had {window_s:.2f} s with every client past its {WARMUP_S:g} s "
            "warm-up and still sending; its rate needs 1 s: raise --messages"
        )
    return rate


def run_load(target: str, clients: int, messages: int, processes: int, tmp: Path) -> dict:
    """Start `target`, run msgprof clients against it, stop it; throughput and CPU."""
    config = _config(target, clients, messages, processes, WARMUP_S)
    with serving(target, config, tmp) as (endpoint, server_ps, procs):
        cpu_before = server_ps.cpu_times()
        _, rows, docs = _msgprof_rtts(
            target, config, endpoint, tmp / "work" / "clients", tmp, procs
        )
        cpu_after = server_ps.cpu_times()
    acked, window_s = load_window(docs)
    return {
        "msgs_per_s": steady_rate(rows, docs),
        "cold_msgs_per_s": acked / window_s,
        "client_cpu": max(doc.get("cpu_utilization", 0.0) for doc in docs),
        # all the server's threads (its own and libzmq's), over the clients' run only
        "server_cpu_us": (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system)
        / acked
        * 1e6,
    }


def _baseline_rtt(
    client: list[str], endpoint: str, target: str, config: PointConfig, client_id: int
) -> dict:
    """One run of a baseline client (the C client, or MINIMAL_PYZMQ_CLIENT; closed loop,
    `config.messages`); its exact RTT p50 and p99."""
    mode = "echo" if target == "proxy" else "ack"
    argv = [*client, endpoint, str(config.messages), str(config.payload_bytes), mode]
    done = subprocess.run([*argv, str(client_id)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(client[-1]).name} against {target}: {done.stderr.strip()}")
    return json.loads(done.stdout)


def run_rtt(
    target: str, messages: int, runs: int, c_client: Path | None, tmp: Path, pin: bool
) -> dict:
    """The 1-client RTT of `target`: one server, `runs` runs of messages // runs each, by
    `msgprof client` and (with `c_client`, for C_TARGETS) the C client and the minimal pyzmq
    client in turn, their order alternating, every run with a client id of its own. Figures:
    the median over runs of each run's p50 and p99, and `client_over_c` (`pyzmq_over_c`), the
    median of each run's msgprof (minimal pyzmq) p50 / the C client's p50 of that run: runs
    seconds apart against the same process, so neither another server instance nor the host's
    drift over minutes enters the ratio."""
    config = _config(target, 1, max(1, messages // runs), 1)
    clients = ["msgprof"] if target in TARGETS else []
    baselines: dict[str, list[str]] = {}
    if c_client is not None and target in C_TARGETS:
        baselines = {"c": [str(c_client)], "pyzmq": [sys.executable, str(MINIMAL_PYZMQ_CLIENT)]}
        clients += list(baselines)
    p50s: dict[str, list[tuple[float, float]]] = {who: [] for who in clients}
    native: list[bool] = []  # per msgprof run: its one-client loop ran compiled
    with serving(target, config, tmp, pin) as (endpoint, _, procs):
        for k in range(runs):
            for who in clients if k % 2 == 0 else reversed(clients):
                client_id = 1 + len(clients) * k + clients.index(who)
                if who in baselines:
                    doc = _baseline_rtt(baselines[who], endpoint, target, config, client_id)
                    p50s[who].append((doc["rtt_p50_us"], doc["rtt_p99_us"]))
                    continue
                run_config = dataclasses.replace(config, first_client_id=client_id)
                work = tmp / "work" / f"run-{k}"
                rtt, _, docs = _msgprof_rtts(target, run_config, endpoint, work, tmp, procs)
                native.append(docs[0].get("solo_loop") == "native")
                p50s[who].append(
                    (float(np.quantile(rtt, 0.5)) / 1e3, float(np.quantile(rtt, 0.99)) / 1e3)
                )
    figures: dict = {"native_runs": sum(native) / len(native)} if native else {}
    for who, prefix in (("msgprof", ""), ("c", "c_"), ("pyzmq", "pyzmq_")):
        if p50s.get(who):
            figures[f"{prefix}p50_us"] = statistics.median(row[0] for row in p50s[who])
            figures[f"{prefix}p99_us"] = statistics.median(row[1] for row in p50s[who])
    for who, key in (("msgprof", "client_over_c"), ("pyzmq", "pyzmq_over_c")):
        if p50s.get(who) and p50s.get("c"):
            pairs = zip(p50s[who], p50s["c"], strict=True)
            figures[key] = statistics.median(mine[0] / c[0] for mine, c in pairs)
    return figures


def _paired_ratio(
    rows: list[dict], base_rows: list[dict], key: str, base_key: str | None = None
) -> float:
    """Median over rounds of rows[i][key] / base_rows[i][base_key or key]: each ratio compares two
    figures measured minutes apart at most, so slow drift of a shared machine cancels out."""
    base_key = base_key or key
    return statistics.median(
        row[key] / base[base_key] for row, base in zip(rows, base_rows, strict=True)
    )


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve-echo", metavar="READY_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--serve-proxy", metavar="READY_FILE", help=argparse.SUPPRESS)
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds over all targets (median taken)"
    )
    parser.add_argument(
        "--rtt-messages", type=int, default=10000, help="messages of the 1-client runs, in all"
    )
    parser.add_argument(
        "--rtt-runs", type=int, default=5, help="runs the 1-client messages are split into"
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="leave the 1-client runs' CPUs to the scheduler"
    )
    parser.add_argument("--clients", type=int, default=100, help="clients of the throughput run")
    parser.add_argument(
        "--messages", type=int, default=2000, help="messages per client, throughput run"
    )
    parser.add_argument("--processes", type=int, default=2, help="client processes, throughput run")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    return parser.parse_args()


def _measure(target: str, args: argparse.Namespace, c_client: Path | None, tmp: Path) -> dict:
    """One target's figures of one round: msgprof client's and the C client's, where they apply."""
    pin = not args.no_pin
    figures = run_rtt(target, args.rtt_messages, args.rtt_runs, c_client, tmp / "rtt", pin)
    if target in TARGETS:
        many = run_load(target, args.clients, args.messages, args.processes, tmp / "tput")
        figures.update(many)
    return figures


def _run_rounds(args: argparse.Namespace) -> tuple[dict[str, list[dict]], bool]:
    """Every target in every round (alternating order), each round's figures per target; and
    whether the C client ran."""
    with tempfile.TemporaryDirectory(prefix="msgprof-bench-") as tmpdir:
        c_client, why = build_c_client(Path(tmpdir))
        if c_client is None:
            print(f"C client rows skipped: {why}", file=sys.stderr, flush=True)
        targets = ALL_TARGETS if c_client is not None else TARGETS
        results: dict[str, list[dict]] = {t: [] for t in targets}
        for round_no in range(args.rounds):
            order = targets if round_no % 2 == 0 else tuple(reversed(targets))
            for target in order:
                figures = _measure(target, args, c_client, Path(tmpdir) / f"{round_no}-{target}")
                results[target].append(figures)
                print(f"round {round_no + 1}/{args.rounds} {target:6s} "
                      + "  ".join(f"{k} {v:.3g}" for k, v in figures.items()),
                      file=sys.stderr, flush=True)  # fmt: skip
    return results, c_client is not None


def _medians(results: dict[str, list[dict]], with_c: bool) -> tuple[dict[str, dict], float]:
    """Per target the medians over rounds (client/C p50 included: a median of paired ratios
    already, see run_rtt) and the paired ratios to the baseline; and the paired fsync/write
    throughput ratio."""
    table = {
        t: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        for t, rows in results.items()
    }
    for t in TARGETS:
        table[t]["p50_ratio"] = _paired_ratio(results[t], results[BASELINE], "p50_us")
        table[t]["tput_ratio"] = _paired_ratio(results[t], results[BASELINE], "msgs_per_s")
    if with_c:
        for t in C_TARGETS:
            table[t]["c_p50_ratio"] = _paired_ratio(results[t], results[BASELINE], "c_p50_us")
    for t in TARGETS:
        table[t]["cold_tput_ratio"] = _paired_ratio(
            results[t], results[BASELINE], "cold_msgs_per_s"
        )
    fsync_write = _paired_ratio(results["fsync"], results["write"], "msgs_per_s")
    return table, fsync_write


def _cell(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "—"


COLUMNS = (  # (header, key, format); {clients} is filled in
    ("RTT p50 µs", "p50_us", ".1f"),
    ("RTT p99 µs", "p99_us", ".1f"),
    ("p50 ratio", "p50_ratio", ".2f"),
    ("C RTT p50 µs", "c_p50_us", ".1f"),
    ("C RTT p99 µs", "c_p99_us", ".1f"),
    ("C p50 ratio", "c_p50_ratio", ".2f"),
    ("client/C p50", "client_over_c", ".2f"),
    ("pyzmq/C p50", "pyzmq_over_c", ".2f"),
    ("msg/s @{clients}", "msgs_per_s", ".0f"),
    ("tput ratio", "tput_ratio", ".2f"),
    ("server CPU µs/msg", "server_cpu_us", ".1f"),
    ("client CPU", "client_cpu", ".0%"),
)


def _print_table(table: dict[str, dict], clients: int, markdown: bool) -> None:
    with_c = any("c_p50_us" in row for row in table.values())
    columns = [c for c in COLUMNS if with_c or not c[1].startswith(("c_", "client_", "pyzmq_"))]
    header = ("server", *(h.format(clients=clients) for h, _, _ in columns))
    lines = [(t, *(_cell(row, key, fmt) for _, key, fmt in columns)) for t, row in table.items()]
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|")
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        for line in (header, *lines):
            print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))


def _print_checks(table: dict[str, dict], fsync_write: float, rounds: int) -> None:
    """The targets of the module docstring, each met or MISSED."""
    write = table["write"]
    checks = [
        (f"write/{BASELINE} RTT p50 ratio", write["p50_ratio"], "<=", 1.10),
        (f"write/{BASELINE} throughput ratio", write["tput_ratio"], ">=", 0.95),
    ]
    checks += [
        (f"msgprof client/C client RTT p50 against {t}", table[t]["client_over_c"], "<=", 1.10)
        for t in (BASELINE, "write")
        if "client_over_c" in table[t]
    ]
    print(
        f"\nmedians of {rounds} rounds; each ratio is the median over rounds of the ratio to "
        f"'{BASELINE}' measured in the same round (C columns: by the C client, 1 client; "
        "client/C p50: median over rounds of the median ratio of msgprof and C client runs taking "
        "turns against one server process)"
    )
    for text, value, op, target in checks:
        ok = value <= target if op == "<=" else value >= target
        print(f"{'met ' if ok else 'MISSED'}  {text} {value:.3f} {op} {target:.2f}")
    for t in (BASELINE, "write"):
        row = table[t]
        if "pyzmq_over_c" in row:
            print(
                f"minimal pyzmq client/C client RTT p50 against {t} {row['pyzmq_over_c']:.2f} "
                "(what any pyzmq client adds; msgprof client's share above it, the ratio of the "
                f"two: {row['client_over_c'] / row['pyzmq_over_c']:.2f})"
            )
    native = statistics.mean(row["native_runs"] for row in table.values() if "native_runs" in row)
    print(f"msgprof client's one-client loop ran compiled (msgprof.load.native) in {native:.0%} "
          "of its 1-client runs, in Python in the rest")  # fmt: skip
    print(f"fsync/write throughput ratio {fsync_write:.2f}")
    print(
        f"write/{BASELINE} throughput ratio over the whole run, the first {WARMUP_S:g} s (each "
        f"client's first contact: queue creation) included: {write['cold_tput_ratio']:.2f}"
    )


def main() -> int:
    args = _parse_args()
    if args.serve_echo:
        serve_echo(Path(args.serve_echo))
        return 0
    if args.serve_proxy:
        serve_proxy(Path(args.serve_proxy))
        return 0
    try:
        results, with_c = _run_rounds(args)
    except RuntimeError as err:  # a server that did not start, lost acks, a run too short
        print(f"transport_overhead: {err}", file=sys.stderr)
        return 1
    table, fsync_write = _medians(results, with_c)
    _print_table(table, args.clients, args.markdown)
    _print_checks(table, fsync_write, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
