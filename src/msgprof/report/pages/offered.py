"""Latency against offered load: the paced configurations of a run (latency.csv, repetitions
merged), and the knee, the highest offered rate the server carries within the latency objective.

latency.csv holds one row per paced configuration, its quantiles read off the histograms of all
its repetitions added together (the p99 of two repetitions is not the mean of their p99s); the
page only draws them. A run without paced points gets no page.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter

from msgprof.report import latency
from msgprof.report.analysis import FILES
from msgprof.report.pages.base import Report, log_if_wide, note
from msgprof.report.pages.load import MESSAGES_STYLE, QUANTILE_COLOURS

log = logging.getLogger("msgprof.plots")

#: The latency objective when the run's config.yaml names none (slo.p99_ms).
DEFAULT_SLO_P99_MS = 10.0
#: A configuration keeps up when it achieved at least this share of its offered rate.
KEEP_UP = 0.99
#: The verdict of a point that measured its own load generator rather than the server.
BEHIND = "generator_behind"
#: Columns of latency.csv telling one curve of the page from another; along a curve only the
#: rate varies.
SERIES_KEYS = [k for k in latency.CONFIG_COLUMNS if k not in ("run", "rate_per_client")]
#: Quantiles drawn: corrected latency (solid) and uncorrected, the RTT (dashed).
CORRECTED = ("p50", "p99", "p999")
UNCORRECTED = ("p50", "p99")
COLOURS = {**QUANTILE_COLOURS, "p999": "tab:purple"}
SLO_STYLE = {"color": "0.1", "linestyle": "-.", "linewidth": 1}
KNEE_STYLE = {"color": "tab:green", "linestyle": ":", "linewidth": 1.4}


class PlainLogFormatter(LogFormatter):
    """The ticks matplotlib labels on a log axis, labelled as plain numbers (0.6, 200, 5000)
    rather than powers of ten."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:.6g}" if super().__call__(x, pos) else ""


def plain_log_ticks(ax: Any) -> None:
    """Plain-number tick labels on `ax`'s log axes."""
    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
        if scale == "log":
            axis.set_major_formatter(PlainLogFormatter())
            axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def paced_points(points: pd.DataFrame) -> pd.DataFrame:
    """The rows of points.csv with an offered rate (paced points); none for a closed-loop run."""
    if "offered_msgs_per_s" not in points:
        return points.iloc[0:0]
    return points[pd.to_numeric(points["offered_msgs_per_s"], errors="coerce") > 0]


