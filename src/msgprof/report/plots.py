"""The profiling report of a run: msg_proc_profiling.pdf.

Pages, in order: (1) client id vs connect time and (2) client id vs median RTT, the two plots of
the seed's design; (3) RTT quantiles vs clients; (4) throughput vs clients and the closed-loop
check RTT ≈ clients ÷ throughput; (5) server CPU, memory, descriptors and queue bytes over time;
(6) verdicts and errors per point; (7) the system limits of each host; (8) provenance: manifest
and config. A page whose input is missing says so instead of failing, so a run that hit a limit
still gets its report. The PDF carries no creation date: the same run renders to the same bytes.
"""

from __future__ import annotations

import json
import logging
import math
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from msgprof import atomic
from msgprof.report.analysis import read_tables

log = logging.getLogger("msgprof.plots")

REPORT_NAME = "msg_proc_profiling.pdf"

#: A4 landscape, in inches.
PAGE_SIZE = (11.69, 8.27)
#: Series beyond this many get a colour bar and a style legend instead of one legend entry each.
MAX_LEGEND_ENTRIES = 14
#: Series with more points than this are drawn as an image inside the PDF (a small, fast file).
RASTER_ABOVE = 3000
#: A value range at least this wide (max ÷ min) gets a log axis.
LOG_RATIO = 30.0
#: Rows of the verdict table per page.
TABLE_ROWS = 28
#: Host columns of the limits table per page.
HOSTS_PER_PAGE = 4

_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "figure.titlesize": 13,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "pdf.compression": 6,
    "pdf.fonttype": 42,  # TrueType: the text of the report can be searched and copied
    "savefig.dpi": 150,
}

#: How each phase is drawn: marker, line style.
PHASE_STYLE = {"sweep": ("o", "-"), "ramp_up": ("^", "-"), "ramp_down": ("v", "--")}
QUANTILE_COLOURS = {"p50": "tab:blue", "p90": "tab:orange", "p99": "tab:red", "max": "0.35"}
MESSAGES_STYLE = [
    ("o", "-"),
    ("s", "--"),
    ("D", ":"),
    ("^", "-."),
    ("v", (0, (5, 1))),
    ("P", (0, (1, 1))),
]
RESOURCE_PANELS = [
    ("cpu_percent", 1.0, "CPU (% of one core)"),
    ("rss_bytes", float(1 << 20), "RSS (MiB)"),
    ("open_fds", 1.0, "open descriptors"),
    ("queue_bytes", float(1 << 20), "queue files (MiB)"),
]
# Truncated viridis: its pale yellow end is hard to see on white.
_CMAP = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, 256)), name="clients")


