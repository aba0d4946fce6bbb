"""What a point says of its latency and its load: offered against achieved, the corrected
latency from the merged histograms, and whether the generator kept to its schedule.

Every point has these keys in point.json; in a closed loop there is no offered rate and the
corrected latency equals the RTT. Quantiles come from the HdrHistograms of all client processes
merged (msgprof.histlog), never from averaging per-process percentiles.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from msgprof import histlog
from msgprof.config import PointConfig
from msgprof.stats import quantile

#: A point whose generator was late by itself on more than this share of its sends measured
#: the generator, not the server (verdict generator_behind).
GENERATOR_LATE_SHARE = 0.01
#: A client thread busy more than this share of the time cannot go faster.
SATURATED_THREAD = 0.9
#: Latency quantiles in point.json and points.csv (key suffix → q).
LATENCY_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999, "max": 1.0}


def merge_logs(paths: Iterable[Path]) -> list[histlog.Interval]:
    """The intervals of several processes' logs, those of one tag and start added together."""
    merged: dict[tuple[str, float], histlog.Interval] = {}
    for path in paths:
        for item in histlog.read_log(path):
            key = (item.tag, item.start_s)
            if key in merged:
                merged[key].hist.add(item.hist)
            else:
                merged[key] = item
    return sorted(merged.values(), key=lambda item: (item.start_s, item.tag))


def latency_quantiles(items: list[histlog.Interval]) -> dict[str, Any]:
    """{corrected: {p50_us: ...}, uncorrected: {...}} of the whole log, and counts."""
    out: dict[str, Any] = {}
    for tag in ("corrected", "uncorrected"):
        hist = histlog.merge(items, tag)
        values = histlog.quantiles_us(hist, list(LATENCY_QUANTILES.values()))
        out[tag] = {f"{name}_us": v for name, v in zip(LATENCY_QUANTILES, values, strict=True)}
        out[tag]["count"] = hist.get_total_count()
    return out


def achieved(
    rtt: pa.Table | None, docs: list[dict[str, Any]], shared_clock: bool = True
) -> tuple[float | None, float]:
    """(messages per second, window seconds): the OK replies to measured (not warm-up)
    messages read while every client of every process was on its schedule past warm-up,
    divided by the length of that window. Processes on other hosts share no clock: their own
    rates (each over its own window) are added up instead, and the window is the longest.

    Replies to warm-up messages are left out, so a backlog built during warm-up cannot make the
    rate look higher than offered; a server that falls behind answers fewer of the window's
    messages within it, and its rate reads lower."""
    starts = [d.get("measured_start_ns") for d in docs]
    ends = [d.get("measured_end_ns") for d in docs]
    if rtt is None or not docs or not all(starts) or not all(ends):
        return None, 0.0
    if not shared_clock:
        rates = [d.get("achieved_msgs_per_s") or 0.0 for d in docs]
        return sum(rates), max(e - s for s, e in zip(starts, ends, strict=True)) / 1e9
    lo, hi = max(starts), min(ends)
    if hi <= lo:
        return None, 0.0
    ok = rtt.filter(pc.and_(pc.equal(rtt["status"], "OK"), pc.invert(rtt["warmup"])))
    read_at = pc.add(ok["t_send_ns"], ok["rtt_ns"])
    inside = pc.and_(pc.greater_equal(read_at, lo), pc.less(read_at, hi))
    count = pc.sum(inside.cast(pa.int64())).as_py() or 0
    return count / ((hi - lo) / 1e9), (hi - lo) / 1e9


def lag_p99_us(rtt: pa.Table | None) -> float | None:
    """The p99 of every measured send's lag (exact, over all processes)."""
    if rtt is None or "lag_ns" not in rtt.column_names:
        return None
    lag = rtt.filter(pc.invert(rtt["warmup"]))["lag_ns"].to_numpy()
    return quantile(lag, 0.99) / 1e3 if lag.size else None


def _total(docs: list[dict[str, Any]], key: str) -> int:
    return sum(doc.get(key) or 0 for doc in docs)


def generator_behind(docs: list[dict[str, Any]]) -> str | None:
    """Why a paced point measured its own generator rather than the server, or None."""
    sends = _total(docs, "measured_sends")
    late = _total(docs, "late_generator")
    busiest = max((doc.get("busiest_thread_utilization") or 0.0 for doc in docs), default=0.0)
    why = []
    if sends and late > GENERATOR_LATE_SHARE * sends:
        why.append(f"{late} of {sends} sends were over 1 ms late by the generator's own delay "
                   f"(over {GENERATOR_LATE_SHARE:.0%})")  # fmt: skip
    if busiest > SATURATED_THREAD:
        why.append(f"a client thread was busy {busiest:.0%} of the time")
    if not why:
        return None
    return "the load generator could not keep to its schedule: " + "; ".join(why)


def offered_summary(
    config: PointConfig,
    rtt: pa.Table | None,
    docs: list[dict[str, Any]],
    items: list[histlog.Interval],
    shared_clock: bool = True,
) -> dict[str, Any]:
    """point.json's keys on offered load and latency (`shared_clock`: whether the client
    processes stamp on one host's CLOCK_MONOTONIC, msgprof.experiment.launch)."""
    rate, window_s = achieved(rtt, docs, shared_clock) if config.paced else (None, 0.0)
    return {
        "paced": config.paced,
        "rate_per_client": config.rate,
        "arrivals": config.arrivals if config.paced else None,
        "max_in_flight": config.max_in_flight,
        "duration_s": config.duration_s,
        "warmup_s": config.warmup_s,
        "offered_msgs_per_s": config.offered_msgs_per_s,
        "achieved_msgs_per_s": rate,
        "achieved_window_s": window_s,
        "latency": latency_quantiles(items),
        "lag_p99_us": lag_p99_us(rtt),
        "measured_sends": _total(docs, "measured_sends"),
        "warmup_messages": _total(docs, "warmup_messages"),
        "late_sends": _total(docs, "late_sends"),
        "late_window_full": _total(docs, "late_window_full"),
        "late_generator": _total(docs, "late_generator"),
    }
