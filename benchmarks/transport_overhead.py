#!/usr/bin/env python3
"""Where does the round trip go? Transport floor vs protocol handling vs storage, in one run.

Drives five servers with the same `msgprof client` processes, one after another, in rounds:

  echo     a plain pyzmq ROUTER that turns each request header into an ACK (transport floor)
  none     `msgprof server --store none` (protocol and sequence checks, no storage)
  buffer   `msgprof server --ack-after buffer`
  write    `msgprof server --ack-after write`
  fsync    `msgprof server --ack-after fsync` (group commit)

and prints median and p99 RTT at 1 client and throughput at 100 clients for each, with ratios to
the `none` row (the baseline measured in the same run). On a shared, noisy machine one run
proves little, so each ratio is taken within a round (the servers of a round run back to back,
in alternating order) and the table shows the median over rounds of those paired ratios.
It also prints the server's CPU time per message at 100 clients (all its threads, over the
clients' run), which says what storing costs independently of how busy the host is.

    python benchmarks/transport_overhead.py              # the table, ~3.5 minutes on 2 cores
    python benchmarks/transport_overhead.py --markdown   # the same as a Markdown table

Targets checked at the end: write/none RTT ratio <= 1.2, write/none throughput ratio >= 0.9,
fsync throughput >= 0.5 x write. Exit status 0 either way: this reports, it does not gate.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zmq

from msgprof import atomic
from msgprof.config import PointConfig
from msgprof.experiment.clients import read_client_docs, run_client_processes
from msgprof.experiment.lifecycle import ChildProcesses, server_argv, wait_ready
from msgprof.experiment.summary import load_window

TARGETS = ("echo", "none", "buffer", "write", "fsync")
BASELINE = "none"


def serve_echo(ready: Path) -> None:
    """The transport floor: answer each request by flipping its header's type byte to ACK."""
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


def run_load(target: str, clients: int, messages: int, processes: int, tmp: Path) -> dict:
    """Start `target`, run the clients against it, stop it; return RTT quantiles and throughput."""
    work = tmp / "work"
    work.mkdir(parents=True)
    config = PointConfig(
        clients=clients,
        messages=messages,
        processes=processes,
        store="none" if target in ("echo", "none") else "file",
        ack_after=target if target in ("buffer", "write", "fsync") else "write",
        timeout_s=10,
        deadline_s=300,
    )
    if target == "echo":
        argv = [sys.executable, __file__, "--serve-echo", str(work / "ready")]
    else:
        argv = server_argv(config, tmp / "queues", work)
    procs = ChildProcesses()
    problems: list[str] = []
    try:
        server = procs.start("server", argv, tmp / "server.log")
        endpoint = wait_ready(work / "ready", server, 60)
        if endpoint is None:
            raise RuntimeError(f"{target} server did not start: {(tmp / 'server.log').read_text()}")
        server_ps = psutil.Process(server.pid)
        cpu_before = server_ps.cpu_times()
        started = run_client_processes(config, endpoint, work, tmp, procs, problems)
        cpu_after = server_ps.cpu_times()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    finally:
        procs.kill_all()
    if problems:
        raise RuntimeError(f"{target}: {problems}; see {tmp}")
    docs = read_client_docs(work, started)
    acked, window_s = load_window(docs)
    rtts = []
    for k in range(started):
        table = pq.read_table(work / f"client-{k}" / "rtt.parquet", columns=["rtt_ns", "status"])
        rtts.append(table.filter(pc.equal(table["status"], "OK"))["rtt_ns"].to_numpy())
    rtt = np.concatenate(rtts)
    if acked != clients * messages:
        raise RuntimeError(f"{target}: {acked} of {clients * messages} acked; see {tmp}")
    return {
        "p50_us": float(np.quantile(rtt, 0.5)) / 1e3,
        "p99_us": float(np.quantile(rtt, 0.99)) / 1e3,
        "msgs_per_s": acked / window_s,
        "client_cpu": max(doc.get("cpu_utilization", 0.0) for doc in docs),
        # all the server's threads (its own and libzmq's), over the clients' run only
        "server_cpu_us": (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system)
        / acked * 1e6,
    }


