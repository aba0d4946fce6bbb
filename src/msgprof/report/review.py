"""The review commands, `msgprof compare`, `check` and `runs`: their arguments and what each
runs (msgprof.report.compare, .slo, .runs); msgprof.cli wires them in (docs/review.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parsers(sub: Any) -> None:
    """The parsers of compare, check and runs (under `msgprof`'s subparsers `sub`)."""
    cmd = sub.add_parser(
        "compare",
        help="compare two runs point by point, with intervals and a verdict per metric",
        description="Match the points of RUN_A and RUN_B by their parameters and say for "
        "each metric whether B is faster, slower or the same as A: the ratio B/A with a "
        "bootstrap interval (over repetitions; over clients for a single repetition). Writes "
        "compare.csv, compare.json and compare.pdf to --out. docs/review.md.",
    )
    cmd.add_argument("run_a", type=Path, help="the baseline run directory")
    cmd.add_argument("run_b", type=Path, help="the run compared with it")
    cmd.add_argument("--out", type=Path, help="default: RUN_B/compare-to-<RUN_A's name>/")
    cmd.add_argument("--min-change", type=float, default=0.05, help="a smaller change is "
                     "`same` whatever its interval. Default: %(default)s")  # fmt: skip
    cmd.add_argument("--confidence", type=float, default=0.95,
                     help="of the interval. Default: %(default)s")  # fmt: skip
    cmd.add_argument("--resamples", type=int, default=2000,
                     help="bootstrap resamples. Default: %(default)s")  # fmt: skip
    cmd.add_argument("--seed", type=int, default=1, help="of the bootstrap (the same seed, "
                     "the same intervals). Default: %(default)s")  # fmt: skip
    cmd.add_argument("--fail-on", choices=("slower", "faster", "changed"),
                     help="exit 1 when any metric of any point has this verdict "
                     "(changed: slower or faster), for regression gates in CI")  # fmt: skip
    cmd = sub.add_parser(
        "check",
        help="evaluate service-level gates on a run (exit 1 when one fails)",
        description="Evaluate every --slo gate at every point of RUN (points.csv) that the "
        "--where filters keep; print each gate with its failing points, write slo.csv and "
        "exit 1 when any gate failed. A gate is COLUMN OP VALUE, OP one of <= < >= > == !=.",
        epilog="examples:\n  msgprof check results/default --slo 'rtt_p99_us<=5000' --slo "
        "'lost==0'\n  msgprof check results/default --slo 'verdict==ok' --where "
        "'clients<=1000'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("run_dir", type=Path, help="the run directory")
    cmd.add_argument("--slo", action="append", required=True, metavar="GATE", help="a gate")
    cmd.add_argument("--where", action="append", default=[], metavar="FILTER",
                     help="check only the points where FILTER holds (same syntax)")  # fmt: skip
    cmd.add_argument("--out", type=Path, help="slo.csv's path. Default: RUN/slo.csv")
    cmd.add_argument("--report-only", action="store_true",
                     help="exit 0 even when a gate fails (the workflow's slo.csv)")  # fmt: skip
    cmd = sub.add_parser(
        "runs",
        help="list the run directories under results/ (and write results/index.csv)",
        description="One row per run directory: commit, dirty flag, host, start, config hash, "
        "points, verdict counts and headline numbers. Incomplete or unreadable runs are "
        "listed as such. Writes RESULTS/index.csv.",
    )
    cmd.add_argument("results", type=Path, nargs="?", default=Path("results"),
                     help="the results directory. Default: %(default)s")  # fmt: skip


def run_compare(args: argparse.Namespace) -> int:
    from msgprof.report import compare

    options = compare.Options(args.min_change, args.confidence, args.resamples, args.seed)
    result = compare.compare(compare.load_run(args.run_a), compare.load_run(args.run_b), options)
    print("\n".join(compare.summary_lines(result)))
    for path in compare.write_comparison(result, args.out or
                                         args.run_b / f"compare-to-{result.a.name}"):  # fmt: skip
        print(path)
    return 1 if compare.fails(result.table, args.fail_on) else 0


def run_check(args: argparse.Namespace) -> int:
    from msgprof import atomic
    from msgprof.report import slo
    from msgprof.report.compare import load_run

    gates = [slo.parse_gate(text) for text in args.slo]
    where = [slo.parse_gate(text) for text in args.where]
    table = slo.evaluate(load_run(args.run_dir).points, gates, where)
    print("\n".join(slo.summary_lines(table)))
    out = args.out or args.run_dir / "slo.csv"
    print(atomic.write_text(out, table.to_csv(index=False, lineterminator="\n")))
    return 1 if slo.failed(table) and not args.report_only else 0


def run_runs(args: argparse.Namespace) -> int:
    import pandas as pd

    from msgprof import atomic
    from msgprof.report.runs import index

    table = index(args.results)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(table.drop(columns=["path"]).to_string(index=False) if len(table)
              else f"no run directory under {args.results}")  # fmt: skip
    print(atomic.write_text(args.results / "index.csv",
                            table.to_csv(index=False, lineterminator="\n")))  # fmt: skip
    return 0


#: `msgprof COMMAND` -> what it runs (its exit code).
COMMANDS = {"compare": run_compare, "check": run_check, "runs": run_runs}
