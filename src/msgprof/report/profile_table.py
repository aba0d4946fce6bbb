"""profile.csv: where each profiled point's server spent its CPU, the top functions per point.

One row per point and function, the TOP_N functions of its profile/top.csv by self time
(msgprof.experiment.profiler writes it), after the point's identifying columns, so "how does
the share of the store's append change from 10 to 2,000 clients" is one query. Points without a
profile have no rows.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pandas as pd

#: Functions kept per point, the most self time first.
TOP_N = 20
FUNCTION_COLUMNS = ["rank", "function", "file", "line", "self_pct", "total_pct", "samples"]
INTS = ("step", "clients", "messages", "rep", "payload_bytes", "rank", "line", "samples")


def profile_rows(keys: dict[str, Any], point_dir: Path) -> list[dict[str, Any]]:
    """profile.csv's rows of one point (none without profile/top.csv)."""
    path = point_dir / "profile" / "top.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        top = list(csv.DictReader(f))[:TOP_N]
    return [keys | {"rank": rank, **{name: row[name] for name in FUNCTION_COLUMNS[1:]}}
            for rank, row in enumerate(top, start=1)]  # fmt: skip


def profile_table(rows: list[dict[str, Any]], key_columns: list[str]) -> pd.DataFrame:
    """profile.csv from the rows of every point, typed (nullable integers)."""
    frame = pd.DataFrame(rows).reindex(columns=[*key_columns, *FUNCTION_COLUMNS])
    for name in INTS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("Int64")
    for name in ("self_pct", "total_pct"):
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    return frame


def read_profile(path: Path, key_columns: list[str]) -> pd.DataFrame:
    """profile.csv as written; no rows when there is none (a run from before it)."""
    if not path.is_file():
        return profile_table([], key_columns)
    return pd.read_csv(path, dtype={name: "Int64" for name in INTS} | {"point": str})
