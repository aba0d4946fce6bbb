"""profile.csv: where each profiled point's server spent its CPU, the top functions per point.

One row per point and function, the TOP_N functions of its profile/top.csv by self time
(msgprof.experiment.profiler writes it), after the point's identifying columns, so "how does
the share of the store's append change from 10 to 2,000 clients" is one query. Points without a
profile have no rows. flame.csv keeps every stack of the largest profiled point, for its flame
graph.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pandas as pd

from msgprof.report.stacks import read_collapsed

#: Functions kept per point, the most self time first.
TOP_N = 20
FUNCTION_COLUMNS = [
    "process", "rank", "function", "file", "line", "self_pct", "total_pct", "samples",
]  # fmt: skip
INTS = ("step", "clients", "messages", "rep", "payload_bytes", "rank", "line", "samples")


def _sampled(point_dir: Path) -> list[tuple[str, Path]]:
    """(process, its top.csv) of each process sampled in a point: the server, then the client
    processes in order (--profile-clients: profile/client-K/)."""
    found = [("server", point_dir / "profile" / "top.csv")]
    clients = (point_dir / "profile").glob("client-*/top.csv")
    found += sorted(((p.parent.name, p) for p in clients),
                    key=lambda item: (len(item[0]), item[0]))  # fmt: skip
    return [(process, path) for process, path in found if path.is_file()]


def profile_rows(keys: dict[str, Any], point_dir: Path) -> list[dict[str, Any]]:
    """profile.csv's rows of one point (none without a profile)."""
    rows = []
    for process, path in _sampled(point_dir):
        with open(path, newline="") as f:
            top = list(csv.DictReader(f))[:TOP_N]
        rows += [keys | {"process": process, "rank": rank}
                 | {name: row[name] for name in FUNCTION_COLUMNS[2:]}
                 for rank, row in enumerate(top, start=1)]  # fmt: skip
    return rows


def profile_table(rows: list[dict[str, Any]], key_columns: list[str]) -> pd.DataFrame:
    """profile.csv from the rows of every point, typed (nullable integers)."""
    frame = pd.DataFrame(rows).reindex(columns=[*key_columns, *FUNCTION_COLUMNS])
    for name in INTS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("Int64")
    for name in ("self_pct", "total_pct"):
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    return frame


def read_profile(path: Path, key_columns: list[str]) -> pd.DataFrame:
    """profile.csv as written; no rows when there is none (a run from before it). A run from
    before client processes were sampled has the server's rows only."""
    if not path.is_file():
        return profile_table([], key_columns)
    table = pd.read_csv(path, dtype={name: "Int64" for name in INTS} | {"point": str})
    if "process" not in table.columns:
        table.insert(table.columns.get_loc("rank"), "process", "server")
    return table


#: flame.csv: the stacks of one point, after its identifying columns.
FLAME_COLUMNS = ["stack", "samples"]


def _size(value: Any) -> float:
    """A point's clients or messages as a number to rank by (a timed point has no messages)."""
    number = pd.to_numeric(value, errors="coerce")
    return 0.0 if pd.isna(number) else float(number)


class Flame:
    """flame.csv's rows: every stack of the largest profiled point (a sweep point before a
    master step, then the most clients, then the most messages), so the report can draw its
    flame graph from the run's committed tables alone."""

    def __init__(self) -> None:
        self.rank: tuple[bool, float, float] | None = None
        self.rows: list[dict[str, Any]] = []

    def offer(self, keys: dict[str, Any], point_dir: Path) -> None:
        """Keep `point_dir`'s stacks if it is the largest profiled point so far."""
        path = point_dir / "profile" / "server.collapsed"
        rank = (keys["phase"] == "sweep", _size(keys["clients"]), _size(keys["messages"]))
        if not path.is_file() or (self.rank is not None and rank <= self.rank):
            return
        stacks = read_collapsed(path)
        if stacks:
            self.rank = rank
            self.rows = [keys | {"stack": ";".join(frames), "samples": count}
                         for frames, count in stacks]  # fmt: skip


def flame_table(rows: list[dict[str, Any]], key_columns: list[str]) -> pd.DataFrame:
    """flame.csv from Flame's rows, typed (nullable integers)."""
    frame = pd.DataFrame(rows).reindex(columns=[*key_columns, *FLAME_COLUMNS])
    for name in ("step", "clients", "messages", "rep", "payload_bytes", "samples"):
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("Int64")
    return frame


def read_flame(path: Path, key_columns: list[str]) -> pd.DataFrame:
    """flame.csv as written; no rows when there is none (no profiled point, an older run)."""
    if not path.is_file():
        return flame_table([], key_columns)
    return pd.read_csv(path, dtype={name: "Int64" for name in INTS if name in key_columns}
                       | {"point": str, "samples": "Int64"})  # fmt: skip


def flame_stacks(flame: pd.DataFrame) -> list[tuple[list[str], int]]:
    """flame.csv's rows as stacks (frames outermost first, samples)."""
    return [(str(stack).split(";"), int(samples))
            for stack, samples in zip(flame["stack"], flame["samples"])]  # fmt: skip