class Report:
    """The inputs of the report and the state shared by its pages."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.run = run_dir.resolve().name
        self.clients, self.points = read_tables(run_dir)
        self.dirs = {
            row.point: run_dir / ("points" if row.phase == "sweep" else "master") / row.point
            for row in self.points.itertuples()
        }
        self.page = 0
        clients = self.points["clients"].dropna().astype(float)
        lo, hi = (clients.min(), clients.max()) if len(clients) else (1.0, 10.0)
        if lo == hi:
            lo, hi = lo / 2, hi * 2
        self.norm = LogNorm(vmin=max(lo, 0.5), vmax=hi)

    def colour(self, clients: Any) -> Any:
        return _CMAP(self.norm(float(clients))) if pd.notna(clients) else "0.5"

    def colour_bar(
        self, fig: Figure, axes: Any = None, rect: tuple[float, ...] | None = None
    ) -> None:
        """A colour bar of clients beside `axes`, or in its own axes at `rect`."""
        mappable = ScalarMappable(norm=self.norm, cmap=_CMAP)
        if rect is not None:
            bar = fig.colorbar(mappable, cax=fig.add_axes(rect))
        else:
            bar = fig.colorbar(mappable, ax=axes, pad=0.01, aspect=40)
        bar.set_label("clients in the point (colour)")

    def new_page(self, title: str, subtitle: str = "") -> Figure:
        fig = Figure(figsize=PAGE_SIZE)
        FigureCanvasAgg(fig)
        self.page += 1
        fig.suptitle(title, fontweight="bold", y=0.985)
        if subtitle:
            text = "\n".join(textwrap.wrap(subtitle, 170))
            fig.text(0.5, 0.94, text, ha="center", va="center", fontsize=8.5, color="0.25")
        fig.text(
            0.99,
            0.01,
            f"msgprof · run {self.run} · page {self.page}",
            ha="right",
            fontsize=7,
            color="0.4",
        )
        return fig

    def resources(self, point: str) -> pd.DataFrame | None:
        path = self.dirs.get(point)
        file = path / "resources.parquet" if path else None
        if file is None or not file.is_file():
            return None
        return _alive(
            pq.read_table(
                file, columns=[name for name, _s, _l in RESOURCE_PANELS] + ["t_s"]
            ).to_pandas()
        )


def _alive(frame: pd.DataFrame) -> pd.DataFrame:
    """Samples of a live server: one taken as it exited reads RSS 0 and would plot a false drop."""
    return frame[frame["rss_bytes"] > 0]


def _note(ax: Any, text: str) -> None:
    """Replace a plot by a centred note (an input the page needs is absent)."""
    ax.set_axis_off()
    ax.text(
        0.5,
        0.5,
        text,
        ha="center",
        va="center",
        fontsize=10,
        color="0.3",
        wrap=True,
        transform=ax.transAxes,
    )


def _log_if_wide(ax: Any, values: Any, axis: str = "y", ratio: float = LOG_RATIO) -> None:
    """Log scale on `axis` when the positive values span at least `ratio`."""
    v = pd.to_numeric(pd.Series(np.ravel(values)), errors="coerce").astype(float)
    v = v[(v > 0) & np.isfinite(v)]
    if len(v) and v.max() / v.min() >= ratio:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _label(row: Any) -> str:
    """A short legend label for a point or step."""
    if row["phase"] == "sweep":
        return f"{row['point']} ({row['clients']}×{row['messages']})"
    arrow = "↑" if row["phase"] == "ramp_up" else "↓"
    return f"step {row['step']} {arrow} {row['clients']}×{row['messages']}"


def _clients_legend(report: Report, points: pd.DataFrame) -> list[Line2D]:
    """Legend of too many series to name one by one: a line per clients value (the colour)."""
    counts = points.groupby("clients").size()
    return [
        Line2D([], [], color=report.colour(c), label=f"{c} clients ({n} point{'s' * (n > 1)})")
        for c, n in counts.items()
    ]


# -- pages 1 and 2: the seed's plots ------------------------------------------------------------


def _client_panel(report: Report, ax: Any, points: pd.DataFrame, column: str, unit: str) -> None:
    """One series per point: client id vs `column`, colour by clients, marker by phase."""
    shown = 0
    values = []
    for _i, row in points.iterrows():
        rows = report.clients[report.clients["point"] == row["point"]].sort_values("client_id")
        y = rows[column]
        if y.notna().sum() == 0:
            continue
        marker, style = PHASE_STYLE.get(row["phase"], PHASE_STYLE["sweep"])
        missing = int(y.isna().sum())
        label = _label(row) + (f", {missing} no value" if missing else "")
        ax.plot(
            rows["client_id"],
            y,
            color=report.colour(row["clients"]),
            marker=marker,
            linestyle=style,
            markersize=3 if len(rows) <= 300 else 0,
            linewidth=0.9,
            alpha=0.85,
            label=label,
            rasterized=len(rows) > RASTER_ABOVE,
        )
        values.append(y.dropna())
        shown += 1
    if not shown:
        _note(ax, f"no {column} values in these points")
        return
    _log_if_wide(ax, pd.concat(values))
    if (points["phase"] == "sweep").all():  # every point starts at id 1: let small ones show
        _log_if_wide(ax, points["clients"], "x")
    ax.set_xlabel("client id")
    ax.set_ylabel(unit)
    where = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}
    if shown <= MAX_LEGEND_ENTRIES:
        ax.legend(title="point (clients×messages)", **where)
    else:
        ax.legend(handles=_clients_legend(report, points), title=f"{shown} points", **where)


def _client_page(
    report: Report, pdf: PdfPages, column: str, unit: str, title: str, subtitle: str
) -> None:
    """One of the seed's two plots: sweep points on top, the master test case below."""
    fig = report.new_page(title, subtitle)
    axes = fig.subplots(2, 1)
    fig.subplots_adjust(left=0.07, right=0.69, top=0.89, bottom=0.08, hspace=0.35)
    sweep = report.points[report.points["phase"] == "sweep"]
    master = report.points[report.points["phase"] != "sweep"]
    for ax, frame, what in (
        (axes[0], sweep, "sweep points"),
        (axes[1], master, "master test case"),
    ):
        ax.set_title(f"{what}: {title[0].lower()}{title[1:]}", loc="left")
        if frame.empty:
            _note(ax, f"no {what} in this run")
        else:
            _client_panel(report, ax, frame, column, unit)
    if not master.empty:
        axes[1].set_title(
            "master test case: ramp-up ▲ solid, ramp-down ▼ dashed; "
            "client ids continue from step to step",
            loc="left",
        )
    report.colour_bar(fig, rect=(0.94, 0.08, 0.011, 0.81))
    pdf.savefig(fig)


