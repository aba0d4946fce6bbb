"""A run's raw files → the tables the report reads, and nothing else reads raw files for it.

analysis.csv (one row per client), points.csv (one row per point), resources.csv (the server
process over time), limits.csv (the host of each point) and latency.csv (one row per paced
configuration, msgprof.report.latency): see docs/results.md.

A run directory holds sweep points under `points/<C>-<M>-<rep>/` (paced: `<C>-<M>-r<RATE>-<rep>/`
or timed `<C>-<D>s-r<RATE>-<rep>/`) and the steps of the master test case under
`master/<NN>-<phase>-<C>x<M>/`; each has point.json, rtt.parquet, clients.parquet, latency.hlog,
resources.parquet, limits.json and server.json. A point is a result even when it hit a limit, so
a missing optional file gives NaN and a warning, never a crash; a directory without point.json is
a point still running or one that failed half-way, and is skipped with a warning.

RTT summaries are exact quantiles of the raw samples under the project's one rule
(`msgprof.stats`: always a measured value), latency summaries quantiles of merged HdrHistograms
under the same rule; never averages of per-client percentiles.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from msgprof import atomic
from msgprof.report import host_tables, latency
from msgprof.report import profile_table as profiles
from msgprof.stats import quantile, quantiles, resource_summary

log = logging.getLogger("msgprof.analysis")

#: Order of phases in every table and plot: the sweep, then the master case up and down.
PHASES = ("sweep", "ramp_up", "ramp_down")

#: Columns identifying a point or step; both tables start with them.
KEY_COLUMNS = [
    "run", "point", "phase", "step", "clients", "messages", "rep", "payload_bytes", "ack_after",
    "curve",
]  # fmt: skip

#: analysis.csv: one row per client per point or step.
CLIENT_COLUMNS = KEY_COLUMNS + [
    "client_id",
    "connected",
    "connect_ms",
    "first_ack_ms",
    "rtt_median_us",
    "rtt_p90_us",
    "rtt_p99_us",
    "rtt_max_us",
    "sent",
    "acked",
    "errors",
    "timeouts",
]

#: points.csv: one row per point or step.
POINT_COLUMNS = KEY_COLUMNS + [
    "verdict",
    "verdicts",
    "connected",
    "planned",
    "acked",
    "lost",
    "duplicates_stored",
    "throughput_msgs_per_s",
    "throughput_window",
    "rtt_p50_us",
    "rtt_p90_us",
    "rtt_p99_us",
    "rtt_p999_us",
    "rtt_max_us",
    "rtt_mean_us",
    "connect_p50_ms",
    "connect_p99_ms",
    "connect_max_ms",
    "first_ack_p50_ms",
    "errors",
    "client_busiest_thread_max",
    "client_saturated",
    "server_cpu_s",
    "server_peak_rss_mb",
    "server_peak_fds",
    "server_peak_queue_mb",
    "server_service_p50_us",
    "server_service_p99_us",
    "refused",
    "somaxconn",
    "rlimit_nofile",
]
#: A point's pace, empty for a closed loop: messages/s per client and seconds of a timed point.
PACE_COLUMNS = ["rate_per_client", "duration_s"]
#: The kernel's listen-queue and SYN counters during a point (point.json `kernel_tcp`, as
#: msgprof.experiment.netstat names them): non-zero ones explain connect times of 1 s, 3 s, ...
KERNEL_TCP_COLUMNS = [
    "listen_overflows", "listen_drops", "syn_queue_drops", "syn_cookies_sent", "syn_retransmits"
]  # fmt: skip
#: What a connection costs the server, and what the kernel's listen queue did.
CAPACITY_COLUMNS = ["server_rss_per_connection_kb", *KERNEL_TCP_COLUMNS]
#: Whether py-spy sampled the server (profile.csv has its functions), and whether what the
#: server stored was checked (a foreign server's may not be): never compare unknowingly.
PROFILE_COLUMNS = ["profiled", "verified"]
#: points.csv ends with the pace, the latency, the capacity and the profile columns (after the
#: columns it always had).
POINT_COLUMNS += PACE_COLUMNS + latency.POINT_COLUMNS + CAPACITY_COLUMNS + PROFILE_COLUMNS

#: Quantiles of the raw RTT samples in points.csv (column suffix → q): the latency ones.
RTT_QUANTILES = latency.QUANTILES

_SWEEP_NAME = re.compile(
    r"^(?P<clients>\d+)-(?:(?P<messages>\d+)|(?P<duration>\d+(?:\.\d+)?)s)"
    r"(?:-r(?P<rate>\d+(?:\.\d+)?))?-(?P<rep>\d+)(?P<curve>-curve)?$"
)
_STEP_NAME = re.compile(r"^(?P<step>\d+)-(?P<phase>[a-z_]+)-(?P<clients>\d+)x(?P<messages>\d+)$")
_MIB = float(1 << 20)


def point_dirs(run_dir: Path | str) -> list[tuple[str, Path]]:
    """(group, directory) of every sweep point and master step that has a point.json."""
    run_dir = Path(run_dir)
    found = []
    for group in ("points", "master"):
        base = run_dir / group
        if not base.is_dir():
            continue
        for path in sorted(p for p in base.iterdir() if p.is_dir()):
            if group == "master" and not _STEP_NAME.match(path.name):
                continue
            if not (path / "point.json").is_file():
                log.warning("%s: no point.json (still running or failed half-way), skipped", path)
                continue
            found.append((group, path))
    return found


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    """A JSON document, or None (with a warning) when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        log.warning("%s: %s missing", path.parent, what)
    except (OSError, ValueError) as err:
        log.warning("%s: %s unreadable (%s)", path.parent, what, err)
    return None


