"""Pages 3 and 4: latency and throughput against load, one marker per point (points.csv)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from msgprof.report.pages.base import Report, log_if_wide, note
from msgprof.report.pages.floor import draw_floor

QUANTILE_COLOURS = {"p50": "tab:blue", "p90": "tab:orange", "p99": "tab:red", "max": "0.35"}
MESSAGES_STYLE = [
    ("o", "-"),
    ("s", "--"),
    ("D", ":"),
    ("^", "-."),
    ("v", (0, (5, 1))),
    ("P", (0, (1, 1))),
]


def _sweep_or_all(points: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The closed-loop sweep points, or the master steps when the run has none. Paced points
    have pages of their own (pages.offered): their RTT is no function of the client count."""
    if "rate_per_client" in points:
        points = points[points["rate_per_client"].isna()]
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
        Line2D([], [], color="0.3", marker=marker, linestyle=style, label=label)
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


#: The pages of points against their load: (title, subtitle) by the column each needs.
LOAD_PAGES = {
    "rtt_p50_us": (
        "RTT quantiles vs clients",
        (
            "exact quantiles over every OK round trip of a point (not averages of per-client "
            "values); line through the median of repetitions"
        ),
    ),
    "throughput_msgs_per_s": (
        "Throughput vs clients, and the closed-loop check",
        (
            "throughput = acknowledged messages per second while all clients were active (or "
            "over the whole load window when they never were)"
        ),
    ),
}


def _load_page(
    report: Report, pdf: PdfPages, column: str, margins: dict[str, float]
) -> tuple[pd.DataFrame, Figure, list[Any]] | None:
    """Start a page of points against their load (LOAD_PAGES): (points, figure, axes); None
    when no point has a `column` value (the page is then saved with a note). Two panels when
    `margins` has a `wspace`, else one."""
    title, subtitle = LOAD_PAGES[column]
    points, what = _sweep_or_all(report.points)
    fig = report.new_page(title, f"{what}; {subtitle}")
    axes = list(np.atleast_1d(fig.subplots(1, 2 if "wspace" in margins else 1)))
    fig.subplots_adjust(**margins)
    if points.empty or points[column].notna().sum() == 0:
        for ax in axes:
            note(ax, f"no {column} values in this run")
        pdf.savefig(fig)
        return None
    return points, fig, axes


def rtt_page(report: Report, pdf: PdfPages) -> None:
    margins = {"left": 0.08, "right": 0.78, "top": 0.89, "bottom": 0.09}
    page = _load_page(report, pdf, "rtt_p50_us", margins)
    if page is None:
        return
    points, fig, (ax,) = page
    for _m, marker, style, frame in _by_messages(points):
        for q, colour in QUANTILE_COLOURS.items():
            _series(ax, frame, f"rtt_{q}_us", colour, marker, style)
    ax.set_title("round-trip time per message vs number of concurrent clients")
    ax.set_xlabel("clients")
    ax.set_ylabel("RTT (µs)")
    log_if_wide(ax, points["clients"], "x", ratio=10)
    log_if_wide(ax, points[[f"rtt_{q}_us" for q in QUANTILE_COLOURS]])
    draw_floor(ax, report.run_dir)
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


def _throughput_panel(ax: Any, points: pd.DataFrame) -> None:
    """Throughput against clients, one series per messages value."""
    for _label, marker, style, frame in _by_messages(points):
        _series(ax, frame, "throughput_msgs_per_s", "tab:blue", marker, style)
    ax.set_title("throughput vs clients")
    ax.set_xlabel("clients")
    ax.set_ylabel("throughput (acknowledged messages/s)")
    log_if_wide(ax, points["clients"], "x", ratio=10)
    log_if_wide(ax, points["throughput_msgs_per_s"])
    ax.legend(handles=_messages_legend(points), loc="best")


def _closed_loop_panel(report: Report, ax: Any, points: pd.DataFrame) -> None:
    """Measured mean RTT against clients ÷ throughput, and the line where they are equal."""
    predicted = points["clients"].astype(float) / points["throughput_msgs_per_s"] * 1e6
    measured = points["rtt_mean_us"]
    for label, marker, _style, frame in _by_messages(points.assign(predicted=predicted)):
        ax.scatter(
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
        ax.plot(
            [lo, hi],
            [lo, hi],
            color="0.4",
            linestyle="--",
            linewidth=1,
            label="RTT = clients ÷ throughput",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_title(
        "closed loop (one message in flight per client):\nmean RTT vs clients ÷ throughput"
    )
    ax.set_xlabel("clients ÷ throughput (µs)")
    ax.set_ylabel("measured mean RTT (µs)")
    ax.legend(loc="upper left")


def throughput_page(report: Report, pdf: PdfPages) -> None:
    margins = {"left": 0.07, "right": 0.9, "top": 0.88, "bottom": 0.1, "wspace": 0.3}
    page = _load_page(report, pdf, "throughput_msgs_per_s", margins)
    if page is None:
        return
    points, fig, (left, right) = page
    _throughput_panel(left, points)
    _closed_loop_panel(report, right, points)
    report.colour_bar(fig, right)
    pdf.savefig(fig)