def slo_p99_ms(run_dir: Path) -> float:
    """slo.p99_ms of the run's config.yaml (the workflow writes it into the run directory), else
    DEFAULT_SLO_P99_MS."""
    path = run_dir / "config.yaml"
    try:
        doc = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError) as err:
        log.warning("%s: %s; the SLO is the default %s ms", path, err, DEFAULT_SLO_P99_MS)
        doc = None
    slo = doc.get("slo") if isinstance(doc, dict) else None
    value = slo.get("p99_ms") if isinstance(slo, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return DEFAULT_SLO_P99_MS


#: The verdicts of a configuration whose repetitions were all ok (latency.csv leaves it empty).
OK = {"", "ok"}


def behind(configs: pd.DataFrame) -> pd.Series:
    """Per configuration: True when a repetition's verdict is generator_behind."""
    return configs["verdicts"].fillna("").str.split(";").map(lambda names: BEHIND in names)


def knee(configs: pd.DataFrame, slo_ms: float) -> float | None:
    """The knee of one series of configurations (latency.csv rows): the highest offered rate
    whose corrected p99 is within `slo_ms` and whose achieved rate is at least KEEP_UP × offered,
    every repetition's verdict ok (as `msgprof knee` judges a probe). A generator_behind
    repetition measured the generator, not the server; one that lost messages or timed out did
    not sustain the rate. None when no configuration qualifies."""
    if configs.empty:
        return None
    offered = configs["offered_msgs_per_s"].astype(float)
    good = (
        (configs["latency_p99_us"].astype(float) <= slo_ms * 1e3)
        & (configs["achieved_msgs_per_s"].astype(float) >= KEEP_UP * offered)
        & configs["verdicts"].fillna("").str.split(";").map(lambda names: set(names) <= OK)
    )
    return float(offered[good].max()) if good.any() else None


def _series(configs: pd.DataFrame) -> list[tuple[str, str, Any, pd.DataFrame]]:
    """(label, marker, line style, rows by offered rate) of each series; the label names the
    clients and those other keys whose value varies in this run."""
    varying = [k for k in SERIES_KEYS[1:] if configs[k].nunique(dropna=False) > 1]
    out = []
    for k, (key, frame) in enumerate(configs.groupby(SERIES_KEYS, dropna=False, sort=True)):
        values = dict(zip(SERIES_KEYS, key, strict=True))
        text = [f"{values['clients']} clients", *(f"{name}={values[name]}" for name in varying)]
        marker, style = MESSAGES_STYLE[k % len(MESSAGES_STYLE)]
        out.append((", ".join(text), marker, style, frame.sort_values("offered_msgs_per_s")))
    return out


def _plot(ax: Any, frame: pd.DataFrame, column: str, colour: Any, marker: str, style: Any) -> None:
    """`column` against the offered rate: a line, filled markers, hollow ones for configurations
    with a generator_behind repetition."""
    x = frame["offered_msgs_per_s"].to_numpy(float)
    y = frame[column].to_numpy(float) / (1e3 if column.endswith("_us") else 1.0)
    hollow = behind(frame).to_numpy(bool)
    ax.plot(x, y, color=colour, linestyle=style, linewidth=1.2)
    kw = {"marker": marker, "linestyle": "none", "markersize": 5, "color": colour}
    ax.plot(x[~hollow], y[~hollow], **kw)
    ax.plot(x[hollow], y[hollow], markerfacecolor="white", **kw)


def _latency_panel(ax: Any, series: list[Any], slo_ms: float) -> None:
    """Corrected and uncorrected quantiles (ms, log) against the offered rate, and the SLO."""
    for _label, marker, _style, frame in series:
        for q in CORRECTED:
            _plot(ax, frame, f"latency_{q}_us", COLOURS[q], marker, "-")
        for q in UNCORRECTED:
            _plot(ax, frame, f"uncorrected_{q}_us", COLOURS[q], marker, "--")
    ax.axhline(slo_ms, **SLO_STYLE)
    ax.set_yscale("log")
    ax.set_ylabel("latency per message (ms, log scale)")
    ax.set_title("latency quantiles against offered load (each configuration's repetitions merged)")


def _achieved_panel(report: Report, ax: Any, series: list[Any], configs: pd.DataFrame) -> None:
    """Achieved against offered rate (colour: clients), and the line where they are equal."""
    for _label, marker, style, frame in series:
        colour = report.colour(frame["clients"].iloc[0])
        _plot(ax, frame, "achieved_msgs_per_s", colour, marker, style)
    rates = pd.concat([configs["offered_msgs_per_s"], configs["achieved_msgs_per_s"]])
    rates = rates[rates > 0]
    if len(rates):
        lo, hi = rates.min() / 1.2, rates.max() * 1.2
        ax.plot([lo, hi], [lo, hi], color="0.4", linestyle="--", linewidth=1,
                label="achieved = offered")  # fmt: skip
        if ax.get_xscale() == "log":
            ax.set_yscale("log")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xlabel("offered load (messages/s, all clients together)")
    ax.set_ylabel("achieved (messages/s)")
    ax.set_title("achieved against offered: replies to measured messages per second")


def _mark_knees(axes: list[Any], knees: list[tuple[str, str, float | None]]) -> None:
    """A vertical line at each series' knee in both panels, the series' marker on top."""
    for _label, marker, rate in knees:
        if rate is None:
            continue
        for ax in axes:
            ax.axvline(rate, **KNEE_STYLE)
        axes[0].plot([rate], [0.97], marker=marker, color=KNEE_STYLE["color"], linestyle="none",
                     transform=axes[0].get_xaxis_transform())  # fmt: skip


def _legends(ax: Any, series: list[Any], slo_ms: float) -> None:
    """Quantile colours and line styles, then the series' markers, right of `ax`."""
    handles = [Line2D([], [], color=COLOURS[q], linewidth=2, label=f"{q} corrected")
               for q in CORRECTED]  # fmt: skip
    handles += [
        Line2D([], [], color=COLOURS[q], linestyle="--", label=f"{q} uncorrected (RTT)")
        for q in UNCORRECTED
    ]
    handles += [
        Line2D([], [], **SLO_STYLE, label=f"SLO: p99 ≤ {slo_ms:g} ms"),
        Line2D([], [], **KNEE_STYLE, label="knee"),
    ]
    first = ax.legend(handles=handles, title="quantile (colour, style)", loc="upper left",
                      bbox_to_anchor=(1.01, 1.0))  # fmt: skip
    ax.add_artist(first)
    marks = [Line2D([], [], color="0.3", marker=m, linestyle=s, label=label)
             for label, m, s, _f in series]  # fmt: skip
    marks.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="white",
                        linestyle="none", label=f"hollow: {BEHIND}"))  # fmt: skip
    ax.legend(handles=marks, title="series (marker)", loc="upper left", bbox_to_anchor=(1.01, 0.5))