def _number(value: Any) -> float:
    """`value` as a float; NaN for None, text that is no number, or a missing value."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _name_number(names: dict[str, str | None], key: str) -> float | None:
    """A rate or duration spelled in a point's name ("2.5"), or None."""
    return float(names[key]) if names.get(key) is not None else None


def point_keys(run: str, group: str, path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """The identifying columns of a point and its pace: from point.json, else from the
    directory name."""
    params = doc.get("parameters", {})
    sweep = _SWEEP_NAME.match(path.name) if group == "points" else None
    step = _STEP_NAME.match(path.name) if group == "master" else None
    names = (sweep or step).groupdict() if (sweep or step) else {}
    return {
        "run": run,
        "point": path.name,
        "phase": doc.get("phase") or names.get("phase") or "sweep",
        "step": doc.get("step", names.get("step")),
        "clients": doc.get("clients", names.get("clients")),
        "messages": doc.get("messages", names.get("messages")),
        "rep": doc.get("rep", names.get("rep")),
        "payload_bytes": params.get("payload_bytes"),
        "ack_after": params.get("ack_after"),
        "curve": bool(params.get("curve", False)),
        "rate_per_client": doc.get("rate_per_client", _name_number(names, "rate")),
        "duration_s": doc.get("duration_s", _name_number(names, "duration")),
    }


def _ns_to(values: pd.Series, scale: float, valid: pd.Series | None = None) -> pd.Series:
    """ns → another unit; the client's -1 ("never") and invalid rows become NaN."""
    values = values.astype("float64")
    keep = values >= 0
    if valid is not None:
        keep &= valid.astype(bool)
    return (values / scale).where(keep)


def client_rows(keys: dict[str, Any], path: Path) -> pd.DataFrame | None:
    """analysis.csv rows of one point from its clients.parquet, or None when it is missing."""
    file = path / "clients.parquet"
    if not file.is_file():
        log.warning("%s: clients.parquet missing, no per-client rows", path)
        return None
    t = pd.read_parquet(file)
    connected = t["connected"].astype(bool)
    rows = pd.DataFrame(
        {
            "client_id": t["client_id"].astype("int64"),
            "connected": connected,
            "connect_ms": _ns_to(t["connect_ns"], 1e6, connected),
            "first_ack_ms": _ns_to(t["first_ack_ns"], 1e6),
            "rtt_median_us": _ns_to(t["rtt_median_ns"], 1e3),
            "rtt_p90_us": _ns_to(t["rtt_p90_ns"], 1e3),
            "rtt_p99_us": _ns_to(t["rtt_p99_ns"], 1e3),
            "rtt_max_us": _ns_to(t["rtt_max_ns"], 1e3),
            "sent": t["sent"].astype("int64"),
            "acked": t["acked"].astype("int64"),
            "errors": t["errors"].astype("int64"),
            "timeouts": t["timeouts"].astype("int64"),
        }
    )
    for name, value in reversed(keys.items()):
        rows.insert(0, name, value)
    return rows


def ok_rtt_ns(path: Path | str) -> np.ndarray:
    """Every OK round trip of an rtt.parquet in ns, read a row group at a time, two columns only.

    Peak memory is the int64 result plus one row group, not the whole table.
    """
    parquet = pq.ParquetFile(path)
    parts = []
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group, columns=["rtt_ns", "status"])
        ok = table["rtt_ns"].filter(pc.equal(table["status"], "OK"))
        parts.append(ok.to_numpy().astype(np.int64, copy=False))
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def rtt_summary(path: Path) -> dict[str, float]:
    """Exact quantiles (µs) and mean of the OK round trips of a point; NaN when there are none."""
    names = [f"rtt_{suffix}_us" for suffix in RTT_QUANTILES] + ["rtt_mean_us"]
    if not path.is_file():
        log.warning("%s: rtt.parquet missing, RTT quantiles are NaN", path.parent)
        return dict.fromkeys(names, math.nan)
    samples = ok_rtt_ns(path)
    if samples.size == 0:
        return dict.fromkeys(names, math.nan)
    mean = float(samples.mean())
    values = quantiles(samples, list(RTT_QUANTILES.values()), overwrite=True)
    return dict(zip(names, [v / 1e3 for v in values] + [mean / 1e3]))


