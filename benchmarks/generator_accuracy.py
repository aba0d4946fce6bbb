#!/usr/bin/env python3
"""Does the open-loop generator keep its schedule against the real server?

For each load (clients x messages per second per client) and each of R rounds it runs two
`msgprof point`s against the default server (`write` mode, file store):

  paced    --rate R --duration-s D --warmup-s W   (the open loop under test)
  closed   --messages R*D                         (the closed loop, same clients and messages)

and prints per load: the offered rate, the achieved rate (median and lowest over rounds, from
point.json: OK replies read while every client was on its schedule past warm-up), their ratio,
the p99 of the send lag (actual - intended send), the share of measured sends that were late
(> 1 ms) with room in the window (the generator's own fault), the clients' CPU time per message
sent (all client processes, user + system) in both loops and their ratio, the busiest client
thread's utilisation, the closed loop's throughput (what the server sustains at that client
count: the headroom over the offered rate), the points' verdicts, and how many cores other work
on the host kept busy during the paced points (from /proc/stat, less this run's own CPU): on a
shared host that says which numbers to trust.

The closed point is the reference measured in the same sitting: it says what a message costs
the client without timers, so the paced/closed CPU ratio is the price of pacing. Within a
round the pair's order alternates from load to load and the loads' order reverses from round to
round, so a shared host's drift falls on both alike; ratios are taken within a pair, then the
median over rounds.

    python benchmarks/generator_accuracy.py              # 4 loads x 3 rounds, ~3.5 minutes
    python benchmarks/generator_accuracy.py --markdown   # the same as a Markdown table
    python benchmarks/generator_accuracy.py --quick      # 4 s points, 2 rounds, ~70 s
    python benchmarks/generator_accuracy.py --loads 10x500 2000x2 --keep /tmp/ga

Exit status 1 when any load's median achieved/offered is below 0.99 (the reasons are printed):
the default loads are far below what the server sustains at their client counts, so a shortfall
there is the generator's. Each point is bounded (its clients by `msgprof point --deadline-s`,
the duration plus 60 s; the point by that plus 120 s) and stopped and reaped however the script
ends: on Ctrl-C it gets SIGTERM and stops its server and clients; if the script is killed, the
kernel sends it SIGTERM (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msgprof.experiment.lifecycle import ChildProcesses, msgprof_argv, read_json

#: The check of the module docstring: median achieved/offered at least this.
ACHIEVED_RATIO_TARGET = 0.99
DEFAULT_LOADS = ("1x1000", "100x20", "100x50", "1000x5")
#: Seconds a point gets beyond its clients' deadline (server start and stop, verification).
POINT_OVERHEAD_S = 120.0
#: Seconds a point gets to stop after SIGTERM before it is killed.
STOP_GRACE_S = 30.0


@dataclass(frozen=True)
class Load:
    """One offered load: `clients` clients at `rate` messages per second each."""

    clients: int
    rate: float

    @classmethod
    def parse(cls, text: str) -> Load:
        """`CxR`: C clients at R messages per second each."""
        try:
            clients, rate = text.lower().split("x")
            load = cls(int(clients), float(rate))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: want CLIENTSxRATE, e.g. 100x50") from None
        if load.clients < 1 or load.rate <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: clients and rate must be positive")
        return load

    def __str__(self) -> str:
        return f"{self.clients} × {self.rate:g}/s"


def _cpu_s() -> tuple[float, float]:
    """(CPU seconds the whole host has been busy, of every core; CPU seconds of this script's
    reaped descendants: the points, their servers and client processes).

    Busy is all cores' time less their idle and iowait time from /proc/stat: the kernel measures
    idle time exactly, but samples user and system time at its ticks, which misses much of a
    loop that wakes 1,000 times a second (their sum fell 0.1-0.3 cores short of our own CPU).
    """
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return math.nan, math.nan
    idle_s = (ticks[3] + ticks[4]) / os.sysconf("SC_CLK_TCK")  # user nice system idle iowait ...
    own = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (os.cpu_count() or 1) * time.monotonic() - idle_s, own.ru_utime + own.ru_stime


def run_point(options: list[str], out: Path, deadline_s: float) -> tuple[dict[str, Any], float]:
    """Run `msgprof point` with `options` into `out`: its point.json, and the cores other work
    on the host kept busy meanwhile (host busy time less the point's own, per wall second; the
    kernel's network work for the point counts as other). The point is stopped (SIGTERM, then
    SIGKILL) and reaped however this returns; its own children die with it."""
    procs = ChildProcesses()
    host0, own0 = _cpu_s()
    t0 = time.monotonic()
    argv = msgprof_argv(
        ["-q", "point", *options, "--deadline-s", f"{deadline_s:g}", "--out", str(out)]
    )
    log_path = out.with_name(out.name + ".log")
    try:
        proc = procs.start("point", argv, log_path)
        code = procs.wait(proc, time.monotonic() + deadline_s + POINT_OVERHEAD_S)
        if code is None:
            raise RuntimeError(f"point {out.name} ran past {deadline_s + POINT_OVERHEAD_S:g} s")
    finally:
        for _name, proc in procs.procs:
            procs.stop(proc, STOP_GRACE_S)
        procs.kill_all()
    doc = read_json(out / "point.json")
    if code != 0 or not doc:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"point {out.name} exited {code} without point.json:\n{tail}")
    host1, own1 = _cpu_s()
    return doc, ((host1 - host0) - (own1 - own0)) / (time.monotonic() - t0)


def client_cpu_us_per_msg(doc: dict[str, Any]) -> float:
    """CPU time of all client processes (user + system, over their load loop, connecting
    included) per message they sent, in µs."""
    details = doc.get("client_processes_detail") or []
    cpu_s = sum(d.get("cpu_user_s", 0.0) + d.get("cpu_system_s", 0.0) for d in details)
    sent = sum(d.get("sent", 0) for d in details)
    return cpu_s / sent * 1e6 if sent else math.nan


def paced_figures(doc: dict[str, Any], other_cores: float) -> dict[str, Any]:
    """What one paced point says of the generator's accuracy."""
    offered = doc["offered_msgs_per_s"]
    achieved = doc.get("achieved_msgs_per_s") or 0.0  # None: no window with every client on time
    sends = doc.get("measured_sends") or 0
    return {
        "offered": offered,
        "achieved": achieved,
        "ratio": achieved / offered,
        "lag_p99_us": doc.get("lag_p99_us") if doc.get("lag_p99_us") is not None else math.nan,
        "late_generator_share": doc.get("late_generator", 0) / sends if sends else math.nan,
        "late_window_full": doc.get("late_window_full", 0),
        "late_generator": doc.get("late_generator", 0),
        "measured_sends": sends,
        "cpu_us": client_cpu_us_per_msg(doc),
        "busiest": doc.get("client_busiest_thread_max") or 0.0,
        "verdict": doc["verdict"],
        "verdict_detail": doc.get("verdict_detail", ""),
        "other_cores": other_cores,
    }


