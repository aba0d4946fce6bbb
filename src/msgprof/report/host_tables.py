"""resources.csv (the server process over time) and limits.csv (the host of each point).

The report draws the server's resources and the hosts' limits from these two tables, so it
never opens a point directory: only `analysis` knows where a run keeps its raw files. Values are
copied as measured (no rounding), so a plot drawn from the table is the plot of the raw file, and
resources.csv takes its sample columns from resources.parquet itself: the monitor that writes
that file is the one place they are named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

#: Columns that say which point or step a row belongs to (a subset of analysis.KEY_COLUMNS;
#: join with points.csv on `point` for the rest).
ROW_KEYS = ["run", "point", "phase", "step"]

#: Point and phase of the master server's samples over the whole case (master/resources.parquet).
MASTER = "master"

#: limits.csv after the row keys: each limits.json field and how it is kept (sysctl values
#: are read from /proc as text, and stay text: "32768 60999", "4096").
LIMIT_FIELDS = {
    "host": "text",
    "captured_unix_s": "float",
    "rlimit_nofile_soft": "int",
    "rlimit_nofile_hard": "int",
    "can_raise_nofile": "bool",
    "server_rlimit_nofile_soft": "int",
    "server_rlimit_nofile_hard": "int",
    "client_rlimit_nofile_soft": "int",
    "client_rlimit_nofile_hard": "int",
    "somaxconn": "text",
    "tcp_max_syn_backlog": "text",
    "ip_local_port_range": "text",
    "file_max": "text",
    "nr_open": "text",
    "tcp_fin_timeout": "text",
    "cores": "int",
    "cpu_affinity": "int",
    "memory_total_bytes": "int",
    "memory_available_bytes": "int",
    "kernel": "text",
    "os": "text",
    "python": "text",
    "pyzmq": "text",
    "libzmq": "text",
    "curve": "bool",
    "data_dir": "text",
    "disk_total_bytes": "int",
    "disk_free_bytes": "int",
    "data_mountpoint": "text",
    "data_fstype": "text",
}

#: limits.csv: one row per point or step that has a limits.json.
LIMIT_COLUMNS = ROW_KEYS + list(LIMIT_FIELDS)
#: Integer columns of limits.csv; nullable, so a field a limits.json lacks stays an empty cell.
LIMIT_INTS = ("step", *(name for name, kind in LIMIT_FIELDS.items() if kind == "int"))


def read_samples(path: Path) -> pa.Table | None:
    """A resources.parquet, or None when there is none."""
    return pq.read_table(path) if path.is_file() else None


def master_keys(run: str) -> dict[str, Any]:
    """The row keys of the master server's own samples."""
    return {"run": run, "point": MASTER, "phase": MASTER, "step": None}


def resource_rows(keys: dict[str, Any], samples: pa.Table | None) -> pd.DataFrame | None:
    """resources.csv rows of one point, step or the master server: the row keys, then every
    column of its resources.parquet as the monitor wrote it; None without samples."""
    if samples is None or samples.num_rows == 0:
        return None
    frame = samples.to_pandas()
    for name in reversed(ROW_KEYS):
        frame.insert(0, name, keys.get(name))
    return frame


def resource_ints(frames: list[pd.DataFrame]) -> list[str]:
    """The integer columns of resources.csv: `step` and those the raw files hold as integers."""
    raw = {name for f in frames for name, dtype in f.dtypes.items() if dtype.kind in "iu"}
    return ["step", *sorted(raw - set(ROW_KEYS))]


def limit_row(keys: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    """The limits.csv row of one point or step, from its limits.json."""
    return {**{name: keys.get(name) for name in ROW_KEYS}, **limits}


def in_point_order(frame: pd.DataFrame, points: pd.Series) -> pd.DataFrame:
    """Rows ordered like points.csv (master samples last), each point's rows as they came."""
    rank = {name: k for k, name in enumerate(points)}
    order = frame["point"].map(rank).fillna(len(rank))
    return frame.iloc[order.argsort(kind="stable")].reset_index(drop=True)


def read_resources(path: Path) -> pd.DataFrame:
    """resources.csv as written."""
    return pd.read_csv(path, dtype={"run": "string", "point": "string", "phase": "string",
                                    "step": "Int64"})  # fmt: skip


def read_limits(path: Path) -> pd.DataFrame:
    """limits.csv as written; text fields stay text ("4096", not 4096)."""
    text = ["run", "point", "phase", *(k for k, kind in LIMIT_FIELDS.items() if kind == "text")]
    dtypes = {name: "string" for name in text} | {name: "Int64" for name in LIMIT_INTS}
    return pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""])
