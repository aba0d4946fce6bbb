"""`msgprof runs [results/]`: every run directory under a results directory, one row each.

A row says where the run came from (commit, dirty flag, host, start, config hash, from
manifest.json), how big it is (points, master steps), how it went (verdict counts) and its
headline numbers (the best throughput, RTT p50 at its fewest clients, the most clients held
with verdict ok). A directory that is not a complete run (no manifest, no points.csv) or whose
files cannot be read is listed with a `status` that says so, never a traceback.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = [
    "run", "status", "commit", "dirty", "host", "started", "config_sha256", "points",
    "master_steps", "verdicts", "max_throughput_msgs_per_s", "rtt_p50_us_fewest_clients",
    "most_clients_ok", "path",
]  # fmt: skip
#: A directory is a run when it holds one of these.
RUN_MARKERS = ("manifest.json", "points.csv", "config.yaml", "points")


def _manifest(path: Path) -> tuple[dict[str, Any], list[str]]:
    if not (path / "manifest.json").is_file():
        return {}, ["no manifest.json"]
    try:
        doc = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as err:
        return {}, [f"manifest.json unreadable ({err.__class__.__name__})"]
    return (doc, []) if isinstance(doc, dict) else ({}, ["manifest.json is not an object"])


def _headlines(points: pd.DataFrame) -> dict[str, Any]:
    sweep = points[points.get("phase", pd.Series("sweep", index=points.index)) == "sweep"]
    row: dict[str, Any] = {
        "points": len(sweep),
        "master_steps": len(points) - len(sweep),
        "verdicts": " ".join(f"{v}:{n}" for v, n in
                             points["verdict"].fillna("none").value_counts().items()),
    }  # fmt: skip
    if "throughput_msgs_per_s" in points and len(points):
        best = pd.to_numeric(points["throughput_msgs_per_s"], errors="coerce").max()
        row["max_throughput_msgs_per_s"] = None if math.isnan(best) else round(best)
    if {"clients", "rtt_p50_us"} <= set(sweep.columns) and len(sweep):
        fewest = sweep[sweep["clients"] == sweep["clients"].min()]
        row["rtt_p50_us_fewest_clients"] = pd.to_numeric(fewest["rtt_p50_us"]).median()
    ok = sweep[sweep["verdict"] == "ok"] if "verdict" in sweep else sweep.iloc[0:0]
    row["most_clients_ok"] = int(ok["clients"].max()) if len(ok) else None
    return row


def run_row(path: Path) -> dict[str, Any]:
    """The index row of one run directory."""
    manifest, problems = _manifest(path)
    git = manifest.get("git") or {}
    started = manifest.get("started_unix_s")
    row: dict[str, Any] = {
        "run": path.name, "commit": (git.get("commit") or "")[:12] or None,
        "dirty": git.get("dirty"), "host": manifest.get("host"),
        "started": datetime.fromtimestamp(started, timezone.utc).strftime("%Y-%m-%d %H:%M")
        if isinstance(started, (int, float)) else None,
        "config_sha256": (manifest.get("config_sha256") or "")[:12] or None, "path": str(path),
    }  # fmt: skip
    if not (path / "points.csv").is_file():
        problems.append("no points.csv")
    else:
        try:
            row |= _headlines(pd.read_csv(path / "points.csv", dtype={"point": str}))
        except (OSError, ValueError, KeyError, pd.errors.ParserError) as err:
            problems.append(f"points.csv unreadable ({err.__class__.__name__}: {err})")
    if not problems:
        row["status"] = "complete"
    else:
        row["status"] = "incomplete: " + "; ".join(problems)
    return row


def index(results: Path) -> pd.DataFrame:
    """One row per run directory under `results`, by start time (unknown last), then name."""
    if not results.is_dir():
        raise ValueError(f"{results}: no such directory")
    dirs = [p for p in sorted(results.iterdir())
            if p.is_dir() and any((p / m).exists() for m in RUN_MARKERS)]  # fmt: skip
    table = pd.DataFrame([run_row(p) for p in dirs]).reindex(columns=COLUMNS)
    return table.sort_values(["started", "run"], na_position="last", kind="stable")
