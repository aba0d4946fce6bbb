"""`msgprof compare RUN_A RUN_B`: which of B's numbers differ from A's by more than the noise.

Points are matched by their parameters (MATCH_COLUMNS, the repetition left out); a parameter
that has one value in each run but not the same one (the ack mode of a whole run, its payload)
is what the comparison is about: it is named at the top and left out of the match. For each
matched configuration and metric: A and B (the median over the configuration's repetitions,
points.csv), the ratio B/A, a bootstrap interval of the ratio and a verdict.

The interval resamples **repetitions** when both runs have two or more of the configuration:
the noise that makes a point swing ±20 % on this host is between runs (what else ran, where the
kernel put the threads), and only repetitions carry it. With a single repetition the interval
falls back to the **clients** of that repetition, for the metrics with a per-client value in
analysis.csv (RTT p50 and p99, connect time): it then says how precisely the run measured
itself, not how much a rerun would move, so it is marked `clients`. Without either, there is
no interval and a change past --min-change is `unknown`, never a guess. docs/review.md says
more.

Only the committed summaries are read (points.csv, analysis.csv or analysis.csv.gz,
manifest.json), so a reference run compares as well as a fresh one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: The parameters that identify a configuration (its repetitions share them).
MATCH_COLUMNS = [
    "phase", "step", "clients", "messages", "payload_bytes", "ack_after", "curve",
    "rate_per_client", "duration_s",
]  # fmt: skip
#: compare.csv's columns after the configuration's.
RESULT_COLUMNS = [
    "metric", "a", "b", "ratio", "ci_low", "ci_high", "ci_units", "reps_a", "reps_b", "verdict",
]  # fmt: skip
VERDICTS = ("faster", "slower", "same", "unknown", "only_a", "only_b")


@dataclass(frozen=True)
class Metric:
    """A compared number: its points.csv column, whether less is better, and its per-client
    counterpart in analysis.csv (column, quantile over the clients) for the clients interval."""

    name: str
    label: str
    lower_is_better: bool = True
    client_column: str | None = None
    client_quantile: float = 0.5


METRICS = (
    Metric("rtt_p50_us", "RTT p50 (µs)", client_column="rtt_median_us"),
    Metric("rtt_p99_us", "RTT p99 (µs)", client_column="rtt_p99_us"),
    Metric("rtt_p999_us", "RTT p99.9 (µs)"),
    Metric("latency_p50_us", "latency p50 (µs, paced)"),
    Metric("latency_p99_us", "latency p99 (µs, paced)"),
    Metric("latency_p999_us", "latency p99.9 (µs, paced)"),
    Metric("throughput_msgs_per_s", "throughput (msg/s)", lower_is_better=False),
    Metric("connect_p99_ms", "connect p99 (ms)", client_column="connect_ms",
           client_quantile=0.99),  # fmt: skip
    Metric("server_cpu_us_per_msg", "server CPU per message (µs)"),
    Metric("server_rss_per_connection_kb", "server RSS per connection (KB)"),
)
METRIC_NAMES = tuple(m.name for m in METRICS)


class CompareError(ValueError):
    """A run directory that cannot be compared (said in one line)."""


@dataclass
class RunData:
    """What compare reads of a run directory."""

    path: Path
    name: str
    points: pd.DataFrame
    clients: pd.DataFrame | None
    manifest: dict[str, Any] = field(default_factory=dict)


def load_run(path: Path | str) -> RunData:
    """A run's points.csv (with server CPU per message), analysis.csv(.gz) if present, and
    manifest.json if present."""
    path = Path(path)
    if not (path / "points.csv").is_file():
        raise CompareError(f"{path}: no points.csv (not a run directory, or `msgprof analyze "
                           f"{path}` has not run)")  # fmt: skip
    try:
        points = pd.read_csv(path / "points.csv", dtype={"point": str})
    except (ValueError, pd.errors.ParserError) as err:
        raise CompareError(f"{path / 'points.csv'}: unreadable ({err})") from err
    for name in (*MATCH_COLUMNS, *METRIC_NAMES):  # a run from before a column: empty
        if name not in points.columns:
            points[name] = np.nan
    for name in ("server_cpu_s", "acked"):
        points[name] = pd.to_numeric(points.get(name, np.nan), errors="coerce")
    points["server_cpu_us_per_msg"] = 1e6 * points["server_cpu_s"] / points["acked"].where(
        points["acked"] > 0
    )
    clients = None
    for name in ("analysis.csv", "analysis.csv.gz"):
        if (path / name).is_file():
            clients = pd.read_csv(path / name, dtype={"point": str})
            break
    manifest: dict[str, Any] = {}
    if (path / "manifest.json").is_file():
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except ValueError:
            manifest = {}
    return RunData(path, path.resolve().name, points, clients, manifest)


def _text(value: Any) -> str:
    """A parameter's value as a match key: numbers without trailing zeros, missing as ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"{float(value):g}"
    return str(value)