def behind_points(points: pd.DataFrame) -> list[str]:
    """The paced points whose verdict is generator_behind."""
    return list(points.loc[points["verdict"] == BEHIND, "point"])


def _footer(fig: Figure, knees: list[tuple[str, str, float | None]], slo_ms: float,
            behind_names: list[str]) -> None:  # fmt: skip
    """The knee of each series, and the points that are not a measurement of the server."""
    found = "; ".join(
        f"{label}: {'none' if rate is None else f'{rate:,.0f} messages/s'}"
        for label, _m, rate in knees
    )
    parts = [
        f"knee = highest offered rate with corrected p99 ≤ {slo_ms:g} ms and achieved ≥ "
        f"{KEEP_UP:.0%} of offered: {found}"
    ]
    if behind_names:
        parts.append(
            f"{BEHIND} (hollow markers; the generator could not keep to its schedule, so not a "
            f"measurement of the server, and never a knee): {', '.join(behind_names)}"
        )
    text = "\n".join(line for part in parts for line in textwrap.wrap(part, 180))
    fig.text(0.05, 0.012, text, ha="left", va="bottom", fontsize=7.5, color="0.2")


def read_configurations(report: Report) -> pd.DataFrame:
    """latency.csv of the run (the report's tables are written before any page is drawn)."""
    return latency.read_table(report.run_dir / FILES.latency)


def offered_page(report: Report, pdf: PdfPages) -> None:
    """Latency and achieved rate against offered load; no page when the run has no paced point."""
    paced = paced_points(report.points)
    if paced.empty:
        return
    slo_ms = slo_p99_ms(report.run_dir)
    fig = report.new_page(
        "Latency against offered load",
        "paced points: corrected latency runs from each message's intended send (so the queueing "
        "of a server that falls behind counts), uncorrected from its actual send; quantiles of "
        "each configuration's repetitions merged into one histogram (latency.csv)",
    )
    axes = list(fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1]))
    fig.subplots_adjust(left=0.07, right=0.76, top=0.89, bottom=0.14, hspace=0.14)
    configs = read_configurations(report)
    if configs.empty or configs["offered_msgs_per_s"].notna().sum() == 0:
        for ax in axes:
            note(ax, "no paced configurations in latency.csv")
        pdf.savefig(fig)
        return
    series = _series(configs)
    log_if_wide(axes[1], configs["offered_msgs_per_s"], "x", ratio=10)
    if configs["latency_p99_us"].notna().any():
        _latency_panel(axes[0], series, slo_ms)
        _legends(axes[0], series, slo_ms)
    else:
        note(axes[0], "no latency quantiles: no paced point has a latency.hlog")
    _achieved_panel(report, axes[1], series, configs)
    for ax in axes:
        plain_log_ticks(ax)
    knees = [(label, marker, knee(frame, slo_ms)) for label, marker, _s, frame in series]
    _mark_knees([ax for ax in axes if ax.axison], knees)
    _footer(fig, knees, slo_ms, behind_points(paced))
    pdf.savefig(fig)
