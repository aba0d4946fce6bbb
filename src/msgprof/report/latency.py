"""latency.csv and the latency columns of points.csv: quantiles of merged HdrHistograms.

Every point directory holds latency.hlog, the interval log of all its client processes
(msgprof.histlog; tag ``corrected``: latency from the intended send, ``uncorrected``: the round
trip from the actual send). A point's quantiles are read off the sum of its intervals, a paced
configuration's off the sum over all its repetitions: histograms add exactly, percentiles do
not, so no percentile here is an average of others. A directory without a readable log adds
nothing to a sum, with a warning; a point without one has NaN quantiles.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from hdrh.histogram import HdrHistogram

from msgprof import histlog

log = logging.getLogger("msgprof.analysis")

#: A point's interval log, all its client processes merged.
HLOG = "latency.hlog"
TAGS = ("corrected", "uncorrected")
#: Latency quantiles (column infix → q).
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999, "max": 1.0}

#: Send counts of point.json: what the clients sent past warm-up, how many left late (more than
#: 1 ms after their intended time) and why: a full in-flight window, or the generator itself.
SEND_COUNTS = ("late_sends", "late_window_full", "late_generator", "measured_sends")

#: points.csv's last columns, after the point's pace (rate_per_client, duration_s).
POINT_COLUMNS = [
    "offered_msgs_per_s",
    "achieved_msgs_per_s",
    *(f"latency_{name}_us" for name in QUANTILES),
    "uncorrected_p99_us",
    "lag_p99_us",
    *SEND_COUNTS,
]

#: latency.csv's first columns: what the repetitions of a paced configuration share.
CONFIG_COLUMNS = [
    "run",
    "clients",
    "rate_per_client",
    "duration_s",
    "messages",
    "payload_bytes",
    "ack_after",
    "curve",
    "max_in_flight",
    "arrivals",
    "warmup_s",
]
#: latency.csv: one row per paced configuration, all its repetitions merged.
TABLE_COLUMNS = CONFIG_COLUMNS + [
    "repetitions",
    "ok_repetitions",
    "points",
    "offered_msgs_per_s",
    "achieved_msgs_per_s",
    "achieved_window_s",
    "latency_count",
    *(f"latency_{name}_us" for name in QUANTILES),
    "uncorrected_p50_us",
    "uncorrected_p99_us",
    "uncorrected_max_us",
    "worst_rep_lag_p99_us",
    *SEND_COUNTS,
    "late_generator_share",
    "verdicts",
]
#: Integer columns of latency.csv.
TABLE_INTS = (
    "clients",
    "messages",
    "payload_bytes",
    "max_in_flight",
    "repetitions",
    "ok_repetitions",
    "latency_count",
    *SEND_COUNTS,
)


T = TypeVar("T")


def _guarded(point_dir: Path, read: Callable[[Path], T]) -> T | None:
    """`read(point_dir/latency.hlog)`, or None with a warning when the log is missing or
    damaged (runs made before the log existed have none)."""
    path = point_dir / HLOG
    try:
        return read(path)
    except FileNotFoundError:
        log.warning("%s: %s missing, no latency histograms from it", point_dir, HLOG)
    except (OSError, ValueError) as err:
        log.warning("%s: %s unreadable (%s), no latency histograms from it", point_dir, HLOG, err)
    return None


def read_intervals(point_dir: Path | str) -> list[histlog.Interval]:
    """The intervals of a point's latency.hlog; none when it is missing or damaged."""
    return _guarded(Path(point_dir), histlog.read_log) or []


def _log_sums(point_dir: Path, tags: Iterable[str]) -> dict[str, HdrHistogram]:
    """Per tag, the sum of one point's log, read an interval at a time (a long point's log is
    never held whole); empty when it is missing or damaged, never a part of it."""

    def read(path: Path) -> dict[str, HdrHistogram]:
        sums = {tag: histlog.new_histogram() for tag in tags}
        for item in histlog.iter_log(path):
            if item.tag in sums:
                sums[item.tag].add(item.hist)
        return sums

    return _guarded(point_dir, read) or {}


def _sums(point_dirs: Iterable[Path | str], tags: Iterable[str]) -> dict[str, HdrHistogram]:
    """Per tag, the sum of every interval of every directory's log."""
    totals = {tag: histlog.new_histogram() for tag in tags}
    for point_dir in point_dirs:
        for tag, hist in _log_sums(Path(point_dir), totals).items():
            totals[tag].add(hist)
    return totals


def merged_histograms(point_dirs: Iterable[Path | str], tag: str) -> HdrHistogram:
    """One histogram of `tag` ("corrected" or "uncorrected") over every measured message of the
    points in `point_dirs` (e.g. all repetitions of a configuration); empty when none has a log.
    Read quantiles off it with msgprof.histlog.quantiles_us."""
    return _sums(point_dirs, (tag,))[tag]


def point_histograms(point_dir: Path | str) -> dict[str, HdrHistogram]:
    """Both tags' histograms of one point, its client processes summed."""
    return _sums([point_dir], TAGS)