def _quantile(values: pd.Series, q: float) -> float:
    """The quantile `q` of a column's values, empty cells left out; NaN when none are left."""
    return quantile(values.dropna().to_numpy(), q)


def setup_summary(clients: pd.DataFrame | None) -> dict[str, float]:
    """Connect-time quantiles (ms, connected clients only) and the median time to first ack."""
    if clients is None:
        return dict.fromkeys(
            ["connect_p50_ms", "connect_p99_ms", "connect_max_ms", "first_ack_p50_ms"], math.nan
        )
    return {
        "connect_p50_ms": _quantile(clients["connect_ms"], 0.5),
        "connect_p99_ms": _quantile(clients["connect_ms"], 0.99),
        "connect_max_ms": _quantile(clients["connect_ms"], 1.0),
        "first_ack_p50_ms": _quantile(clients["first_ack_ms"], 0.5),
    }


def format_errors(errors: dict[str, Any]) -> str:
    """{"TIMEOUT": 3, "not_sent": 7, "BUSY": 0} → "TIMEOUT=3;not_sent=7" (sorted, no zeros)."""
    return ";".join(f"{kind}={n}" for kind, n in sorted(errors.items()) if n)


def server_summary(doc: dict[str, Any], path: Path, samples: pa.Table | None) -> dict[str, float]:
    """Server CPU, peaks and service-time quantiles: point.json, else resources.parquet."""
    server = doc.get("server", {})
    resources = server.get("resources") or {}
    if "cpu_user_s" not in resources:
        if samples is not None:
            resources = resource_summary(samples)
        else:
            log.warning("%s: no server resource samples, server columns are NaN", path)
    service = server.get("service_ns") or {}
    return {
        "server_cpu_s": _number(resources.get("cpu_user_s"))
        + _number(resources.get("cpu_system_s")),
        "server_peak_rss_mb": _number(resources.get("peak_rss_bytes")) / _MIB,
        "server_peak_fds": _number(resources.get("peak_open_fds")),
        "server_peak_queue_mb": _number(resources.get("peak_queue_bytes")) / _MIB,
        "server_service_p50_us": _number(service.get("p50")) / 1e3,
        "server_service_p99_us": _number(service.get("p99")) / 1e3,
        "refused": _number(server.get("refused")),
        "server_rss_per_connection_kb": _number(resources.get("rss_per_connection_bytes")) / 1e3,
    }


