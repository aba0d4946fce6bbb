"""The pages "Where the server's time goes": the server's top functions against the load
(profile.csv), and the flame graph of the largest profiled point (flame.csv); no page without
a profiled point."""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages

from msgprof.report.flamegraph import draw_flamegraph
from msgprof.report.pages.base import Report, note
from msgprof.report.profile_table import flame_stacks

#: Functions drawn, the most self time over the profiled points first; the rest is "other".
SHOWN = 8


def _shown(profile: pd.DataFrame) -> list[str]:
    """The SHOWN functions with the most self time summed over the points (`function (file)`)."""
    share = profile.groupby("key")["self_pct"].sum().sort_values(ascending=False)
    return list(share.index[:SHOWN])


def _panel(ax: Any, profile: pd.DataFrame, x: str, shown: list[str], label: str) -> None:
    """Self-time share of each shown function (the median over the points at each `x`)."""
    if profile.empty:
        note(ax, "no profiled points here")
        return
    table = profile.pivot_table(index=["point", x], columns="key", values="self_pct",
                                aggfunc="sum", fill_value=0.0)  # fmt: skip
    table = table.reindex(columns=shown, fill_value=0.0)
    table["other"] = (100.0 - table.sum(axis=1)).clip(lower=0.0)
    by_x = table.groupby(level=x).median().sort_index()
    for column in by_x.columns:
        style = {"color": "black", "linestyle": "--"} if column == "other" else {}
        ax.plot(by_x.index, by_x[column], marker="o", markersize=3, label=column, **style)
    if x == "clients" and len(by_x) > 1 and by_x.index.max() / max(by_x.index.min(), 1) >= 30:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("self time (% of samples)")
    ax.set_ylim(bottom=0)


def profile_page(report: Report, pdf: PdfPages) -> None:
    """The top functions' self-time share against clients (sweep) and over the master steps."""
    profile = report.profile
    if profile is None or profile.empty:
        return
    profile = profile[profile["process"] == "server"]
    if profile.empty:
        return
    profile = profile.assign(key=profile["function"] + " (" + profile["file"].fillna("") + ")")
    shown = _shown(profile)
    fig = report.new_page(
        "Where the server's time goes",
        "py-spy samples of the server (--profile): share of each point's samples in which a "
        "function was running itself, the median over the points of each size; "
        "`other` is every other function. docs/profiling.md says how to read it.",
    )
    axes = fig.subplots(2, 1)
    fig.subplots_adjust(left=0.07, right=0.62, top=0.88, bottom=0.08, hspace=0.35)
    sweep = profile[profile["phase"] == "sweep"]
    master = profile[profile["phase"] != "sweep"]
    axes[0].set_title("sweep points: self time against clients", loc="left")
    _panel(axes[0], sweep, "clients", shown, "clients")
    axes[1].set_title("master test case: self time per step", loc="left")
    _panel(axes[1], master, "step", shown, "step")
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.63, 0.88), fontsize=7,
               title="function (file)")  # fmt: skip
    pdf.savefig(fig)


def flame_page(report: Report, pdf: PdfPages) -> None:
    """The flame graph of the largest profiled point (flame.csv)."""
    flame = report.flame
    if flame is None or flame.empty:
        return
    first = flame.iloc[0]
    size = (f"{first['clients']} clients × {first['messages']} messages"
            if first["phase"] == "sweep" else f"master step {first['step']}")  # fmt: skip
    fig = report.new_page(
        f"The server's flame graph at {first['point']} ({size})",
        "every py-spy sample of the largest profiled point: one box per function, as wide as "
        "its share of the samples, the functions it called stacked on it (callers below); "
        "boxes under 0.2 % are left out. profile/server.svg and server.speedscope.json in the "
        "point's directory hold the same samples.",
        name="The server's flame graph",
    )
    ax = fig.add_axes((0.02, 0.05, 0.96, 0.8))
    samples = draw_flamegraph(ax, flame_stacks(flame))
    ax.set_title(f"{samples} samples", loc="left", fontsize=9)
    pdf.savefig(fig)