def closed_figures(doc: dict[str, Any]) -> dict[str, Any]:
    """What the closed reference point says: the client's CPU per message without a schedule,
    and the throughput the server sustains at this client count."""
    return {
        "closed_cpu_us": client_cpu_us_per_msg(doc),
        "closed_msgs_per_s": doc.get("throughput_msgs_per_s") or 0.0,
        "closed_verdict": doc["verdict"],
    }


def _point_options(args: argparse.Namespace, load: Load, paced: bool) -> list[str]:
    """`msgprof point` options of the paced point of `load`, or of its closed reference: the
    same clients and as many messages per client, sent as fast as replies come."""
    options = ["--clients", str(load.clients)]
    if paced:
        options += ["--rate", f"{load.rate:g}", "--duration-s", f"{args.duration_s:g}",
                    "--warmup-s", f"{args.warmup_s:g}", "--arrivals", args.arrivals,
                    "--max-in-flight", str(args.max_in_flight)]  # fmt: skip
    else:
        options += ["--messages", str(max(1, round(load.rate * args.duration_s)))]
    if args.processes:
        options += ["--processes", str(args.processes)]
    return options


def _run_rounds(args: argparse.Namespace, root: Path) -> dict[Load, list[dict[str, Any]]]:
    """Every load in every round, paced and closed back to back; each round's figures per load."""
    results: dict[Load, list[dict[str, Any]]] = {load: [] for load in args.loads}
    deadline_s = args.duration_s + 60.0
    for round_no in range(args.rounds):
        order = args.loads if round_no % 2 == 0 else list(reversed(args.loads))
        for k, load in enumerate(order):
            figures: dict[str, Any] = {}
            paced_first = (round_no + k) % 2 == 0
            for paced in (paced_first, not paced_first):
                name = f"{round_no}-{load.clients}x{load.rate:g}-{'paced' if paced else 'closed'}"
                doc, other_cores = run_point(
                    _point_options(args, load, paced), root / name, deadline_s
                )
                figures.update(paced_figures(doc, other_cores) if paced else closed_figures(doc))
            results[load].append(figures)
            print(
                f"round {round_no + 1}/{args.rounds} {str(load):>13s}  achieved "
                f"{figures['achieved']:8.1f}/{figures['offered']:.0f} msg/s "
                f"({figures['ratio']:.4f})  lag p99 {figures['lag_p99_us']:8.0f} µs  "
                f"late {figures['late_generator_share']:6.2%}  client CPU "
                f"{figures['cpu_us']:5.0f} µs/msg (closed {figures['closed_cpu_us']:4.0f})  "
                f"busiest thread {figures['busiest']:4.0%}  other work "
                f"{figures['other_cores']:.2f} cores  {figures['verdict']}",
                file=sys.stderr,
                flush=True,
            )
    return results


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds, the lowest achieved rate, the paired CPU ratio, the busiest thread
    of any round and the verdicts counted."""
    median = {key: statistics.median(r[key] for r in rows) for key in
              ("offered", "achieved", "ratio", "lag_p99_us", "late_generator_share", "cpu_us",
               "closed_cpu_us", "closed_msgs_per_s", "other_cores")}  # fmt: skip
    verdicts = Counter(r["verdict"] for r in rows)
    return {
        **median,
        "achieved_min": min(r["achieved"] for r in rows),
        "cpu_ratio": statistics.median(r["cpu_us"] / r["closed_cpu_us"] for r in rows),
        "busiest": max(r["busiest"] for r in rows),
        "verdicts": ", ".join(f"{v} ×{n}" if n > 1 else v for v, n in sorted(verdicts.items())),
        "closed_not_ok": sorted({r["closed_verdict"] for r in rows} - {"ok"}),
    }


#: The table's columns: header, and the cell of a load's summary row.
COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("offered msg/s", lambda row: f"{row['offered']:.0f}"),
    ("achieved median", lambda row: f"{row['achieved']:.1f}"),
    ("achieved min", lambda row: f"{row['achieved_min']:.1f}"),
    ("achieved/offered", lambda row: f"{row['ratio']:.4f}"),
    ("lag p99 µs", lambda row: f"{row['lag_p99_us']:.0f}"),
    ("late (generator)", lambda row: f"{row['late_generator_share']:.2%}"),
    ("client CPU µs/msg", lambda row: f"{row['cpu_us']:.0f}"),
    ("closed CPU µs/msg", lambda row: f"{row['closed_cpu_us']:.0f}"),
    ("paced/closed CPU", lambda row: f"{row['cpu_ratio']:.2f}"),
    ("busiest thread", lambda row: f"{row['busiest']:.0%}"),
    ("closed msg/s", lambda row: f"{row['closed_msgs_per_s']:.0f}"),
    ("other work, cores", lambda row: f"{row['other_cores']:.2f}"),
    ("verdicts", lambda row: row["verdicts"]),
)


def _print_table(table: dict[Load, dict[str, Any]], markdown: bool) -> None:
    header = ("load", *(name for name, _cell in COLUMNS))
    lines = [(str(load), *(cell(row) for _name, cell in COLUMNS)) for load, row in table.items()]
    if markdown:
        aligns = ["---", *("---:" for _ in COLUMNS[:-1]), "---"]
        for line in (header, aligns, *lines):
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        for line in (header, *lines):
            print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))


def _shortfall_reasons(load: Load, rows: list[dict[str, Any]], row: dict[str, Any]) -> list[str]:
    """Why a load's achieved rate fell short, from its worst round and its closed reference."""
    worst = min(rows, key=lambda r: r["ratio"])
    why = [
        f"worst round: {worst['achieved']:.1f} of {worst['offered']:.0f} msg/s, verdict "
        f"{worst['verdict']}: {worst['verdict_detail']}"
    ]
    if worst["late_window_full"] > worst["late_generator"]:
        why.append(
            f"{worst['late_window_full']} late sends found the window full (replies came too "
            f"slowly: the server), {worst['late_generator']} were the generator's own"
        )
    elif worst["late_generator"]:
        why.append(
            f"{worst['late_generator']} of {worst['measured_sends']} measured sends were late "
            f"with room in the window: the generator fell behind"
        )
    if row["closed_msgs_per_s"] < 1.2 * row["offered"]:
        why.append(
            f"the closed loop reached only {row['closed_msgs_per_s']:.0f} msg/s at "
            f"{load.clients} clients: the offered load is near or above what the server sustains"
        )
    if row["busiest"] > 0.9:
        why.append(f"a client thread was busy {row['busiest']:.0%} of the time")
    return why