def point_row(
    keys: dict[str, Any],
    doc: dict[str, Any],
    path: Path,
    clients: pd.DataFrame | None,
    limits: dict[str, Any],
    samples: pa.Table | None,
) -> dict[str, Any]:
    """The points.csv row of one point or step (`limits`: its limits.json; `samples`: its
    resources.parquet)."""
    rlimit = (doc.get("server", {}).get("rlimit_nofile") or {}).get("soft")
    check = doc.get("verification") or {}
    return {
        **keys,
        "verdict": doc.get("verdict"),
        "verdicts": ";".join(doc.get("verdicts", [])),
        **{
            name: _number(doc.get(name))
            for name in ("connected", "planned", "acked", "lost", "duplicates_stored")
        },
        "throughput_msgs_per_s": _number(doc.get("throughput_msgs_per_s")),
        "throughput_window": doc.get("throughput_window"),
        **rtt_summary(path / "rtt.parquet"),
        **setup_summary(clients),
        "errors": format_errors(doc.get("errors", {})),
        "client_busiest_thread_max": _number(doc.get("client_busiest_thread_max")),
        "client_saturated": doc.get("client_saturated"),
        **server_summary(doc, path, samples),
        "somaxconn": _number(limits.get("somaxconn")),
        "rlimit_nofile": _number(
            rlimit if rlimit is not None else limits.get("rlimit_nofile_soft")
        ),
        **{name: _number((doc.get("kernel_tcp") or {}).get(name)) for name in KERNEL_TCP_COLUMNS},
        "profiled": bool((doc.get("profile") or {}).get("profiled")),
        # read back, or checked by a command (no `verified` key: before it, queue files read)
        "verified": bool(check) and check.get("verified", True) is not False,
    }


def _order(frame: pd.DataFrame, extra: Iterable[str] = ()) -> pd.DataFrame:
    """Sort by phase order, step, clients, messages, rep (then `extra`), with a fresh index."""
    rank = frame["phase"].map({p: i for i, p in enumerate(PHASES)}).fillna(len(PHASES))
    keys = ["step", "clients", "messages", "rep", *extra]
    return (
        frame.assign(_rank=rank)
        .sort_values(["_rank", *keys, "point"], na_position="first", kind="stable")
        .drop(columns="_rank")
        .reset_index(drop=True)
    )


#: Integer columns; nullable, so a value a point did not record stays empty rather than 0.
INT_COLUMNS = (
    "step", "clients", "messages", "rep", "payload_bytes", "connected", "planned", "acked", "lost",
    "duplicates_stored", "server_peak_fds", "refused", "somaxconn", "rlimit_nofile",
    *latency.SEND_COUNTS, *KERNEL_TCP_COLUMNS,
)  # fmt: skip


def _typed(
    frame: pd.DataFrame, columns: list[str], ints: Iterable[str] = INT_COLUMNS
) -> pd.DataFrame:
    """`frame` with exactly `columns`, in order, integer columns (`ints`) as nullable integers."""
    frame = frame.reindex(columns=columns)
    for name in ints:
        if name in columns and frame[name].dtype != bool:
            frame[name] = pd.to_numeric(frame[name], errors="coerce").round().astype("Int64")
    return frame


#: Decimals kept per unit suffix: ns resolution for times, bytes-ish for sizes.
DECIMALS = {"_us": 3, "_ms": 6, "_mb": 6, "_kb": 3, "_s": 3, "_per_s": 3, "_max": 4}


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    """Float columns rounded to the resolution of what they measure (no interpolation noise)."""
    for name in frame.columns:
        if frame[name].dtype.kind == "f":
            digits = next((d for suffix, d in DECIMALS.items() if name.endswith(suffix)), None)
            if digits is not None:
                frame[name] = frame[name].round(digits)
    return frame


class Tables(NamedTuple):
    """The tables of a run, as `analysis` writes them."""

    clients: pd.DataFrame  # analysis.csv
    points: pd.DataFrame  # points.csv
    resources: pd.DataFrame  # resources.csv
    limits: pd.DataFrame  # limits.csv
    latency: pd.DataFrame  # latency.csv
    profile: pd.DataFrame  # profile.csv
    flame: pd.DataFrame  # flame.csv


#: File name of each table in the run directory.
FILES = Tables("analysis.csv", "points.csv", "resources.csv", "limits.csv", "latency.csv",
               "profile.csv", "flame.csv")  # fmt: skip


