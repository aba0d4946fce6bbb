"""What the pages share: the page format, the report's inputs and its colour scale, and the
small drawing helpers (notes instead of missing plots, log axes, legends, number format)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from msgprof.report.analysis import read_tables
from msgprof.report.host_tables import ROW_KEYS

#: A4 landscape, in inches.
PAGE_SIZE = (11.69, 8.27)
#: Series beyond this many get a colour bar and a style legend instead of one legend entry each.
MAX_LEGEND_ENTRIES = 14
#: Series with more points than this are drawn as an image inside the PDF (a small, fast file).
RASTER_ABOVE = 3000
#: A value range at least this wide (max ÷ min) gets a log axis.
LOG_RATIO = 30.0

STYLE = {
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
# Truncated viridis: its pale yellow end is hard to see on white.
_CMAP = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, 256)), name="clients")


class Report:
    """The inputs of the report (the run's tables) and the state shared by its pages."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.run = run_dir.resolve().name
        tables = read_tables(run_dir)
        self.clients, self.points, self.limits = tables.clients, tables.points, tables.limits
        self.profile, self.flame = tables.profile, tables.flame
        self._samples = {
            str(point): frame.drop(columns=ROW_KEYS).astype("float64")
            for point, frame in tables.resources.groupby("point", sort=False)
        }
        self.page = 0
        clients = self.points["clients"].dropna().astype(float)
        lo, hi = (clients.min(), clients.max()) if len(clients) else (1.0, 10.0)
        if lo == hi:
            lo, hi = lo / 2, hi * 2
        self.norm = LogNorm(vmin=max(lo, 0.5), vmax=hi)

    def samples(self, point: str) -> pd.DataFrame | None:
        """The server's resource samples of `point` (resources.csv, as floats); None if none."""
        return self._samples.get(point)

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

    def new_page(self, title: str, subtitle: str = "", name: str | None = None) -> Figure:
        """A page with its title; `name` (default the title) names its figure file, for a
        title that holds what the data chose (figures/ must hold the same names each run)."""
        fig = Figure(figsize=PAGE_SIZE)
        FigureCanvasAgg(fig)
        fig.page_name = name or title  # type: ignore[attr-defined]
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


def note(ax: Any, text: str) -> None:
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


def log_if_wide(ax: Any, values: Any, axis: str = "y", ratio: float = LOG_RATIO) -> None:
    """Log scale on `axis` when the positive values span at least `ratio`."""
    v = pd.to_numeric(pd.Series(np.ravel(values)), errors="coerce").astype(float)
    v = v[(v > 0) & np.isfinite(v)]
    if len(v) and v.max() / v.min() >= ratio:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def label(row: Any) -> str:
    """A short legend label for a point or step."""
    if row["phase"] == "sweep":
        return f"{row['point']} ({row['clients']}×{row['messages']})"
    arrow = "↑" if row["phase"] == "ramp_up" else "↓"
    return f"step {row['step']} {arrow} {row['clients']}×{row['messages']}"


def clients_legend(report: Report, points: pd.DataFrame) -> list[Line2D]:
    """Legend of too many series to name one by one: a line per clients value (the colour)."""
    counts = points.groupby("clients").size()
    return [
        Line2D([], [], color=report.colour(c), label=f"{c} clients ({n} point{'s' * (n > 1)})")
        for c, n in counts.items()
    ]


def fmt(value: Any, digits: int = 0) -> str:
    """A table cell: thousands separated, `digits` decimals for floats, "–" for nothing."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return str(value)