def _print_checks(
    table: dict[Load, dict[str, Any]],
    results: dict[Load, list[dict[str, Any]]],
    args: argparse.Namespace,
) -> bool:
    """Each load's achieved/offered against the target, met or MISSED (and why); True if all met."""
    print(
        f"\nmedians of {args.rounds} round(s) of {args.duration_s:g} s paced points "
        f"({args.warmup_s:g} s warm-up, {args.arrivals} arrivals, max in flight "
        f"{args.max_in_flight}); CPU ratio paired within each round"
    )
    all_met = True
    for load, row in table.items():
        met = row["ratio"] >= ACHIEVED_RATIO_TARGET
        all_met &= met
        print(
            f"{'met ' if met else 'MISSED'}  {load}: achieved/offered {row['ratio']:.4f} "
            f">= {ACHIEVED_RATIO_TARGET}"
        )
        if not met:
            for reason in _shortfall_reasons(load, results[load], row):
                print(f"        {reason}")
        if row["closed_not_ok"]:
            print(f"        note: closed reference verdict {', '.join(row['closed_not_ok'])}")
    return all_met


def _host_line() -> str:
    """Cores, load average and the tree's commit, for the record."""
    try:
        git = ["git", "rev-parse", "--short", "HEAD"]
        done = subprocess.run(
            git, capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10
        )
        commit = done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    load1, load5, _ = os.getloadavg()
    return (
        f"host: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), load average "
        f"{load1:.2f} / {load5:.2f} (1 / 5 min), commit {commit or '?'}"
    )


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--loads",
        nargs="+",
        type=Load.parse,
        default=None,
        metavar="CxR",
        help=f"loads: C clients at R msg/s each. Default: {' '.join(DEFAULT_LOADS)}",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds over all loads (medians taken). Default: 3, with --quick 2",
    )
    parser.add_argument(
        "--duration-s",
        type=float,
        default=None,
        help="seconds each paced client sends, warm-up included. Default: 10, with --quick 4",
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=None,
        help="seconds of each paced point left out of its figures. Default: 2, with --quick 1",
    )
    parser.add_argument(
        "--arrivals",
        choices=("uniform", "poisson"),
        default="uniform",
        help="the paced points' arrivals. Default: uniform",
    )
    parser.add_argument(
        "--max-in-flight", type=int, default=1, help="the paced points' window. Default: 1"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="client processes per point. Default: msgprof point's (one per core)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="shorter points and fewer rounds (~70 s)"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep every point's directory under DIR (new). Default: a temporary "
        "directory, deleted",
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    defaults = {"rounds": (3, 2), "duration_s": (10.0, 4.0), "warmup_s": (2.0, 1.0)}
    for key, (normal, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else normal)
    args.loads = args.loads or [Load.parse(text) for text in DEFAULT_LOADS]
    if args.rounds < 1 or not 0 <= args.warmup_s < args.duration_s:
        parser.error("want --rounds >= 1 and 0 <= --warmup-s < --duration-s")
    if len(set(args.loads)) != len(args.loads):
        parser.error("a load is given twice")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    print(_host_line(), file=sys.stderr, flush=True)
    if args.keep:
        args.keep.mkdir(parents=True)
        results = _run_rounds(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="msgprof-generator-") as tmpdir:
            results = _run_rounds(args, Path(tmpdir))
    print(_host_line(), file=sys.stderr, flush=True)
    table = {load: _summary(rows) for load, rows in results.items()}
    _print_table(table, args.markdown)
    return 0 if _print_checks(table, results, args) else 1


if __name__ == "__main__":
    sys.exit(main())
