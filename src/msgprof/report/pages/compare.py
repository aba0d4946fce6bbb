"""compare.pdf: B's ratio to A per metric over the grid, with intervals, and the distributions of
the configuration that changed most (msgprof.report.compare makes the table)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from msgprof.report.analysis import ok_rtt_ns
from msgprof.report.compare import METRICS, Comparison, describe, most_changed, summary_lines
from msgprof.report.pages.base import PAGE_SIZE, STYLE, note

#: How each verdict is drawn.
COLOURS = {"faster": "tab:green", "slower": "tab:red", "same": "0.45", "unknown": "tab:orange"}


def _page(title: str, lines: list[str]) -> Figure:
    fig = Figure(figsize=PAGE_SIZE)
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontweight="bold", y=0.985)
    text = "\n".join(line for raw in lines for line in textwrap.wrap(raw, 180) or [""])
    fig.text(0.02, 0.955, text, va="top", fontsize=7.5, family="monospace", color="0.2")
    return fig


def _ratio_panel(ax: Any, rows: pd.DataFrame, label: str, min_change: float) -> None:
    ax.axhspan(1 - min_change, 1 + min_change, color="0.9", zorder=0)
    ax.axhline(1.0, color="black", linewidth=0.8)
    x = pd.to_numeric(rows["clients"], errors="coerce").astype(float)
    for name, colour in COLOURS.items():
        pick = rows["verdict"] == name
        if not pick.any():
            continue
        ratio = rows.loc[pick, "ratio"].astype(float)
        low = (ratio - rows.loc[pick, "ci_low"].astype(float)).clip(lower=0).fillna(0)
        high = (rows.loc[pick, "ci_high"].astype(float) - ratio).clip(lower=0).fillna(0)
        ax.errorbar(x[pick], ratio, yerr=[low, high], fmt="o", markersize=3.5, color=colour,
                    capsize=2, linewidth=0.8, label=name)  # fmt: skip
    if x.max() / max(x.min(), 1) >= 30:
        ax.set_xscale("log")
    ax.set_title(label, loc="left", fontsize=9)
    ax.set_xlabel("clients")
    ax.set_ylabel("B / A")


def ratio_page(comparison: Comparison, pdf: PdfPages) -> None:
    """One panel per metric: B/A per configuration against clients, the interval as error
    bars, coloured by verdict; the grey band is --min-change."""
    lines = summary_lines(comparison)
    head = lines[: 2 + len(comparison.provenance()["warnings"]) + len(comparison.differences)]
    fig = _page(f"{comparison.b.name} against {comparison.a.name}: B / A per metric", head)
    table = comparison.table
    shown = [m for m in METRICS if (table["metric"] == m.name).any()]
    if not shown:
        note(fig.add_subplot(1, 1, 1), "no configuration is in both runs")
        pdf.savefig(fig)
        return
    cols = 4 if len(shown) > 6 else 3
    nrows = math.ceil(len(shown) / cols)
    axes = fig.subplots(nrows, cols, squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.86 - 0.012 * len(head), bottom=0.07,
                        hspace=0.55, wspace=0.3)  # fmt: skip
    for ax, metric in zip(axes.flat, shown):
        rows = table[table["metric"] == metric.name]
        _ratio_panel(ax, rows, metric.label, comparison.options.min_change)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_axis_off()
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="upper right", bbox_to_anchor=(0.98, 0.955), fontsize=8,
               ncol=4, title="verdict")  # fmt: skip
    pdf.savefig(fig)


def _values(comparison: Comparison, row: pd.Series, column: str) -> tuple[list[np.ndarray], str]:
    """A's and B's values at `row`'s configuration: every RTT (µs) when both runs still have
    their points' rtt.parquet, else each client's `column` (analysis.csv); what they are."""
    points = [comparison.points_of(run, row) for run in (comparison.a, comparison.b)]
    raw = [[run.path / "points" / p / "rtt.parquet" for p in names]
           for run, names in zip((comparison.a, comparison.b), points)]  # fmt: skip
    if column.startswith("rtt") and all(paths and all(p.is_file() for p in paths) for paths in raw):
        values = [np.concatenate([ok_rtt_ns(p) for p in paths]) / 1e3 for paths in raw]
        return values, "every RTT (µs, the points' rtt.parquet)"
    values = []
    for run, names in zip((comparison.a, comparison.b), points):
        clients = run.clients
        if clients is None or column not in clients.columns:
            values.append(np.array([]))
        else:
            pick = clients["point"].isin(names)
            values.append(clients.loc[pick, column].dropna().to_numpy(dtype=float))
    return values, f"each client's {column} (analysis.csv)"


def distribution_page(comparison: Comparison, pdf: PdfPages) -> None:
    """The distributions of A and B at the configuration that changed most (an empirical CDF
    of the raw RTTs where both runs have rtt.parquet, else of the per-client values)."""
    changed = most_changed(comparison.table, limit=1)
    if changed.empty:
        return
    row = changed.iloc[0]
    metric = next(m for m in METRICS if m.name == row["metric"])
    column = metric.client_column or "rtt_median_us"
    fig = _page(f"The largest change: {metric.label}, x{row['ratio']:.3f} ({row['verdict']})",
                [f"at {describe(row)}: the distributions behind A and B"])  # fmt: skip
    ax = fig.add_axes((0.08, 0.1, 0.86, 0.74))
    values, what = _values(comparison, row, column)
    if not all(len(v) for v in values):
        note(ax, f"no per-client or raw values behind {metric.label} in both runs")
        pdf.savefig(fig)
        return
    for side, run, colour, data in (("A", comparison.a, "tab:blue", values[0]),
                                    ("B", comparison.b, "tab:red", values[1])):  # fmt: skip
        ordered = np.sort(data)
        share = np.arange(1, len(ordered) + 1) / len(ordered)
        ax.plot(ordered, share, color=colour, drawstyle="steps-post",
                label=f"{side}: {run.name}, n={len(ordered):,}")  # fmt: skip
    if max(v.max() for v in values) / max(min(v.min() for v in values), 1e-9) >= 30:
        ax.set_xscale("log")
    ax.set_xlabel(what)
    ax.set_ylabel("share of values ≤ x")
    ax.legend(loc="lower right")
    pdf.savefig(fig)


def write_pdf(comparison: Comparison, out: Path) -> None:
    """compare.pdf (not atomic: the caller renames it into place)."""
    with (
        matplotlib.rc_context(STYLE),
        PdfPages(out, metadata={"CreationDate": None, "Creator": "msgprof"}) as pdf,
    ):
        ratio_page(comparison, pdf)
        distribution_page(comparison, pdf)