class _Rows:
    """The rows of each table, gathered point by point."""

    def __init__(self) -> None:
        self.clients: list[pd.DataFrame] = []
        self.points: list[dict[str, Any]] = []
        self.resources: list[pd.DataFrame] = []
        self.limits: list[dict[str, Any]] = []
        self.latency = latency.Configurations()
        self.profile: list[dict[str, Any]] = []
        self.flame = profiles.Flame()

    def add_point(self, keys: dict[str, Any], doc: dict[str, Any], path: Path) -> None:
        clients = client_rows(keys, path)
        if clients is not None:
            self.clients.append(clients)
        limits = _read_json(path / "limits.json", "limits.json")
        if limits is not None:
            self.limits.append(host_tables.limit_row(keys, limits))
        samples = host_tables.read_samples(path / "resources.parquet")
        self.add_samples(keys, samples)
        hists = latency.point_histograms(path)
        row = point_row(keys, doc, path, clients, limits or {}, samples)
        self.points.append(row | latency.point_columns(doc, hists))
        self.latency.add(keys, doc, hists)
        self.profile += profiles.profile_rows({k: keys[k] for k in KEY_COLUMNS}, path)
        self.flame.offer({k: keys[k] for k in KEY_COLUMNS}, path)

    def add_samples(self, keys: dict[str, Any], samples: pa.Table | None) -> None:
        frame = host_tables.resource_rows(keys, samples)
        if frame is not None:
            self.resources.append(frame)

    def tables(self) -> Tables:
        clients = pd.concat(self.clients, ignore_index=True) if self.clients else pd.DataFrame()
        clients = _rounded(_typed(clients, CLIENT_COLUMNS))
        points = _rounded(_typed(pd.DataFrame(self.points), POINT_COLUMNS))
        if len(points):
            points = _order(points, ["rate_per_client"])
        frames = pd.concat(self.resources, ignore_index=True) if self.resources else pd.DataFrame()
        columns = list(dict.fromkeys([*host_tables.ROW_KEYS, *frames.columns]))
        resources = _typed(frames, columns, host_tables.resource_ints(self.resources))
        limits = pd.DataFrame(self.limits)
        limits = _typed(limits, host_tables.LIMIT_COLUMNS, host_tables.LIMIT_INTS)
        order = points["point"] if len(points) else pd.Series(dtype=str)
        if len(clients):  # points of one size and rep but another rate stay apart
            clients = host_tables.in_point_order(
                clients.sort_values("client_id", kind="stable"), order
            )
        configurations = self.latency.table()
        return Tables(
            clients,
            points,
            host_tables.in_point_order(resources, order),
            host_tables.in_point_order(limits, order),
            _rounded(_typed(configurations, latency.TABLE_COLUMNS, latency.TABLE_INTS)),
            profiles.profile_table(self.profile, KEY_COLUMNS),
            profiles.flame_table(self.flame.rows, KEY_COLUMNS),
        )


def collect(run_dir: Path | str) -> Tables:
    """The tables of every point and master step of `run_dir`."""
    run_dir = Path(run_dir)
    run = run_dir.resolve().name
    rows = _Rows()
    for group, path in point_dirs(run_dir):
        doc = _read_json(path / "point.json", "point.json")
        if doc is not None:
            rows.add_point(point_keys(run, group, path, doc), doc, path)
    master = host_tables.read_samples(run_dir / "master" / "resources.parquet")
    rows.add_samples(host_tables.master_keys(run), master)
    return rows.tables()


def write_tables(run_dir: Path | str) -> Tables:
    """Write the seven tables into run_dir atomically; return their paths."""
    run_dir = Path(run_dir)
    paths = [
        atomic.write_text(run_dir / name, frame.to_csv(index=False, lineterminator="\n"))
        for name, frame in zip(FILES, collect(run_dir))
    ]
    return Tables(*paths)


def read_tables(run_dir: Path | str) -> Tables:
    """The tables of `run_dir` as written, made first when one (but the profile's) is missing."""
    run_dir = Path(run_dir)
    if not all((run_dir / name).is_file() for name in FILES[:-2]):
        write_tables(run_dir)
    ints = {name: "Int64" for name in INT_COLUMNS}
    clients_df = pd.read_csv(
        run_dir / FILES.clients,
        dtype={k: v for k, v in ints.items() if k in KEY_COLUMNS} | {"point": str},
    )
    points_df = pd.read_csv(
        run_dir / FILES.points,
        dtype=ints | {"point": str, "verdicts": str, "errors": str},
        keep_default_na=False,
        na_values=[""],
    )
    for name in ("verdicts", "errors"):
        points_df[name] = points_df[name].fillna("")
    return Tables(
        clients_df,
        points_df,
        host_tables.read_resources(run_dir / FILES.resources),
        host_tables.read_limits(run_dir / FILES.limits),
        latency.read_table(run_dir / FILES.latency),
        profiles.read_profile(run_dir / FILES.profile, KEY_COLUMNS),
        profiles.read_flame(run_dir / FILES.flame, KEY_COLUMNS),
    )
