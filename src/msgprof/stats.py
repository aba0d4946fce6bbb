"""Shared summary statistics: the one quantile rule every summary uses (client, server,
analysis, fuzzer) and the peaks of a server resources table.

A quantile q of n samples is the smallest sample with at least q·n samples at or below it
(numpy's ``inverted_cdf``, Hyndman & Fan type 1). It is always a value that was measured, never
an interpolation between two, and it is the rule an HdrHistogram applies to its counts, so exact
quantiles of raw samples and quantiles of merged histograms read alike. docs/results.md names it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # only the type: the server imports this module and needs no pyarrow
    import pyarrow as pa

#: numpy's name for the rule above.
METHOD = "inverted_cdf"


def quantiles(
    samples: Sequence[float] | np.ndarray, qs: Sequence[float], *, overwrite: bool = False
) -> list[float]:
    """Exact quantiles `qs` (each in [0, 1]) of `samples`; NaN for each when there are none.

    Each result equals one of the samples (returned as float; callers that want integers
    convert). The samples are not modified unless `overwrite` is true, which lets numpy reorder
    an array in place instead of copying it (worth it for 10⁸ round trips).
    """
    values = np.asarray(samples)
    if values.size == 0:
        return [math.nan] * len(qs)
    found = np.quantile(values, list(qs), method=METHOD, overwrite_input=overwrite)
    return [float(v) for v in found]


def quantile(samples: Sequence[float] | np.ndarray, q: float) -> float:
    """One exact quantile of `samples` (see `quantiles`); NaN when there are none."""
    return quantiles(samples, (q,))[0]


def grouped_quantiles(
    groups: np.ndarray, values: np.ndarray, n_groups: int, qs: Sequence[float], missing: int = -1
) -> list[np.ndarray]:
    """The same rule per group, vectorised: for each q an int64 array of `n_groups` quantiles.

    `groups` holds each sample's group index (0 ≤ index < n_groups); a group without samples
    gets `missing`. Used for per-client columns, where a loop over clients would be slow.
    """
    order = np.lexsort((values, groups))
    groups, values = groups[order], values[order]
    counts = np.bincount(groups, minlength=n_groups)
    starts = np.cumsum(counts) - counts
    has = counts > 0
    out = []
    for q in qs:
        result = np.full(n_groups, missing, dtype=np.int64)
        rank = np.maximum(np.ceil(counts[has] * q).astype(np.int64) - 1, 0)
        result[has] = values[starts[has] + rank]
        out.append(result)
    return out


def resource_summary(table: pa.Table | None) -> dict[str, Any]:
    """Peaks and totals of a server resources table (point.json records these; analysis falls
    back to them when a point.json lacks them)."""
    if table is None or table.num_rows == 0:
        return {"samples": 0}
    column = {name: table.column(name).to_pylist() for name in table.column_names}
    return {
        "samples": table.num_rows,
        "cpu_user_s": column["cpu_user_s"][-1] - column["cpu_user_s"][0],
        "cpu_system_s": column["cpu_system_s"][-1] - column["cpu_system_s"][0],
        "peak_rss_bytes": max(column["rss_bytes"]),
        "peak_open_fds": max(column["open_fds"]),
        "peak_threads": max(column["threads"]),
        "peak_queue_bytes": max(column["queue_bytes"]),
        "peak_queue_files": max(column["queue_files"]),
        "rss_per_connection_bytes": rss_per_descriptor(column["open_fds"], column["rss_bytes"]),
    }


#: Fewer descriptors opened than this while connecting leave the slope to noise: no slope.
MIN_SLOPE_FDS = 100


def rss_per_descriptor(open_fds: list[int], rss_bytes: list[int]) -> float | None:
    """The server's memory per connection: the least-squares slope of RSS on open descriptors
    over the samples up to the first at the peak count (while connections arrive; messages
    after that grow RSS at a constant count). A connection is one descriptor; queue files
    (at most max_open_files) are the others. None when the count grew by < MIN_SLOPE_FDS."""
    if not open_fds:
        return None
    end = open_fds.index(max(open_fds)) + 1
    fds, rss = np.asarray(open_fds[:end], float), np.asarray(rss_bytes[:end], float)
    if end < 3 or fds.max() - fds.min() < MIN_SLOPE_FDS:
        return None
    return float(np.polyfit(fds, rss, 1)[0])
