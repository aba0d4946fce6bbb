"""The tool's entry: fuzz a fresh server (the default) or, with the hidden --worker, be one of
the fuzzer processes a run starts."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from msgprof import atomic

from . import __doc__ as DESCRIPTION
from .checks import check, format_report
from .dealer import dealer_worker
from .options import OPTIONS, FuzzConfig, build_parser
from .raw import raw_worker
from .run import run_fuzz


def main() -> int:
    parser = build_parser(DESCRIPTION)
    args = parser.parse_args()
    if args.worker:
        (dealer_worker if args.worker == "dealer" else raw_worker)(args)
        return 0

    config = FuzzConfig(**{name: getattr(args, name) for name in OPTIONS})
    tmp = None
    if args.out is None:
        tmp = tempfile.mkdtemp(prefix="msgprof-fuzz-")
        out = Path(tmp)
    else:
        out = args.out
        if out.exists() and any(out.iterdir()):
            parser.error(f"--out {out} is not empty")
    try:
        report = run_fuzz(config, out)
        failures = check(report)
        report["failures"] = failures
        atomic.write_json(out / "report.json", report)
        print(format_report(report, failures))
        if args.out is not None:
            shutil.rmtree(out / "queues", ignore_errors=True)
            print(f"\nreport, logs: {out}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0
