"""Latency over time: a paced point's latency per one-second interval (its latency.hlog) beside
its server's CPU and queue bytes (its resources.parquet), on one CLOCK_MONOTONIC time axis, so a
stall or a flush shows in both.

Per-interval histograms exist only in the point's own log and the monotonic origin of its
resource samples only in its resources.parquet's metadata, so this page, unlike the others,
reads the point directories; a point whose files are gone gets a note.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from hdrh.histogram import HdrHistogram
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.lines import Line2D

from msgprof import histlog
from msgprof.report import latency
from msgprof.report.analysis import point_dirs
from msgprof.report.pages.base import Report, note
from msgprof.report.pages.offered import (
    BEHIND,
    COLOURS,
    SLO_STYLE,
    paced_points,
    plain_log_ticks,
    slo_p99_ms,
)

#: Points drawn, the highest offered rates first.
TIMELINE_POINTS = 4
#: Per interval: (tag, quantile name, q, line style) of each latency line.
INTERVAL_LINES = [
    ("corrected", "p50", 0.5, "-"),
    ("corrected", "p99", 0.99, "-"),
    ("corrected", "max", 1.0, "-"),
    ("uncorrected", "p99", 0.99, "--"),
]
#: The key of resources.parquet's schema metadata: CLOCK_MONOTONIC seconds of its t_s = 0.
T0_KEY = b"t0_monotonic_s"


def interval_quantiles(items: list[histlog.Interval]) -> pd.DataFrame:
    """One row per interval start: start_s, length_s and `{tag}_{name}_us` of INTERVAL_LINES,
    the intervals of one start and tag added together (client processes, if the log has them
    apart)."""
    lengths: dict[float, float] = {}
    sums: dict[tuple[float, str], HdrHistogram] = {}
    for item in items:
        lengths[item.start_s] = max(lengths.get(item.start_s, 0.0), item.length_s)
        if (item.start_s, item.tag) not in sums:
            sums[item.start_s, item.tag] = histlog.new_histogram()
        sums[item.start_s, item.tag].add(item.hist)
    rows = []
    for start, length in sorted(lengths.items()):
        row = {"start_s": start, "length_s": length}
        for tag, name, q, _style in INTERVAL_LINES:
            hist = sums.get((start, tag))
            row[f"{tag}_{name}_us"] = (
                histlog.quantiles_us(hist, [q])[0] if hist is not None else math.nan
            )
        rows.append(row)
    return pd.DataFrame(rows)


def monotonic_samples(path: Path) -> pd.DataFrame | None:
    """The server's resource samples of a point with `t_mono_s`, the CLOCK_MONOTONIC time of each
    (t_s + the file's t0_monotonic_s); None without the file or that metadata. Samples taken as
    the server exited read RSS 0 and are left out."""
    if not path.is_file():
        return None
    table = pq.read_table(path)
    origin = (table.schema.metadata or {}).get(T0_KEY)
    if origin is None:
        return None
    frame = table.to_pandas()
    frame = frame[frame["rss_bytes"] > 0]
    return frame.assign(t_mono_s=frame["t_s"] + float(origin))


def _bytes_unit(peak: float) -> tuple[float, str]:
    """(divisor, unit) that reads well for a peak byte count."""
    for divisor, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if peak >= divisor:
            return float(divisor), unit
    return 1.0, "bytes"


def _latency_panel(ax: Any, intervals: pd.DataFrame, origin: float, slo_ms: float) -> None:
    """Each interval's quantiles (ms, log) as steps over the interval."""
    ends = intervals["start_s"] + intervals["length_s"]
    x = pd.concat([intervals["start_s"], ends.iloc[-1:]]) - origin
    for tag, name, _q, style in INTERVAL_LINES:
        y = intervals[f"{tag}_{name}_us"] / 1e3
        y = pd.concat([y, y.iloc[-1:]])
        ax.step(x, y, where="post", color=COLOURS[name], linestyle=style, linewidth=1.1)
    ax.axhline(slo_ms, **SLO_STYLE)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log scale)")
    plain_log_ticks(ax)


