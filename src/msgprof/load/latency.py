"""Latency from the intended send, and what a client process says of its schedule.

Every message has an intended send time: the scheduled one in a paced run (msgprof.load.pacing),
the actual send in a closed loop (which has no schedule: there the corrected latency equals the
RTT and the lag is 0). From it come the per-message columns of rtt.parquet (``intended_ns``,
``latency_ns``, ``lag_ns``, ``warmup``), the HdrHistogram interval log of the process
(``latency.hlog``, tags ``corrected`` and ``uncorrected``) and client.json's schedule keys.

Warm-up: a message whose intended send falls in the first ``warmup_s`` seconds of its client's
load (from the client's first intended send) is flagged and left out of the log and every
summary. A send is late when it left more than LATE_NS after its intended time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from msgprof import histlog
from msgprof.config import ClientConfig
from msgprof.load.statuses import DUPLICATE, OK
from msgprof.stats import quantile

#: A send later than this after its intended time counts as late (1 ms, as in the report).
LATE_NS = 1_000_000


class Schedule(NamedTuple):
    """Per message (in the loop's row order): the intended send and what follows from it."""

    intended: np.ndarray  # i64 ns
    latency: np.ndarray  # i64 ns, reply read − intended send; -1 without a reply
    lag: np.ndarray  # i64 ns, actual − intended send
    warmup: np.ndarray  # bool
    window_wait: np.ndarray  # i64 ns: the part of the lag spent waiting for room in the window


def schedule(
    index: np.ndarray,
    t_send: np.ndarray,
    rtt: np.ndarray,
    intended: np.ndarray | None,
    window_wait: np.ndarray | None,
    n_clients: int,
    warmup_s: float,
) -> Schedule:
    """The schedule columns of every message; `intended` None: a closed loop (actual sends)."""
    closed = intended is None
    intended = t_send if intended is None else intended
    replied = rtt >= 0
    latency = np.where(replied, t_send + rtt - intended, -1)
    lag = np.zeros(len(t_send), dtype=np.int64) if closed else t_send - intended
    first = np.full(n_clients, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, index, intended)
    warmup = intended < first[index] + int(warmup_s * 1e9)
    if window_wait is None:
        window_wait = np.zeros(len(t_send), dtype=np.int64)
    return Schedule(intended, latency, lag, warmup, window_wait)


def measured_window(index: np.ndarray, sched: Schedule, n_clients: int) -> tuple[int, int] | None:
    """(start, end) ns in which every client of the process was on its schedule, warm-up over:
    from the last client's first measured intended send to the first client's last one. None
    when there is no such span (no messages, or a warm-up as long as the load)."""
    kept = ~sched.warmup
    if not kept.any():
        return None
    big = np.iinfo(np.int64).max
    first = np.full(n_clients, big, dtype=np.int64)
    last = np.full(n_clients, -1, dtype=np.int64)
    np.minimum.at(first, index[kept], sched.intended[kept])
    np.maximum.at(last, index[kept], sched.intended[kept])
    has = last >= 0
    start, end = int(first[has].max()), int(last[has].min())
    return (start, end) if end > start else None


def schedule_summary(
    config: ClientConfig,
    code: np.ndarray,
    index: np.ndarray,
    t_send: np.ndarray,
    rtt: np.ndarray,
    sched: Schedule,
    n_clients: int,
) -> dict[str, Any]:
    """client.json's keys on the schedule: what was offered, how late the sends were and why,
    and the span the point's achieved rate is counted over."""
    kept = ~sched.warmup
    late = kept & (sched.lag > LATE_NS)
    # Late by the generator: its own part of the lag (not spent behind a full window) is late.
    own = (sched.lag - sched.window_wait) > LATE_NS
    window = measured_window(index, sched, n_clients)
    lag_kept = sched.lag[kept]
    achieved = None
    if window is not None:  # this process's own rate, for points whose processes share no clock
        read_at = t_send + rtt
        inside = kept & (code == OK) & (read_at >= window[0]) & (read_at < window[1])
        achieved = int(inside.sum()) / ((window[1] - window[0]) / 1e9)
    return {
        "paced": config.rate is not None,
        "rate_per_client": config.rate,
        "arrivals": config.arrivals if config.rate is not None else None,
        "max_in_flight": config.max_in_flight,
        "duration_s": config.duration_s,
        "warmup_s": config.warmup_s,
        "offered_msgs_per_s": None if config.rate is None else config.rate * n_clients,
        "warmup_messages": int(sched.warmup.sum()),
        "measured_sends": int(kept.sum()),
        "measured_acked": int((kept & (code == OK)).sum()),
        "late_sends": int(late.sum()),
        "late_window_full": int((late & ~own).sum()),
        "late_generator": int((late & own).sum()),
        "lag_p99_ns": int(quantile(lag_kept, 0.99)) if lag_kept.size else None,
        "lag_max_ns": int(lag_kept.max()) if lag_kept.size else None,
        "measured_start_ns": window[0] if window else None,
        "measured_end_ns": window[1] if window else None,
        "achieved_msgs_per_s": achieved,
    }


def write_histograms(path: Path, code: np.ndarray, t_send: np.ndarray, rtt: np.ndarray,
                     sched: Schedule, comment: str) -> int:  # fmt: skip
    """Write the process's interval log: the corrected latency and the RTT of every stored
    (OK or DUPLICATE) message out of warm-up, in 1 s intervals of the time its reply was read.
    Returns how many values were above the histogram's range (clamped)."""
    kept = (code <= DUPLICATE) & ~sched.warmup & (rtt >= 0)
    replied_at = (t_send + rtt)[kept]
    items = histlog.intervals(replied_at, sched.latency[kept], "corrected")
    items += histlog.intervals(replied_at, rtt[kept], "uncorrected")
    histlog.write_log(path, items, [comment])
    return int((sched.latency[kept] > histlog.HIGHEST_US * 1000).sum())
