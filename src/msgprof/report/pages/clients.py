"""Pages 1 and 2, the seed's plots: client id against a per-client value (analysis.csv)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages

from msgprof.report.pages.base import (
    MAX_LEGEND_ENTRIES,
    PHASE_STYLE,
    RASTER_ABOVE,
    Report,
    clients_legend,
    label,
    log_if_wide,
    note,
)
from msgprof.report.pages.floor import draw_floor

#: Seconds after which a client's TCP sends a dropped SYN again (1 s, then doubling): a connect
#: time just above one of these is the mark of a dropped SYN.
SYN_RESENT_AT_MS = (1_000, 3_000, 7_000)


def listen_trouble(row: Any) -> str:
    """What the kernel's listen queue did during a point, for its legend ("" when nothing or
    not recorded): listen drops and SYNs sent again (points.csv, the host's counters)."""
    parts = []
    for column, what in (("listen_drops", "listen drops"), ("syn_retransmits", "SYNs resent")):
        value = row.get(column)
        if pd.notna(value) and value > 0:
            parts.append(f"{int(value)} {what}")
    return "; ".join(parts)


def _mark_listen_queue(ax: Any, points: pd.DataFrame) -> None:
    """Where a dropped SYN's retry would put a connect time, and which points had any drop or
    resent SYN (or that none had: then a 1 s or 3 s spike is not the listen queue's)."""
    if "syn_retransmits" not in points or points["syn_retransmits"].isna().all():
        return
    troubled = [f"{label(row)}: {text}" for _i, row in points.iterrows()
                if (text := listen_trouble(row))]  # fmt: skip
    if troubled:
        for at_ms in SYN_RESENT_AT_MS:
            ax.axhline(at_ms, color="grey", linestyle=":", linewidth=0.8)
        more = f"\n… and {len(troubled) - 4} more points" if len(troubled) > 4 else ""
        text = "dotted: a dropped SYN resent after 1 s, 3 s, 7 s\n" + "\n".join(troubled[:4])
        text += more
    else:
        text = "no listen-queue drop and no SYN resent on this host during these points"
    ax.text(0.01, 0.02, text, transform=ax.transAxes, fontsize=7, va="bottom", color="0.3")


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
        ax.plot(
            rows["client_id"],
            y,
            color=report.colour(row["clients"]),
            marker=marker,
            linestyle=style,
            markersize=3 if len(rows) <= 300 else 0,
            linewidth=0.9,
            alpha=0.85,
            label=label(row)
            + (f", {missing} no value" if missing else "")
            + (
                f" ({trouble})"
                if column == "connect_ms" and (trouble := listen_trouble(row))
                else ""
            ),
            rasterized=len(rows) > RASTER_ABOVE,
        )
        values.append(y.dropna())
        shown += 1
    if not shown:
        note(ax, f"no {column} values in these points")
        return
    log_if_wide(ax, pd.concat(values))
    if column.startswith("rtt_"):
        draw_floor(ax, report.run_dir)
    if column == "connect_ms":
        _mark_listen_queue(ax, points)
    if (points["phase"] == "sweep").all():  # every point starts at id 1: let small ones show
        log_if_wide(ax, points["clients"], "x")
    ax.set_xlabel("client id")
    ax.set_ylabel(unit)
    where = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}
    if shown <= MAX_LEGEND_ENTRIES:
        ax.legend(title="point (clients×messages)", **where)
    else:
        ax.legend(handles=clients_legend(report, points), title=f"{shown} points", **where)


def client_page(
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
            note(ax, f"no {what} in this run")
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