def _paired_ratio(rows: list[dict], base_rows: list[dict], key: str) -> float:
    """Median over rounds of rows[i][key] / base_rows[i][key]: each ratio compares two servers
    measured minutes apart at most, so slow drift of a shared machine cancels out."""
    return statistics.median(row[key] / base[key] for row, base in zip(rows, base_rows, strict=True))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve-echo", metavar="READY_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5, help="rounds over all targets (median taken)")
    parser.add_argument("--rtt-messages", type=int, default=3000, help="messages of the 1-client run")
    parser.add_argument("--clients", type=int, default=100, help="clients of the throughput run")
    parser.add_argument("--messages", type=int, default=1000, help="messages per client, throughput run")
    parser.add_argument("--processes", type=int, default=2, help="client processes, throughput run")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    return parser.parse_args()


def _run_rounds(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Every target in every round (alternating order), each round's figures per target."""
    results: dict[str, list[dict]] = {t: [] for t in TARGETS}
    with tempfile.TemporaryDirectory(prefix="msgprof-bench-") as tmpdir:
        for round_no in range(args.rounds):
            order = TARGETS if round_no % 2 == 0 else tuple(reversed(TARGETS))
            for target in order:
                tmp = Path(tmpdir) / f"{round_no}-{target}"
                single = run_load(target, 1, args.rtt_messages, 1, tmp / "rtt")
                many = run_load(target, args.clients, args.messages, args.processes, tmp / "tput")
                results[target].append(
                    {"p50_us": single["p50_us"], "p99_us": single["p99_us"],
                     "msgs_per_s": many["msgs_per_s"], "client_cpu": many["client_cpu"],
                     "server_cpu_us": many["server_cpu_us"]}
                )  # fmt: skip
                print(
                    f"round {round_no + 1}/{args.rounds} {target:6s} p50 {single['p50_us']:7.1f} us  "
                    f"p99 {single['p99_us']:7.1f} us  {many['msgs_per_s']:8.0f} msg/s  "
                    f"server CPU {many['server_cpu_us']:5.1f} us/msg",
                    file=sys.stderr,
                    flush=True,
                )
    return results


def _medians(results: dict[str, list[dict]]) -> tuple[dict[str, dict], float]:
    """Per target the medians over rounds and the paired ratios to the baseline; and the
    paired fsync/write throughput ratio."""
    table = {t: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for t, rows in results.items()}
    for t in TARGETS:
        table[t]["p50_ratio"] = _paired_ratio(results[t], results[BASELINE], "p50_us")
        table[t]["tput_ratio"] = _paired_ratio(results[t], results[BASELINE], "msgs_per_s")
    fsync_write = _paired_ratio(results["fsync"], results["write"], "msgs_per_s")
    return table, fsync_write


def _print_table(table: dict[str, dict], clients: int, markdown: bool) -> None:
    header = ("server", "RTT p50 µs", "RTT p99 µs", "p50 ratio", f"msg/s @{clients}", "tput ratio",
              "server CPU µs/msg", "client CPU")  # fmt: skip
    lines = []
    for t in TARGETS:
        row = table[t]
        lines.append((t, f"{row['p50_us']:.1f}", f"{row['p99_us']:.1f}", f"{row['p50_ratio']:.2f}",
                      f"{row['msgs_per_s']:.0f}", f"{row['tput_ratio']:.2f}", f"{row['server_cpu_us']:.1f}",
                      f"{row['client_cpu']:.0%}"))  # fmt: skip
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
        ("write/none RTT p50 ratio", write["p50_ratio"], "<=", 1.2),
        ("write/none throughput ratio", write["tput_ratio"], ">=", 0.9),
        ("fsync/write throughput ratio", fsync_write, ">=", 0.5),
    ]
    print(
        f"\nmedians of {rounds} rounds; each ratio is the median over rounds of the ratio to "
        f"'{BASELINE}' measured in the same round"
    )
    for text, value, op, target in checks:
        ok = value <= target if op == "<=" else value >= target
        print(f"{'met ' if ok else 'MISSED'}  {text} {value:.2f} {op} {target}")


def main() -> int:
    args = _parse_args()
    if args.serve_echo:
        serve_echo(Path(args.serve_echo))
        return 0
    results = _run_rounds(args)
    table, fsync_write = _medians(results)
    _print_table(table, args.clients, args.markdown)
    _print_checks(table, fsync_write, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