# -- pages 3 and 4: latency and throughput against load ------------------------------------------


def _sweep_or_all(points: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The sweep points, or the master steps when the run has no sweep."""
    sweep = points[points["phase"] == "sweep"]
    if len(sweep):
        return sweep, "sweep points"
    return points, "master steps (the run has no sweep)"


def _by_messages(points: pd.DataFrame) -> Iterator[tuple[str, Any, Any, pd.DataFrame]]:
    """One series per messages value (and per CURVE on/off when the run has both):
    (label, marker, line style, points sorted by clients)."""
    curve = points["curve"].fillna(False).astype(bool) if "curve" in points else None
    keys = ["messages"] if curve is None or not curve.any() else ["messages", curve.rename("on")]
    for k, (key, frame) in enumerate(points.groupby(keys, sort=True)):
        key = key if isinstance(key, tuple) else (key,)
        label = f"{key[0]} messages/client" + (", CURVE" if len(key) > 1 and key[1] else "")
        marker, style = MESSAGES_STYLE[k % len(MESSAGES_STYLE)]
        yield label, marker, style, frame.sort_values("clients")


def _series(
    ax: Any, frame: pd.DataFrame, column: str, colour: Any, marker: str, style: Any
) -> None:
    """Markers for every point (hollow: verdict not ok), a line through the medians of the reps."""
    ok = frame["verdict"] == "ok"
    kw = {"marker": marker, "linestyle": "none", "markersize": 5}
    ax.plot(frame.loc[ok, "clients"], frame.loc[ok, column], color=colour, **kw)
    ax.plot(
        frame.loc[~ok, "clients"],
        frame.loc[~ok, column],
        color=colour,
        markerfacecolor="white",
        **kw,
    )
    medians = frame.groupby("clients")[column].median().dropna()
    ax.plot(medians.index, medians.values, color=colour, linestyle=style, linewidth=1.2)


def _messages_legend(points: pd.DataFrame) -> list[Line2D]:
    handles = [
        Line2D(
            [], [], color="0.3", marker=marker, linestyle=style, label=label
        )
        for label, marker, style, _f in _by_messages(points)
    ]
    handles.append(
        Line2D(
            [],
            [],
            color="0.3",
            marker="o",
            markerfacecolor="white",
            linestyle="none",
            label="hollow: verdict not ok",
        )
    )
    return handles


def _load_page(
    report: Report,
    pdf: PdfPages,
    title: str,
    subtitle: str,
    column: str,
    margins: dict[str, float],
) -> tuple[pd.DataFrame, Figure, list[Any]] | None:
    """Start a page of points against their load: (points, figure, axes); None when no point
    has a `column` value (the page is then saved with a note). Two panels when `margins` has
    a `wspace`, else one."""
    points, what = _sweep_or_all(report.points)
    fig = report.new_page(title, f"{what}; {subtitle}")
    axes = list(np.atleast_1d(fig.subplots(1, 2 if "wspace" in margins else 1)))
    fig.subplots_adjust(**margins)
    if points.empty or points[column].notna().sum() == 0:
        for ax in axes:
            _note(ax, f"no {column} values in this run")
        pdf.savefig(fig)
        return None
    return points, fig, axes


def _rtt_page(report: Report, pdf: PdfPages) -> None:
    page = _load_page(
        report,
        pdf,
        "RTT quantiles vs clients",
        "exact quantiles over every OK round trip of a point (not averages of per-client values); "
        "line through the median of repetitions",
        "rtt_p50_us",
        {"left": 0.08, "right": 0.78, "top": 0.89, "bottom": 0.09},
    )
    if page is None:
        return
    points, fig, (ax,) = page
    for _m, marker, style, frame in _by_messages(points):
        for q, colour in QUANTILE_COLOURS.items():
            _series(ax, frame, f"rtt_{q}_us", colour, marker, style)
    ax.set_title("round-trip time per message vs number of concurrent clients")
    ax.set_xlabel("clients")
    ax.set_ylabel("RTT (µs)")
    _log_if_wide(ax, points["clients"], "x", ratio=10)
    _log_if_wide(ax, points[[f"rtt_{q}_us" for q in QUANTILE_COLOURS]])
    quantiles = [Line2D([], [], color=c, linewidth=2, label=q) for q, c in QUANTILE_COLOURS.items()]
    first = ax.legend(
        handles=quantiles, title="quantile (colour)", loc="upper left", bbox_to_anchor=(1.01, 1.0)
    )
    ax.add_artist(first)
    ax.legend(
        handles=_messages_legend(points),
        title="messages (marker, line)",
        loc="upper left",
        bbox_to_anchor=(1.01, 0.7),
    )
    pdf.savefig(fig)


def _throughput_page(report: Report, pdf: PdfPages) -> None:
    page = _load_page(
        report,
        pdf,
        "Throughput vs clients, and the closed-loop check",
        "throughput = acknowledged messages per second while all clients were active (or over the "
        "whole load window when they never were)",
        "throughput_msgs_per_s",
        {"left": 0.07, "right": 0.9, "top": 0.88, "bottom": 0.1, "wspace": 0.3},
    )
    if page is None:
        return
    points, fig, (left, right) = page
    for _label, marker, style, frame in _by_messages(points):
        _series(left, frame, "throughput_msgs_per_s", "tab:blue", marker, style)
    left.set_title("throughput vs clients")
    left.set_xlabel("clients")
    left.set_ylabel("throughput (acknowledged messages/s)")
    _log_if_wide(left, points["clients"], "x", ratio=10)
    _log_if_wide(left, points["throughput_msgs_per_s"])
    left.legend(handles=_messages_legend(points), loc="best")

    predicted = points["clients"].astype(float) / points["throughput_msgs_per_s"] * 1e6
    measured = points["rtt_mean_us"]
    for label, marker, _style, frame in _by_messages(points.assign(predicted=predicted)):
        right.scatter(
            frame["predicted"],
            frame["rtt_mean_us"],
            c=[report.colour(c) for c in frame["clients"]],
            marker=marker,
            s=30,
            edgecolors="0.2",
            linewidths=0.5,
            label=label,
            zorder=3,
        )
    both = pd.concat([predicted, measured]).replace([np.inf, -np.inf], np.nan).dropna()
    both = both[both > 0]
    if len(both):
        lo, hi = both.min() / 1.5, both.max() * 1.5
        right.plot(
            [lo, hi],
            [lo, hi],
            color="0.4",
            linestyle="--",
            linewidth=1,
            label="RTT = clients ÷ throughput",
        )
        right.set_xscale("log")
        right.set_yscale("log")
        right.set_xlim(lo, hi)
        right.set_ylim(lo, hi)
    right.set_title(
        "closed loop (one message in flight per client):\nmean RTT vs clients ÷ throughput"
    )
    right.set_xlabel("clients ÷ throughput (µs)")
    right.set_ylabel("measured mean RTT (µs)")
    right.legend(loc="upper left")
    report.colour_bar(fig, right)
    pdf.savefig(fig)


# -- page 5: server resources over time -----------------------------------------------------------


def _step_windows(report: Report, steps: pd.DataFrame) -> list[tuple[Any, float, float]]:
    """(step row, first t_s, last t_s) of each master step's resource samples."""
    windows = []
    for _i, row in steps.iterrows():
        frame = report.resources(row["point"])
        if frame is not None and len(frame):
            windows.append((row, float(frame["t_s"].min()), float(frame["t_s"].max())))
    return windows


def _master_resources(report: Report, steps: pd.DataFrame) -> pd.DataFrame | None:
    """The master server's samples on one time axis: master/resources.parquet, else the steps'."""
    whole = report.run_dir / "master" / "resources.parquet"
    if whole.is_file():
        return _alive(pq.read_table(whole).to_pandas())
    frames = [report.resources(p) for p in steps["point"]]
    frames = [f for f in frames if f is not None]
    return pd.concat(frames).sort_values("t_s") if frames else None


def _resource_page(report: Report, pdf: PdfPages) -> None:
    fig = report.new_page(
        "Server resources over time",
        "sampled from the server process a few times a second; CPU as % of one core; queue files = "
        "bytes the per-client queues hold on disk",
    )
    axes = fig.subplots(len(RESOURCE_PANELS), 2, sharex="col")
    fig.subplots_adjust(left=0.07, right=0.8, top=0.88, bottom=0.07, hspace=0.15, wspace=0.22)
    sweep = report.points[report.points["phase"] == "sweep"]
    shown = []
    for _i, row in sweep.iterrows():
        frame = report.resources(row["point"])
        if frame is None or frame.empty:
            continue
        shown.append(row["point"])
        for ax, (column, scale, _label_text) in zip(axes[:, 0], RESOURCE_PANELS):
            ax.plot(
                frame["t_s"],
                frame[column] / scale,
                color=report.colour(row["clients"]),
                linewidth=0.9,
                marker=".",
                markersize=2,
                label=_label(row),
            )
    axes[0, 0].set_title("sweep points, overlaid (time since each server started)")
    if not shown:
        for ax in axes[:, 0]:
            _note(ax, "")
        _note(axes[0, 0], "no sweep points with resources.parquet")
    elif len(shown) <= MAX_LEGEND_ENTRIES:
        axes[0, 0].legend(loc="upper left", bbox_to_anchor=(2.28, 1.0), title="sweep point")
    else:
        handles = _clients_legend(report, sweep[sweep["point"].isin(shown)])
        axes[0, 0].legend(
            handles=handles, loc="upper left", bbox_to_anchor=(2.28, 1.0), title="sweep points"
        )
    axes[-1, 0].set_xlabel("time since the server started (s)")

    steps = report.points[report.points["phase"] != "sweep"]
    master = _master_resources(report, steps) if len(steps) else None
    axes[0, 1].set_title("master test case: one server, steps one after another")
    if master is None or master.empty:
        for ax in axes[:, 1]:
            _note(ax, "")
        _note(axes[0, 1], "no master test case in this run")
    else:
        windows = _step_windows(report, steps)
        for ax, (column, scale, _t) in zip(axes[:, 1], RESOURCE_PANELS):
            ax.plot(
                master["t_s"],
                master[column] / scale,
                color="0.15",
                linewidth=1,
                marker=".",
                markersize=2,
            )
            for row, t0, t1 in windows:
                shade = "tab:blue" if row["phase"] == "ramp_up" else "tab:orange"
                ax.axvspan(t0, t1, color=shade, alpha=0.13, linewidth=0)
        for row, t0, t1 in windows:
            axes[0, 1].text(
                (t0 + t1) / 2,
                0.97,
                f"{row['step']}{'↑' if row['phase'] == 'ramp_up' else '↓'}",
                ha="center",
                va="top",
                fontsize=7,
                transform=axes[0, 1].get_xaxis_transform(),
            )
        bottom, top = axes[0, 1].get_ylim()
        axes[0, 1].set_ylim(bottom, top + 0.2 * (top - bottom))  # room for the step labels
        axes[-1, 1].set_xlabel("time since the master server started (s)")
        handles = [
            Patch(color="tab:blue", alpha=0.25, label="ramp-up step"),
            Patch(color="tab:orange", alpha=0.25, label="ramp-down step"),
            Line2D([], [], color="0.15", label="master server"),
        ] + [Line2D([], [], linestyle="none", label=_label(row)) for row, _t0, _t1 in windows]
        axes[-1, 1].legend(
            handles=handles, loc="lower left", bbox_to_anchor=(1.02, 0.0), title="master steps"
        )
    for row_axes, (_c, _s, label_text) in zip(axes, RESOURCE_PANELS):
        for ax in row_axes:
            if ax.axison:
                ax.set_ylabel(label_text)
    pdf.savefig(fig)


# -- pages 6 to 8: tables ----------------------------------------------------------------------


def _table_page(
    report: Report,
    pdf: PdfPages,
    title: str,
    subtitle: str,
    header: list[str],
    rows: list[list[str]],
    widths: list[float],
    colours: list[str] | None = None,
    font: float = 7.5,
    per_page: int | None = None,
) -> None:
    """A page holding a table (continued on further pages past `per_page` rows)."""
    per_page = per_page or TABLE_ROWS
    chunks = [rows[i : i + per_page] for i in range(0, len(rows), per_page)] or [[]]
    for k, chunk in enumerate(chunks):
        fig = report.new_page(
            title + (f" (continued, {k + 1}/{len(chunks)})" if k else ""), subtitle
        )
        ax = fig.add_axes((0.03, 0.05, 0.94, 0.85))
        ax.set_axis_off()
        if not chunk:
            _note(ax, "nothing to show: no points in this run")
            pdf.savefig(fig)
            continue
        lines = [max(cell.count("\n") + 1 for cell in r) for r in chunk]
        table = ax.table(
            cellText=chunk, colLabels=header, colWidths=widths, loc="upper center", cellLoc="left"
        )
        table.auto_set_font_size(False)
        table.set_fontsize(font)
        height = min(0.033, 0.95 / (sum(lines) + 1.5))
        for (r, _c), cell in table.get_celld().items():
            cell.set_height(height * (1.3 if r == 0 else lines[r - 1]))
            cell.set_edgecolor("0.75")
            if r == 0:
                cell.set_facecolor("0.88")
                cell.set_text_props(fontweight="bold")
            elif colours:
                cell.set_facecolor(colours[k * per_page + r - 1])
        pdf.savefig(fig)


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return str(value)


def _verdict_page(report: Report, pdf: PdfPages) -> None:
    header = [
        "point",
        "phase",
        "clients×msgs",
        "verdict",
        "all verdicts",
        "connected",
        "acked / planned",
        "lost",
        "refused",
        "errors (kind=count)",
    ]
    rows, colours = [], []
    for _i, p in report.points.iterrows():
        errors = "\n".join(textwrap.wrap(p["errors"].replace(";", "; "), 36)) or "none"
        rows.append(
            [
                p["point"],
                p["phase"],
                f"{p['clients']}×{p['messages']}",
                p["verdict"],
                "\n".join(textwrap.wrap(p["verdicts"].replace(";", ", "), 20)) or "–",
                f"{_fmt(p['connected'])} / {_fmt(p['clients'])}",
                f"{_fmt(p['acked'])} / {_fmt(p['planned'])}",
                _fmt(p["lost"]),
                _fmt(p["refused"]),
                errors,
            ]
        )
        colours.append("#e3f4e1" if p["verdict"] == "ok" else "#f9dcdc")
    _table_page(
        report,
        pdf,
        "Verdicts and errors per point",
        "verdict: ok, or the first limit a point hit (descriptor_limit, storage_full, ...); "
        "errors: client-side outcomes other than OK, summed over the point's clients; "
        "refused: connections the server shed past its descriptor budget",
        header,
        rows,
        [0.145, 0.065, 0.075, 0.1, 0.11, 0.08, 0.12, 0.04, 0.05, 0.195],
        colours,
    )


def _gib(key: str) -> Callable[[dict[str, Any]], str]:
    return lambda d: _fmt(d[key] / (1 << 30), 1) if isinstance(d.get(key), (int, float)) else "–"


def _pair(first: str, second: str) -> Callable[[dict[str, Any]], str]:
    return lambda d: f"{_fmt(d.get(first))} / {_fmt(d.get(second))}"


#: Rows of the limits table: (label, function of one limits.json).
LIMIT_ROWS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    (
        "RLIMIT_NOFILE soft / hard (point process)",
        _pair("rlimit_nofile_soft", "rlimit_nofile_hard"),
    ),
    ("net.core.somaxconn (listen backlog cap)", lambda d: d.get("somaxconn")),
    ("net.ipv4.tcp_max_syn_backlog", lambda d: d.get("tcp_max_syn_backlog")),
    ("net.ipv4.ip_local_port_range", lambda d: d.get("ip_local_port_range")),
    ("net.ipv4.tcp_fin_timeout (s)", lambda d: d.get("tcp_fin_timeout")),
    ("fs.file-max (descriptors, system)", lambda d: d.get("file_max")),
    ("fs.nr_open (descriptors, per process)", lambda d: d.get("nr_open")),
    ("cores / usable by affinity", _pair("cores", "cpu_affinity")),
    ("memory total (GiB)", _gib("memory_total_bytes")),
    ("memory available at start (GiB)", _gib("memory_available_bytes")),
    (
        "disk free / total under the queues (GiB)",
        lambda d: f"{_gib('disk_free_bytes')(d)} / {_gib('disk_total_bytes')(d)}",
    ),
    ("queue filesystem (type, mount point)", _pair("data_fstype", "data_mountpoint")),
    ("kernel", lambda d: d.get("kernel")),
    ("OS", lambda d: d.get("os")),
    ("Python", lambda d: d.get("python")),
    ("pyzmq / libzmq", _pair("pyzmq", "libzmq")),
]


