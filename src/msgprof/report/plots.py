"""The profiling report of a run: msg_proc_profiling.pdf.

Pages, in order: (1) client id vs connect time and (2) client id vs median RTT, the two plots of
the seed's design; (3) RTT quantiles vs clients; (4) throughput vs clients and the closed-loop
check RTT ≈ clients ÷ throughput; only when the run has paced points, latency against offered
load with the knee, and latency over time beside the server's CPU and queue bytes; (5) server
CPU, memory, descriptors and queue bytes over time, and with profiled points where the server's
time goes and its flame graph; (6) verdicts and errors per point, then the service-level gates
(slo.csv) when there are any; (7) the system limits of each host; with a capacity search, its
page; (8) provenance: manifest and config, and the pipeline's own cost (benchmarks/). A page
whose input is missing says so instead of failing, so a run that hit a limit still gets its
report. Every page is also written as a PNG under figures/ (msgprof.report.figures). The PDF
carries no creation date: the same run renders to the same bytes.

The pages read what `msgprof.report.analysis` writes (analysis.csv, points.csv, resources.csv,
limits.csv, latency.csv; made first when missing) and the run's manifest.json and config.yaml.
Only latency over time opens point directories: the per-second histograms of latency.hlog and
the monotonic origin of resources.parquet are in no table. Each kind of page is a module of
`msgprof.report.pages`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_pdf import PdfPages

from msgprof import atomic
from msgprof.report.figures import FIGURES_DIR, Pages, replace_dir
from msgprof.report.pages.base import STYLE, Report
from msgprof.report.pages.capacity import capacity_page
from msgprof.report.pages.clients import client_page
from msgprof.report.pages.load import rtt_page, throughput_page
from msgprof.report.pages.offered import offered_page
from msgprof.report.pages.pipeline import pipeline_page
from msgprof.report.pages.profile import flame_page, profile_page
from msgprof.report.pages.provenance import provenance_page
from msgprof.report.pages.resources import resource_page
from msgprof.report.pages.slo import slo_page
from msgprof.report.pages.tables import limits_page, verdict_page
from msgprof.report.pages.timeline import timeline_page

REPORT_NAME = "msg_proc_profiling.pdf"


def render(run_dir: Path | str, out: Path | str, figures: Path | None = None) -> None:
    """Write the report of `run_dir` to `out` (not atomically: `write_report` renames it), and
    each page as a PNG under `figures` when given."""
    report = Report(Path(run_dir))
    with (
        matplotlib.rc_context(STYLE),
        PdfPages(out, metadata={"CreationDate": None, "Creator": "msgprof"}) as pdf,
    ):
        pages = Pages(pdf, figures)
        with pages.under("Clients"):
            client_page(
                report,
                pages,
                "connect_ms",
                "connect time (ms)",
                "Client id vs connect time",
                "setup time: connect() to the ZMTP handshake (socket monitor), per client",
            )
            client_page(
                report,
                pages,
                "rtt_median_us",
                "median RTT (µs)",
                "Client id vs median RTT",
                "median over each client's acknowledged round trips (one message in flight per "
                "client)",
            )
        with pages.under("Load"):
            rtt_page(report, pages)
            throughput_page(report, pages)
            offered_page(report, pages)
            timeline_page(report, pages)
        with pages.under("Server"):
            resource_page(report, pages)
            profile_page(report, pages)
            flame_page(report, pages)
        with pages.under("Verdicts"):
            verdict_page(report, pages)
            slo_page(report, pages)
            limits_page(report, pages)
            capacity_page(report, pages)
        with pages.under("Provenance"):
            provenance_page(report, pages)
            pipeline_page(report, pages)


def write_report(run_dir: Path | str) -> Path:
    """Render run_dir/msg_proc_profiling.pdf atomically (tables are made first if missing),
    and run_dir/figures/ (each page as a PNG, by category) in place of the old one."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".{FIGURES_DIR}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    path = atomic.replace_into(run_dir / REPORT_NAME, lambda out: render(run_dir, out, tmp))
    replace_dir(tmp, run_dir / FIGURES_DIR)
    return path