def _resource_panels(axes: Any, samples: pd.DataFrame, origin: float) -> None:
    """CPU % and queue bytes of the server against the same time axis."""
    x = samples["t_mono_s"] - origin
    axes[0].plot(x, samples["cpu_percent"], color="0.15", linewidth=1, marker=".", markersize=2)
    axes[0].set_ylabel("server CPU (% of one core)")
    divisor, unit = _bytes_unit(float(samples["queue_bytes"].max()))
    axes[1].plot(x, samples["queue_bytes"] / divisor, color="tab:brown", linewidth=1,
                 marker=".", markersize=2)  # fmt: skip
    axes[1].set_ylabel(f"queue files ({unit})")


def _point_column(axes: Any, row: Any, path: Path | None, slo_ms: float) -> None:
    """One point: latency per interval on top, the server's CPU and queue bytes below."""
    title = f"{row['point']}\n{row['offered_msgs_per_s']:,.0f} messages/s offered"
    verdict = row["verdict"]
    if isinstance(verdict, str) and verdict != "ok":
        title += f"\nverdict {verdict}" + (" (not the server)" if verdict == BEHIND else "")
    axes[0].set_title(title, fontsize=8.5)
    items = latency.read_intervals(path) if path is not None else []
    if not items:
        for ax in axes:
            note(ax, "")
        note(axes[0], "no latency.hlog in the point's directory")
        return
    intervals = interval_quantiles(items)
    origin = float(intervals["start_s"].iloc[0])
    _latency_panel(axes[0], intervals, origin, slo_ms)
    samples = monotonic_samples(path / "resources.parquet")
    if samples is None or samples.empty:
        note(axes[1], "no resources.parquet with t0_monotonic_s:\nno server samples on this axis")
        note(axes[2], "")
    else:
        _resource_panels(axes[1:], samples, origin)
    axes[-1].set_xlabel("seconds since the start of the first interval")


def _legend(fig: Any) -> None:
    handles = [
        Line2D([], [], color=COLOURS[name], linestyle=style,
               label=f"{name} {'corrected' if tag == 'corrected' else 'uncorrected (RTT)'}")
        for tag, name, _q, style in INTERVAL_LINES
    ]  # fmt: skip
    handles += [
        Line2D([], [], **SLO_STYLE, label="SLO p99"),
        Line2D([], [], color="0.15", marker=".", label="server CPU"),
        Line2D([], [], color="tab:brown", marker=".", label="server queue files"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, bbox_to_anchor=(0.5, 0.005))


def timeline_page(report: Report, pdf: PdfPages) -> None:
    """Latency, CPU and queue bytes over time of the paced points with the highest offered
    rates; no page when the run has no paced point."""
    paced = paced_points(report.points)
    if paced.empty:
        return
    chosen = paced.sort_values(["offered_msgs_per_s", "point"], ascending=[False, True])
    chosen = chosen.head(TIMELINE_POINTS)
    fig = report.new_page(
        "Latency over time",
        f"the {len(chosen)} paced point(s) with the highest offered load; latency per 1 s "
        "interval of the time replies were read (messages past warm-up only), the server sampled "
        "a few times a second; one CLOCK_MONOTONIC axis, 0 = the start of the point's first "
        "interval (intervals are whole seconds of the host's clock, the first and last partly "
        "filled)",
    )
    axes = fig.subplots(3, len(chosen), sharex="col", squeeze=False, height_ratios=[2, 1, 1])
    fig.subplots_adjust(left=0.07, right=0.98, top=0.84, bottom=0.16, hspace=0.12, wspace=0.28)
    slo_ms = slo_p99_ms(report.run_dir)
    paths = {path.name: path for _group, path in point_dirs(report.run_dir)}
    for column, (_i, row) in enumerate(chosen.iterrows()):
        _point_column(axes[:, column], row, paths.get(row["point"]), slo_ms)
    _legend(fig)
    pdf.savefig(fig)