def run_differences(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """The parameters with one value in each run but not the same: {column: (A's, B's)}."""
    found = {}
    for name in MATCH_COLUMNS:
        va = {_text(v) for v in a[name]} - {""}
        vb = {_text(v) for v in b[name]} - {""}
        if len(va) == 1 and len(vb) == 1 and va != vb:
            found[name] = (va.pop(), vb.pop())
    return found


def _keyed(points: pd.DataFrame, columns: list[str]) -> pd.Series:
    return points[columns].apply(lambda row: tuple(_text(v) for v in row), axis=1)


def _bootstrap(a: np.ndarray, b: np.ndarray, q: float, rng: np.random.Generator,
               resamples: int) -> np.ndarray:  # fmt: skip
    """The ratio quantile(B*, q) / quantile(A*, q) over `resamples` resamplings of each side."""
    ia = rng.integers(0, len(a), size=(resamples, len(a)))
    ib = rng.integers(0, len(b), size=(resamples, len(b)))
    sa = np.quantile(a[ia], q, axis=1)
    sb = np.quantile(b[ib], q, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return sb / sa


@dataclass(frozen=True)
class Options:
    """How compare decides: the smallest change that counts, the interval's confidence, the
    bootstrap's resamples and seed (fixed, so a comparison gives the same numbers twice)."""

    min_change: float = 0.05
    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 1


def _client_values(run: RunData, points: pd.DataFrame, column: str) -> np.ndarray:
    if run.clients is None or column not in run.clients.columns:
        return np.array([])
    rows = run.clients[run.clients["point"].isin(set(points["point"]))]
    return rows[column].dropna().to_numpy(dtype=float)


def _interval(metric: Metric, ratio: float, groups: tuple[pd.DataFrame, pd.DataFrame],
              runs: tuple[RunData, RunData], options: Options,
              rng: np.random.Generator) -> tuple[float, float, str]:  # fmt: skip
    """(low, high, units) of the ratio's interval; NaN and "none" when nothing to resample."""
    alpha = (1 - options.confidence) / 2
    va, vb = (g[metric.name].dropna().to_numpy(dtype=float) for g in groups)
    if len(va) >= 2 and len(vb) >= 2:
        dist = _bootstrap(va, vb, 0.5, rng, options.resamples)
        units = "repetitions"
    elif metric.client_column is not None:
        ca, cb = (_client_values(r, g, metric.client_column) for r, g in zip(runs, groups))
        if len(ca) < 2 or len(cb) < 2:
            return math.nan, math.nan, "none"
        q = metric.client_quantile
        whole = np.quantile(cb, q) / np.quantile(ca, q)
        if not np.isfinite(whole) or whole <= 0:
            return math.nan, math.nan, "none"
        # the spread over clients, around the points' own ratio
        dist = ratio * _bootstrap(ca, cb, q, rng, options.resamples) / whole
        units = "clients"
    else:
        return math.nan, math.nan, "none"
    dist = dist[np.isfinite(dist)]
    if len(dist) == 0:
        return math.nan, math.nan, "none"
    low, high = np.quantile(dist, [alpha, 1 - alpha])
    return float(low), float(high), units


def verdict(metric: Metric, ratio: float, low: float, high: float, min_change: float) -> str:
    """faster, slower, same (within --min-change, or an interval that holds 1) or unknown (a
    change without an interval to tell it from noise)."""
    if not math.isfinite(ratio):
        return "unknown"
    if abs(ratio - 1) < min_change:
        return "same"
    if not (math.isfinite(low) and math.isfinite(high)):
        return "unknown"
    if low <= 1 <= high:
        return "same"
    worse = ratio > 1 if metric.lower_is_better else ratio < 1
    return "slower" if worse else "faster"


@dataclass
class Comparison:
    """compare's result: the table and what the two runs are."""

    a: RunData
    b: RunData
    differences: dict[str, tuple[str, str]]
    table: pd.DataFrame
    options: Options

    def points_of(self, run: RunData, row: pd.Series) -> list[str]:
        """The points (directory names) of `run` in the configuration of `row`."""
        columns = [c for c in MATCH_COLUMNS if c not in self.differences]
        key = tuple(_text(row[c]) for c in columns)
        return list(run.points.loc[_keyed(run.points, columns) == key, "point"])

    def provenance(self) -> dict[str, Any]:
        """Each run's commit, host and start, and the differences that matter for reading."""
        sides = {}
        for side, run in (("a", self.a), ("b", self.b)):
            git = run.manifest.get("git") or {}
            sides[side] = {
                "run": run.name, "path": str(run.path), "commit": git.get("commit"),
                "dirty": git.get("dirty"), "host": run.manifest.get("host"),
                "started_unix_s": run.manifest.get("started_unix_s"),
            }  # fmt: skip
        warnings = []
        for what in ("commit", "host"):
            if sides["a"][what] != sides["b"][what]:
                warnings.append(f"different {what}s: {sides['a'][what]} vs {sides['b'][what]}")
        if not self.a.manifest or not self.b.manifest:
            warnings.append("a run has no manifest.json: its commit and host are unknown")
        return {**sides, "warnings": warnings,
                "differences": {k: list(v) for k, v in self.differences.items()}}  # fmt: skip


def compare(a: RunData, b: RunData, options: Options | None = None) -> Comparison:
    """Match the two runs' configurations and compare every metric both have."""
    options = options or Options()
    rng = np.random.default_rng(options.seed)
    differences = run_differences(a.points, b.points)
    columns = [c for c in MATCH_COLUMNS if c not in differences]
    ka, kb = _keyed(a.points, columns), _keyed(b.points, columns)
    rows = []
    for key in dict.fromkeys([*ka, *kb]):  # A's order, then B's own
        ga, gb = a.points[ka == key], b.points[kb == key]
        base = (ga if len(ga) else gb).iloc[0]
        keys = {name: base[name] for name in MATCH_COLUMNS}
        if not len(ga) or not len(gb):
            rows.append(keys | {"metric": "", "reps_a": len(ga), "reps_b": len(gb),
                                "verdict": "only_b" if len(gb) else "only_a"})  # fmt: skip
            continue
        for metric in METRICS:
            va, vb = ga[metric.name].dropna(), gb[metric.name].dropna()
            if va.empty or vb.empty:
                continue
            value_a, value_b = float(va.median()), float(vb.median())
            # equal is a ratio of 1, zeros included; from 0 to more is no ratio
            ratio = 1.0 if value_a == value_b else value_b / value_a if value_a > 0 else math.nan
            low, high, units = _interval(metric, ratio, (ga, gb), (a, b), options, rng)
            rows.append(keys | {
                "metric": metric.name, "a": value_a, "b": value_b, "ratio": ratio,
                "ci_low": low, "ci_high": high, "ci_units": units, "reps_a": len(va),
                "reps_b": len(vb),
                "verdict": verdict(metric, ratio, low, high, options.min_change),
            })  # fmt: skip
    table = pd.DataFrame(rows).reindex(columns=[*MATCH_COLUMNS, *RESULT_COLUMNS])
    return Comparison(a, b, differences, table, options)


def counts(table: pd.DataFrame) -> pd.DataFrame:
    """Verdicts per metric (a row per metric, a column per verdict)."""
    matched = table[table["metric"].fillna("") != ""]
    found = matched.groupby("metric")["verdict"].value_counts().unstack(fill_value=0)
    order = [m for m in METRIC_NAMES if m in found.index]
    return found.reindex(index=order, columns=list(VERDICTS[:4]), fill_value=0)


def most_changed(table: pd.DataFrame, limit: int = 10) -> pd.DataFrame:
    """The rows that changed, the largest change first (faster and slower before the rest)."""
    rows = table[table["verdict"].isin(["faster", "slower", "unknown"])].copy()
    ratio = rows["ratio"].astype(float)
    rows["size"] = np.abs(np.log(ratio.where(ratio > 0)))  # no ratio (from 0): not ranked
    rows["decided"] = rows["verdict"] != "unknown"
    rows = rows.sort_values(["decided", "size"], ascending=False)
    return rows.drop(columns=["size", "decided"]).head(limit)


def _number(value: float) -> str:
    if not math.isfinite(value):
        return ""
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def describe(row: pd.Series, varying: frozenset[str] = frozenset()) -> str:
    """A configuration in words: 100 clients × 300 msg, and what else sets it apart (CURVE on,
    and the ack mode and payload where they vary in the table)."""
    parts = []
    if _text(row["phase"]) not in ("", "sweep"):
        parts.append(f"master step {_text(row['step'])} ({row['phase']})")
    parts.append(f"{_text(row['clients'])} clients")
    if _text(row["messages"]):
        parts.append(f"× {_text(row['messages'])} msg")
    if _text(row["rate_per_client"]):
        parts.append(f"at {_text(row['rate_per_client'])}/s each for {_text(row['duration_s'])} s")
    if _text(row["curve"]) == "True":
        parts.append("CURVE")
    if "ack_after" in varying:
        parts.append(f"ack after {row['ack_after']}")
    if "payload_bytes" in varying:
        parts.append(f"{_text(row['payload_bytes'])} B payload")
    return " ".join(parts)


def summary_lines(comparison: Comparison) -> list[str]:
    """What `msgprof compare` prints: the runs, what differs, verdicts per metric, the largest
    changes and the configurations of one run only."""
    doc = comparison.provenance()
    lines = []
    for side in ("a", "b"):
        run = doc[side]
        commit = (run["commit"] or "unknown")[:12] + ("+dirty" if run["dirty"] else "")
        lines.append(f"{side.upper()}: {run['run']} ({run['path']}), commit {commit}, "
                     f"host {run['host'] or 'unknown'}")  # fmt: skip
    lines += [f"warning: {w}" for w in doc["warnings"]]
    for name, (va, vb) in comparison.differences.items():
        lines.append(f"the runs differ in {name}: {va} (A) vs {vb} (B); matched without it")
    table = comparison.table
    varying = frozenset(c for c in ("ack_after", "payload_bytes") if table[c].nunique() > 1)
    opts = comparison.options
    lines.append(f"verdicts per metric (B against A; same: within {opts.min_change:.0%} or a "
                 f"{opts.confidence:.0%} interval that holds 1):")  # fmt: skip
    lines += ["  " + line for line in counts(table).to_string().splitlines()]
    changed = most_changed(table)
    if len(changed):
        lines.append("largest changes:")
        for _, row in changed.iterrows():
            interval = (f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}] over {row['ci_units']}"
                        if math.isfinite(row["ci_low"]) else "no interval")  # fmt: skip
            lines.append(f"  {row['verdict']:7} {row['metric']:29} {describe(row, varying)}: "
                         f"{_number(row['a'])} -> {_number(row['b'])}, x{row['ratio']:.3f} "
                         f"{interval}")  # fmt: skip
    for verdict_name, side in (("only_a", "A"), ("only_b", "B")):
        for _, row in table[table["verdict"] == verdict_name].iterrows():
            lines.append(f"  only in {side}: {describe(row, varying)}")
    return lines


def fails(table: pd.DataFrame, fail_on: str | None) -> bool:
    """Whether a verdict that --fail-on names is in the table."""
    if fail_on is None:
        return False
    bad = {"slower", "faster"} if fail_on == "changed" else {fail_on}
    return bool(table["verdict"].isin(bad).any())


def write_comparison(comparison: Comparison, out: Path) -> list[Path]:
    """compare.csv, compare.json (the runs and what differs) and compare.pdf into `out`."""
    from msgprof import atomic
    from msgprof.report.pages.compare import write_pdf

    out.mkdir(parents=True, exist_ok=True)
    table = comparison.table.copy()
    for name in ("a", "b", "ratio", "ci_low", "ci_high"):
        table[name] = table[name].astype(float).round(6)
    doc = comparison.provenance() | {"options": vars(comparison.options)}
    return [
        atomic.write_text(out / "compare.csv", table.to_csv(index=False, lineterminator="\n")),
        atomic.write_text(out / "compare.json", json.dumps(doc, indent=2) + "\n"),
        atomic.replace_into(out / "compare.pdf", lambda tmp: write_pdf(comparison, tmp)),
    ]