def quantile_columns(hist: HdrHistogram, prefix: str, names: Iterable[str] = QUANTILES) -> dict:
    """{f"{prefix}_{name}_us": quantile} of `hist`; NaN each when it is empty."""
    names = list(names)
    values = histlog.quantiles_us(hist, [QUANTILES[name] for name in names])
    return {f"{prefix}_{name}_us": value for name, value in zip(names, values, strict=True)}


def _float(value: Any) -> float:
    """A point.json number as a float; NaN for null or a key the document lacks."""
    return math.nan if value is None else float(value)


def point_columns(doc: dict[str, Any], hists: dict[str, HdrHistogram]) -> dict[str, float]:
    """points.csv's POINT_COLUMNS of one point: offered and achieved rate, lag and late sends
    from point.json, latency quantiles from its histograms (`point_histograms`)."""
    return {
        "offered_msgs_per_s": _float(doc.get("offered_msgs_per_s")),
        "achieved_msgs_per_s": _float(doc.get("achieved_msgs_per_s")),
        **quantile_columns(hists["corrected"], "latency"),
        **quantile_columns(hists["uncorrected"], "uncorrected", ["p99"]),
        "lag_p99_us": _float(doc.get("lag_p99_us")),
        **{name: _float(doc.get(name)) for name in SEND_COUNTS},
    }


class _Configuration:
    """The repetitions of one paced configuration seen so far, their histograms summed."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.points: list[str] = []
        self.docs: list[dict[str, Any]] = []
        self.hists = {tag: histlog.new_histogram() for tag in TAGS}

    def add(self, point: str, doc: dict[str, Any], hists: dict[str, HdrHistogram]) -> None:
        self.points.append(point)
        self.docs.append(doc)
        for tag in TAGS:
            self.hists[tag].add(hists[tag])

    def achieved(self) -> tuple[float, float]:
        """(messages/s, seconds): the replies counted in every repetition's measured window over
        the sum of those windows, i.e. each repetition's rate weighted by its window."""
        measured = [
            (doc["achieved_msgs_per_s"], doc.get("achieved_window_s") or 0.0)
            for doc in self.docs
            if doc.get("achieved_msgs_per_s") is not None
        ]
        window_s = sum(seconds for _rate, seconds in measured)
        if window_s <= 0:
            return math.nan, 0.0
        return sum(rate * seconds for rate, seconds in measured) / window_s, window_s

    def row(self) -> dict[str, Any]:
        docs = self.docs
        sends = {name: sum(doc.get(name) or 0 for doc in docs) for name in SEND_COUNTS}
        lags = [doc["lag_p99_us"] for doc in docs if doc.get("lag_p99_us") is not None]
        achieved, window_s = self.achieved()
        return {
            **self.config,
            "repetitions": len(docs),
            "ok_repetitions": sum(doc.get("verdict") == "ok" for doc in docs),
            "points": ";".join(self.points),
            "offered_msgs_per_s": _float(docs[0].get("offered_msgs_per_s")),
            "achieved_msgs_per_s": achieved,
            "achieved_window_s": window_s,
            "latency_count": self.hists["corrected"].get_total_count(),
            **quantile_columns(self.hists["corrected"], "latency"),
            **quantile_columns(self.hists["uncorrected"], "uncorrected", ["p50", "p99", "max"]),
            "worst_rep_lag_p99_us": max(lags, default=math.nan),
            **sends,
            "late_generator_share": (
                sends["late_generator"] / sends["measured_sends"]
                if sends["measured_sends"]
                else math.nan
            ),
            "verdicts": ";".join(sorted({v for doc in docs for v in doc.get("verdicts", [])})),
        }


class Configurations:
    """latency.csv, gathered point by point: each paced point's histograms are added to its
    configuration's as it comes, so no point's histograms are kept."""

    def __init__(self) -> None:
        self._found: dict[tuple, _Configuration] = {}

    def add(
        self, keys: dict[str, Any], doc: dict[str, Any], hists: dict[str, HdrHistogram]
    ) -> None:
        """Count a point (`keys`: its points.csv key and pace columns); closed-loop ones are
        left out."""
        if keys.get("rate_per_client") is None:
            return
        config = {name: keys.get(name) for name in CONFIG_COLUMNS}
        config |= {name: doc.get(name) for name in ("max_in_flight", "arrivals", "warmup_s")}
        key = tuple(config.values())
        if key not in self._found:
            self._found[key] = _Configuration(config)
        self._found[key].add(keys["point"], doc, hists)

    def table(self) -> pd.DataFrame:
        """One row per configuration, ordered by its columns (empty cells first)."""
        frame = pd.DataFrame([c.row() for c in self._found.values()], columns=TABLE_COLUMNS)
        return frame.sort_values(
            CONFIG_COLUMNS, na_position="first", kind="stable", ignore_index=True
        )


def read_table(path: Path) -> pd.DataFrame:
    """latency.csv as written: counts as nullable integers, an empty `verdicts` as ""."""
    frame = pd.read_csv(
        path,
        dtype={name: "Int64" for name in TABLE_INTS} | {"points": str, "verdicts": str},
        keep_default_na=False,
        na_values=[""],
    )
    frame["verdicts"] = frame["verdicts"].fillna("")
    return frame