def _limits_by_host(report: Report) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """One limits.json per host (the first one captured) and the points that ran there."""
    hosts: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for name, path in report.dirs.items():
        try:
            doc = json.loads((path / "limits.json").read_text())
        except (OSError, ValueError):
            continue
        host = str(doc.get("host", "unknown host"))
        first, names = hosts.setdefault(host, (doc, []))
        if doc.get("captured_unix_s", math.inf) < first.get("captured_unix_s", math.inf):
            hosts[host] = (doc, names)
        names.append(name)
    return dict(sorted(hosts.items()))


def _limits_page(report: Report, pdf: PdfPages) -> None:
    """The limits table, HOSTS_PER_PAGE hosts a page (a cluster run may use many nodes)."""
    hosts = list(_limits_by_host(report).items())
    rlimits = report.points.set_index("point")["rlimit_nofile"]
    groups = [hosts[i : i + HOSTS_PER_PAGE] for i in range(0, len(hosts), HOSTS_PER_PAGE)] or [[]]
    for k, group in enumerate(groups):
        rows = [
            [label] + [_fmt(fn(doc)) if fn(doc) is not None else "–" for _h, (doc, _n) in group]
            for label, fn in LIMIT_ROWS
        ]
        used = []
        for _host, (_doc, names) in group:
            counts = rlimits.reindex(names).value_counts().sort_index()
            used.append(
                "\n".join(f"{_fmt(v)} ({n} point{'s' if n > 1 else ''})" for v, n in counts.items())
                or "–"
            )
        rows.append(["server soft RLIMIT_NOFILE used (points.csv)"] + used)
        rows.append(
            ["points and steps measured on this host"] + [str(len(n)) for _h, (_d, n) in group]
        )
        columns = len(group) or 1
        _table_page(
            report,
            pdf,
            "System limits" + (f" (hosts {k + 1}/{len(groups)})" if len(groups) > 1 else ""),
            "captured on each host when its points ran (limits.json); the limits that decide "
            "how many clients and connections a host holds",
            ["limit"] + ([host for host, _v in group] or ["(no limits.json found)"]),
            rows if group else [],
            [0.3] + [0.64 / columns] * columns,
            font=8.5,
            per_page=len(rows),
        )


