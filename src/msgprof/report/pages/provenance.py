"""Page 8: provenance, the run's manifest.json and config.yaml as text.

These two are run-level files the workflow's manifest rule writes beside the tables (what ran,
where, when, with which config); the page shows them as they are, so it reads them directly
rather than through a table that would only copy them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages

from msgprof.report.pages.base import Report, note
from msgprof.report.pages.floor import floor_rtt_us, floor_sentence

log = logging.getLogger("msgprof.plots")


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
        note(ax, missing)
        return
    shown = [line if len(line) <= 95 else line[:94] + "…" for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"… {len(lines) - limit} more lines in {title}")
    size = 8.5 if len(shown) < 45 else 7.0
    ax.text(
        0, 1, "\n".join(shown), va="top", family="monospace", fontsize=size, transform=ax.transAxes
    )


def provenance_page(report: Report, pdf: PdfPages) -> None:
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
    floor_us = floor_rtt_us(report.run_dir)
    if floor_us is not None:
        fig.text(0.03, 0.015, floor_sentence(floor_us), fontsize=9, fontweight="bold")
    pdf.savefig(fig)
