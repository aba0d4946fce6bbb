"""Page 5: the server's CPU, memory, descriptors and queue bytes over time (resources.csv)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from msgprof.report.host_tables import MASTER
from msgprof.report.pages.base import MAX_LEGEND_ENTRIES, Report, clients_legend, label, note

RESOURCE_PANELS = [
    ("cpu_percent", 1.0, "CPU (% of one core)"),
    ("rss_bytes", float(1 << 20), "RSS (MiB)"),
    ("open_fds", 1.0, "open descriptors"),
    ("queue_bytes", float(1 << 20), "queue files (MiB)"),
]


def _alive(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    """Samples of a live server: one taken as it exited reads RSS 0 and would plot a false drop."""
    return None if frame is None else frame[frame["rss_bytes"] > 0]


def _step_windows(report: Report, steps: pd.DataFrame) -> list[tuple[Any, float, float]]:
    """(step row, first t_s, last t_s) of each master step's resource samples."""
    windows = []
    for _i, row in steps.iterrows():
        frame = _alive(report.samples(row["point"]))
        if frame is not None and len(frame):
            windows.append((row, float(frame["t_s"].min()), float(frame["t_s"].max())))
    return windows


def _master_resources(report: Report, steps: pd.DataFrame) -> pd.DataFrame | None:
    """The master server's samples on one time axis: its own over the whole case, else the
    steps' put together."""
    whole = report.samples(MASTER)
    if whole is not None:
        return _alive(whole)
    frames = [_alive(report.samples(p)) for p in steps["point"]]
    frames = [f for f in frames if f is not None]
    return pd.concat(frames).sort_values("t_s") if frames else None


def _sweep_column(report: Report, axes: Any) -> None:
    """Left column: the sweep points overlaid, each on the time since its server started."""
    sweep = report.points[report.points["phase"] == "sweep"]
    shown = []
    for _i, row in sweep.iterrows():
        frame = _alive(report.samples(row["point"]))
        if frame is None or frame.empty:
            continue
        shown.append(row["point"])
        for ax, (column, scale, _label_text) in zip(axes, RESOURCE_PANELS):
            ax.plot(
                frame["t_s"],
                frame[column] / scale,
                color=report.colour(row["clients"]),
                linewidth=0.9,
                marker=".",
                markersize=2,
                label=label(row),
            )
    axes[0].set_title("sweep points, overlaid (time since each server started)")
    if not shown:
        for ax in axes:
            note(ax, "")
        note(axes[0], "no sweep points with resources.parquet")
    elif len(shown) <= MAX_LEGEND_ENTRIES:
        axes[0].legend(loc="upper left", bbox_to_anchor=(2.28, 1.0), title="sweep point")
    else:
        handles = clients_legend(report, sweep[sweep["point"].isin(shown)])
        axes[0].legend(
            handles=handles, loc="upper left", bbox_to_anchor=(2.28, 1.0), title="sweep points"
        )
    axes[-1].set_xlabel("time since the server started (s)")


def _shade_steps(axes: Any, windows: list[tuple[Any, float, float]]) -> None:
    """Each step's window shaded (blue ramp-up, orange ramp-down) and numbered at the top."""
    for ax in axes:
        for row, t0, t1 in windows:
            shade = "tab:blue" if row["phase"] == "ramp_up" else "tab:orange"
            ax.axvspan(t0, t1, color=shade, alpha=0.13, linewidth=0)
    for row, t0, t1 in windows:
        axes[0].text(
            (t0 + t1) / 2,
            0.97,
            f"{row['step']}{'↑' if row['phase'] == 'ramp_up' else '↓'}",
            ha="center",
            va="top",
            fontsize=7,
            transform=axes[0].get_xaxis_transform(),
        )
    bottom, top = axes[0].get_ylim()
    axes[0].set_ylim(bottom, top + 0.2 * (top - bottom))  # room for the step labels


def _master_column(report: Report, axes: Any) -> None:
    """Right column: the master server on one time axis, its steps shaded."""
    steps = report.points[report.points["phase"] != "sweep"]
    master = _master_resources(report, steps) if len(steps) else None
    axes[0].set_title("master test case: one server, steps one after another")
    if master is None or master.empty:
        for ax in axes:
            note(ax, "")
        note(axes[0], "no master test case in this run")
        return
    windows = _step_windows(report, steps)
    for ax, (column, scale, _t) in zip(axes, RESOURCE_PANELS):
        ax.plot(
            master["t_s"],
            master[column] / scale,
            color="0.15",
            linewidth=1,
            marker=".",
            markersize=2,
        )
    _shade_steps(axes, windows)
    axes[-1].set_xlabel("time since the master server started (s)")
    handles = [
        Patch(color="tab:blue", alpha=0.25, label="ramp-up step"),
        Patch(color="tab:orange", alpha=0.25, label="ramp-down step"),
        Line2D([], [], color="0.15", label="master server"),
    ] + [Line2D([], [], linestyle="none", label=label(row)) for row, _t0, _t1 in windows]
    axes[-1].legend(
        handles=handles, loc="lower left", bbox_to_anchor=(1.02, 0.0), title="master steps"
    )


def resource_page(report: Report, pdf: PdfPages) -> None:
    fig = report.new_page(
        "Server resources over time",
        "sampled from the server process a few times a second; CPU as % of one core; queue files = "
        "bytes the per-client queues hold on disk",
    )
    axes = fig.subplots(len(RESOURCE_PANELS), 2, sharex="col")
    fig.subplots_adjust(left=0.07, right=0.8, top=0.88, bottom=0.07, hspace=0.15, wspace=0.22)
    _sweep_column(report, axes[:, 0])
    _master_column(report, axes[:, 1])
    for row_axes, (_c, _s, label_text) in zip(axes, RESOURCE_PANELS):
        for ax in row_axes:
            if ax.axison:
                ax.set_ylabel(label_text)
    pdf.savefig(fig)