def _flatten(doc: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(doc, dict):
        return [
            item
            for k, v in doc.items()
            for item in _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        ]
    if isinstance(doc, list) and all(not isinstance(v, (dict, list)) for v in doc):
        return [(prefix, ", ".join(map(str, doc)))]
    if isinstance(doc, list):
        return [item for k, v in enumerate(doc) for item in _flatten(v, f"{prefix}[{k}]")]
    return [(prefix, str(doc))]


def _manifest_items(path: Path) -> list[tuple[str, str]]:
    """manifest.json as (key, value) lines; its limits are on the limits page, times also in UTC."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("%s: %s", path, err)
        return []
    if not isinstance(doc, dict):
        return _flatten(doc)
    doc = dict(doc)
    if isinstance(doc.get("limits"), dict):
        doc["limits"] = "the manifest host's limits: see the System limits page"
    if isinstance(doc.get("measured"), list):
        doc["measured"] = f"{len(doc['measured'])} point.json / master.json documents"
    for key in ("started_unix_s", "ended_unix_s"):
        if isinstance(doc.get(key), (int, float)):
            when = pd.Timestamp(doc[key], unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S UTC")
            doc[key] = f"{doc[key]:.3f} ({when})"
    return _flatten(doc)


def _text_block(ax: Any, title: str, lines: list[str], limit: int, missing: str) -> None:
    """`lines` in monospace under `title`, at most `limit` of them; a note when there are none."""
    ax.set_axis_off()
    ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
    if not lines:
        _note(ax, missing)
        return
    shown = [line if len(line) <= 95 else line[:94] + "…" for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"… {len(lines) - limit} more lines in {title}")
    size = 8.5 if len(shown) < 45 else 7.0
    ax.text(
        0, 1, "\n".join(shown), va="top", family="monospace", fontsize=size, transform=ax.transAxes
    )


def _provenance_page(report: Report, pdf: PdfPages) -> None:
    fig = report.new_page(
        "Provenance", "manifest.json (what ran, where, when) and the config as used"
    )
    items = _manifest_items(report.run_dir / "manifest.json")
    _text_block(
        fig.add_axes((0.03, 0.05, 0.5, 0.85)),
        "manifest.json",
        [f"{k}: {v}" for k, v in items],
        60,
        "manifest.json missing or unreadable",
    )
    config = report.run_dir / "config.yaml"
    lines = config.read_text().splitlines() if config.is_file() else []
    _text_block(
        fig.add_axes((0.56, 0.05, 0.42, 0.85)), "config.yaml", lines, 75, "config.yaml missing"
    )
    pdf.savefig(fig)


def render(run_dir: Path | str, out: Path | str) -> None:
    """Write the report of `run_dir` to `out` (not atomically: `write_report` renames it)."""
    report = Report(Path(run_dir))
    with (
        matplotlib.rc_context(_STYLE),
        PdfPages(out, metadata={"CreationDate": None, "Creator": "msgprof"}) as pdf,
    ):
        _client_page(
            report,
            pdf,
            "connect_ms",
            "connect time (ms)",
            "Client id vs connect time",
            "setup time: connect() to the ZMTP handshake (socket monitor), per client",
        )
        _client_page(
            report,
            pdf,
            "rtt_median_us",
            "median RTT (µs)",
            "Client id vs median RTT",
            "median over each client's acknowledged round trips (one message in flight per client)",
        )
        _rtt_page(report, pdf)
        _throughput_page(report, pdf)
        _resource_page(report, pdf)
        _verdict_page(report, pdf)
        _limits_page(report, pdf)
        _provenance_page(report, pdf)


def write_report(run_dir: Path | str) -> Path:
    """Render run_dir/msg_proc_profiling.pdf atomically (tables are made first if missing)."""
    run_dir = Path(run_dir)
    return atomic.replace_into(run_dir / REPORT_NAME, lambda tmp: render(run_dir, tmp))
