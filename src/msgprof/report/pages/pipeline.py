"""The page "The pipeline's own cost": the time and memory of each workflow job, from the
`benchmark:` file Snakemake keeps per job (benchmarks/, one TSV per job: wall seconds `s`,
`max_rss` in MB, `cpu_time` in seconds, ...); no page without them (a run made by hand)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages

from msgprof.report.pages.base import Report, fmt
from msgprof.report.pages.tables import table_page

BENCHMARKS_DIR = "benchmarks"
HEADER = ["jobs of", "jobs", "wall s (sum)", "wall s (longest)", "CPU s (sum)",
          "max RSS MB (largest)"]  # fmt: skip


def read_benchmarks(run_dir: Path) -> pd.DataFrame:
    """One row per job: `group` (the file's directory under benchmarks/, or its name for a
    job of its own), `job`, and the numbers Snakemake measured (unreadable files left out)."""
    rows = []
    root = run_dir / BENCHMARKS_DIR
    for path in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        try:
            frame = pd.read_csv(path, sep="\t")
        except (OSError, ValueError, pd.errors.ParserError):
            continue
        if frame.empty or "s" not in frame.columns:
            continue
        rel = path.relative_to(root)
        group = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        rows.append({"group": group, "job": str(rel.with_suffix("")),
                     **{k: pd.to_numeric(frame[k], errors="coerce").iloc[-1]
                        for k in ("s", "max_rss", "cpu_time") if k in frame.columns}})  # fmt: skip
    return pd.DataFrame(rows).reindex(columns=["group", "job", "s", "max_rss", "cpu_time"])


def pipeline_page(report: Report, pdf: PdfPages) -> None:
    """Per group of jobs: how many, their wall time (sum and longest), CPU time, largest RSS."""
    jobs = read_benchmarks(report.run_dir)
    if jobs.empty:
        return
    by = jobs.groupby("group", sort=False)
    summary = pd.DataFrame({"jobs": by.size(), "s_sum": by["s"].sum(), "s_max": by["s"].max(),
                            "cpu": by["cpu_time"].sum(min_count=1),
                            "rss": by["max_rss"].max()})  # fmt: skip
    summary = summary.sort_values("s_sum", ascending=False)
    rows = [[str(group), fmt(int(r.jobs)), fmt(r.s_sum, 1), fmt(r.s_max, 1), fmt(r.cpu, 1),
             fmt(r.rss, 0)] for group, r in summary.iterrows()]  # fmt: skip
    cpu = jobs["cpu_time"].sum(min_count=1)
    rows.append(["all jobs", fmt(len(jobs)), fmt(jobs["s"].sum(), 1), fmt(jobs["s"].max(), 1),
                 fmt(cpu, 1), fmt(jobs["max_rss"].max(), 0)])  # fmt: skip
    subtitle = ("the workflow's jobs as Snakemake's benchmark files measured them "
                "(benchmarks/): wall and CPU seconds of the job's processes, their largest "
                "resident memory; the report's own job is measured after it is drawn")
    table_page(report, pdf, "The pipeline's own cost", subtitle, HEADER, rows,
               [0.25, 0.1, 0.15, 0.15, 0.15, 0.17])  # fmt: skip
