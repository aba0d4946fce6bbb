"""Per-message latency as HdrHistogram interval logs, and quantiles of their merge.

Every load-generator process writes one log; the analysis merges the logs of all processes and
repetitions of a point into one histogram and reads quantiles off it. Quantiles are never
averaged: the mean of per-process p99s is not the p99 of the messages (a process with a stall
tail pulls it far off), while adding histograms is exact up to their bucket precision.

The file is the HdrHistogram interval log, format 1.3 (what the Java ``HistogramLogReader``
reads)::

    #[Histogram log format version 1.3]
    #<free comment lines>
    #[Unit: microseconds; interval timestamps are CLOCK_MONOTONIC seconds of the host]
    #[BaseTime: 1718000000.123 (seconds since epoch)]
    #[StartTime: 1718012345.123 (seconds since epoch), 2024-06-10T09:45:45.123+00:00]
    "StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"
    Tag=rtt,12345.000,1.000,52.031,HISTFAAAA...

One line per interval: an optional ``Tag=NAME,`` (the hdrh package's own log writer and reader
know no tags, which is why this module reads and writes the text itself and uses hdrh only for
the histogram and its base64 compressed encoding), the interval's start and length in seconds,
its largest value in milliseconds, and the histogram.

Units: histogram values are integer microseconds (nanosecond measurements rounded to the
nearest µs), trackable from `LOWEST_US` to `HIGHEST_US` with `SIGNIFICANT_DIGITS` digits, so a
value is resolved to 1 µs up to 2 ms and to within 10⁻³ of itself above. Interval timestamps are
the host's CLOCK_MONOTONIC seconds (``time.monotonic``, ``time.perf_counter_ns``), so the
intervals of several processes on one host line up; BaseTime is the wall clock minus the
monotonic clock when the file was written, so BaseTime + timestamp is the wall-clock time, as the
Java reader computes it.
"""

from __future__ import annotations

import datetime
import functools
import math
import os
import re
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hdrh.codec import HdrCookieException, HdrHistogramSettingsException, HdrLengthException
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_DIGITS = 3
INTERVAL_NS = 1_000_000_000

FORMAT_LINE = "#[Histogram log format version 1.3]"
UNIT_LINE = "#[Unit: microseconds; interval timestamps are CLOCK_MONOTONIC seconds of the host]"
LEGEND = '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"'

_TAG = re.compile(r"[A-Za-z0-9_.-]+")
#: What decoding a damaged base64 histogram raises (binascii.Error is a ValueError).
_CORRUPT = (
    ValueError,
    zlib.error,
    HdrCookieException,
    HdrLengthException,
    HdrHistogramSettingsException,
)


def new_histogram() -> HdrHistogram:
    """An empty histogram with this module's bounds: every log and merge uses the same layout,
    so adding two of them is a plain sum of counts."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


@functools.cache
def _layout() -> HdrHistogram:
    """A histogram kept only for its bucket arithmetic (never recorded into)."""
    return new_histogram()


def to_us(values_ns: np.ndarray | Sequence[float]) -> np.ndarray:
    """Nanoseconds as int64 microseconds, rounded to the nearest (halves up), not clamped.

    The rounding `record` applies; exact quantiles meant to be compared with a histogram's are
    taken over these values. Negative and NaN values raise ValueError: the callers mark a
    message without a reply with -1 and must filter those out, not count them as 0 µs.
    """
    values = np.asarray(values_ns)
    if values.size and not bool(np.all(values >= 0)):
        raise ValueError("latencies must be non-negative numbers (filter out -1 'no reply')")
    if np.issubdtype(values.dtype, np.integer):
        return (values.astype(np.int64) + 500) // 1000
    us = np.floor(values.astype(np.float64) / 1000.0 + 0.5)
    return np.minimum(us, float(2**62)).astype(np.int64)  # +inf: far above the range, clamped


def _lowest_equivalent(hist: HdrHistogram, values: np.ndarray) -> np.ndarray:
    """hdrh's ``get_lowest_equivalent_value`` for an int64 array (values in range, ≥ 1).

    The bucket of v has width 2^shift with shift = bit_length(v | sub_bucket_mask) -
    (sub_bucket_half_count_magnitude + 1), as hdrh computes it; frexp gives the bit length
    exactly because every value is below 2^53.
    """
    bits = np.frexp((values | hist.sub_bucket_mask).astype(np.float64))[1].astype(np.int64)
    shift = bits - (hist.sub_bucket_half_count_magnitude + 1)
    return (values >> shift) << shift


def record(hist: HdrHistogram, values_ns: np.ndarray) -> int:
    """Record nanosecond latencies into `hist` as microseconds; return how many were clamped at
    `HIGHEST_US` (values below `LOWEST_US` are raised to it silently: 0 µs is a rounding).

    Vectorised: values are first mapped to the lowest value of their histogram bucket (which
    changes no count, min or max the histogram reports) and grouped, so there is one
    ``record_value`` call per occupied bucket, at most ~23,000, never one per sample.
    """
    us = to_us(values_ns)
    if us.size == 0:
        return 0
    clamped = int(np.count_nonzero(us > HIGHEST_US))
    us = np.clip(us, LOWEST_US, HIGHEST_US)
    distinct, counts = np.unique(_lowest_equivalent(hist, us), return_counts=True)
    for value, count in zip(distinct.tolist(), counts.tolist(), strict=True):
        if not hist.record_value(value, count):
            raise ValueError(f"{value} µs does not fit the histogram's range")
    return clamped


@dataclass
class Interval:
    """One histogram of a log: the values measured in [start_s, start_s + length_s).

    `start_s` is in CLOCK_MONOTONIC seconds of the host, so intervals of different processes on
    one host line up. `tag` names the series ("" for a line without a tag).
    """

    tag: str
    start_s: float
    length_s: float
    hist: HdrHistogram


def intervals(
    t_ns: np.ndarray, values_ns: np.ndarray, tag: str, interval_ns: int = INTERVAL_NS
) -> list[Interval]:
    """Split samples into histograms of `interval_ns`, by the CLOCK_MONOTONIC time `t_ns` at
    which each value was measured (the reply time); one per non-empty bin, in time order.

    Sorts once (skipped when `t_ns` already is) and cuts at bin boundaries, so 10⁶ samples take
    a fraction of a second.
    """
    t = np.asarray(t_ns, dtype=np.int64)
    values = np.asarray(values_ns)
    if t.shape != values.shape or t.ndim != 1:
        raise ValueError(f"t_ns and values_ns differ in shape: {t.shape} != {values.shape}")
    if interval_ns <= 0:
        raise ValueError(f"interval_ns must be positive, not {interval_ns}")
    _check_tag(tag, allow_empty=True)
    to_us(values)  # reject negative values before any work
    if t.size and not bool(np.all(t[1:] >= t[:-1])):
        order = np.argsort(t, kind="stable")
        t, values = t[order], values[order]
    bins = t // interval_ns
    cuts = np.flatnonzero(bins[1:] != bins[:-1]) + 1
    starts = np.concatenate(([0], cuts)) if t.size else np.array([], dtype=np.int64)
    ends = np.concatenate((cuts, [t.size])) if t.size else np.array([], dtype=np.int64)
    out = []
    for begin, end in zip(starts.tolist(), ends.tolist(), strict=True):
        hist = new_histogram()
        record(hist, values[begin:end])
        out.append(Interval(tag, int(bins[begin]) * interval_ns / 1e9, interval_ns / 1e9, hist))
    return out


def _check_tag(tag: str, *, allow_empty: bool) -> None:
    if tag == "" and allow_empty:
        return
    if not _TAG.fullmatch(tag):
        raise ValueError(f"tag {tag!r} must match [A-Za-z0-9_.-]+")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_log(path: Path | str, items: list[Interval], comment_lines: Sequence[str] = ()) -> Path:
    """Write `items` as an interval log at `path`, atomically (a temporary file beside it,
    fsynced, then renamed over), so a reader never sees half a log.

    Lines are sorted by (start, tag). A tag must match ``[A-Za-z0-9_.-]+``; the empty tag
    writes an untagged line. Each comment line is written after a ``#`` and may not hold a
    newline.
    """
    path = Path(path)
    for item in items:
        _check_tag(item.tag, allow_empty=True)
    for comment in comment_lines:
        if "\n" in comment or "\r" in comment:
            raise ValueError(f"comment line holds a line break: {comment!r}")
    ordered = sorted(items, key=lambda item: (item.start_s, item.tag))
    base = time.time() - time.monotonic()
    start = base + (ordered[0].start_s if ordered else 0.0)
    iso = datetime.datetime.fromtimestamp(start, tz=datetime.UTC).isoformat(timespec="milliseconds")
    lines = [FORMAT_LINE, *(f"#{comment}" for comment in comment_lines), UNIT_LINE]
    lines.append(f"#[BaseTime: {base:.3f} (seconds since epoch)]")
    lines.append(f"#[StartTime: {start:.3f} (seconds since epoch), {iso}]")
    lines.append(LEGEND)
    for item in ordered:
        prefix = f"Tag={item.tag}," if item.tag else ""
        encoded = item.hist.encode().decode("ascii")
        max_ms = item.hist.get_max_value() / 1000.0
        lines.append(f"{prefix}{item.start_s:.3f},{item.length_s:.3f},{max_ms:.3f},{encoded}")
    text = "\n".join(lines) + "\n"

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would give, not mkstemp's 0600
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_log(path: Path | str) -> list[Interval]:
    """The intervals of a log, in file order; ValueError naming the file and line for a line
    that is not a comment, the legend or a well-formed interval."""
    return list(iter_log(path))


def iter_log(path: Path | str) -> Iterator[Interval]:
    """`read_log` one interval at a time: a long point's log (two decoded histograms of ~190 KB
    a second) is summed without holding it whole."""
    path = Path(path)
    with open(path, encoding="ascii", errors="replace") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith(("#", '"StartTimestamp"')):
                continue
            try:
                item = _parse_line(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: malformed interval line: {exc}") from None
            yield item


def _parse_line(line: str) -> Interval:
    tag = ""
    if line.startswith("Tag="):
        tag, sep, line = line[len("Tag=") :].partition(",")
        if not sep:
            raise ValueError("a tag but no fields")
        _check_tag(tag, allow_empty=False)
    fields = line.split(",")
    if len(fields) != 4:
        raise ValueError(f"{len(fields)} fields instead of 4 (start, length, max, histogram)")
    start_s, length_s, _max_ms = (float(field) for field in fields[:3])
    if not (math.isfinite(start_s) and math.isfinite(length_s) and length_s >= 0):
        raise ValueError(f"start {fields[0]!r} or length {fields[1]!r} is not a time")
    try:
        hist = HdrHistogram.decode(fields[3].encode("ascii"))
    except _CORRUPT as exc:
        raise ValueError(f"histogram does not decode ({type(exc).__name__}: {exc})") from None
    return Interval(tag, start_s, length_s, hist)


def merge(
    items: Iterable[Interval], tag: str, start_s: float | None = None, end_s: float | None = None
) -> HdrHistogram:
    """A new histogram summing every interval of `tag` whose start lies in [start_s, end_s)
    (None: unbounded) — the one way to combine processes and repetitions."""
    total = new_histogram()
    for item in items:
        if item.tag != tag:
            continue
        if (start_s is not None and item.start_s < start_s) or (
            end_s is not None and item.start_s >= end_s
        ):
            continue
        total.add(item.hist)
    return total


def quantiles_us(hist: HdrHistogram, qs: Sequence[float]) -> list[float]:
    """Quantiles `qs` (each in [0, 1]) of `hist` in µs; NaN for each when it is empty.

    The rank follows msgprof.stats (``inverted_cdf``): the quantile q of n values is the
    smallest with at least q·n values at or below it, i.e. the ceil(q·n)-th (at least the 1st),
    with q·n computed in floating point exactly as numpy does. hdrh's
    ``get_value_at_percentile`` picks another rank, round-half-up(q·n) instead of ceil(q·n)
    (with n = 10: q = 0.54 gives the 5th value, inverted_cdf the 6th), so the rank is computed
    here from the counts. The value returned is the highest value equivalent to the bucket
    holding that rank's sample (hdrh's convention), so it is at or above the exact quantile of
    the µs-rounded samples by less than the bucket width (`precision_us`). q = 0 gives the
    lowest value of the smallest sample's bucket (``get_min_value``), q = 1 the highest of the
    largest's (``get_max_value``).
    """
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q!r} is not in [0, 1]")
    if hist.get_total_count() == 0:
        return [math.nan] * len(qs)
    cumulative = np.cumsum(np.ctypeslib.as_array(hist.counts), dtype=np.int64)
    n = int(cumulative[-1])
    out = []
    for q in qs:
        if q == 1.0:
            out.append(float(hist.get_max_value()))
        elif q == 0.0:
            out.append(float(hist.get_min_value()))
        else:
            rank = max(math.ceil(np.float64(n) * np.float64(q)), 1)
            index = int(np.searchsorted(cumulative, min(rank, n), side="left"))
            value = hist.get_value_from_index(index)
            out.append(float(hist.get_highest_equivalent_value(value)))
    return out


def precision_us(value_us: float) -> float:
    """The largest difference allowed between an exact quantile (µs) and a histogram's near
    `value_us`: the width of the bucket holding it, plus 1 µs for rounding ns to µs."""
    if math.isnan(value_us):
        return math.nan
    layout = _layout()
    value = min(max(round(value_us), LOWEST_US), HIGHEST_US)
    low = layout.get_lowest_equivalent_value(value)
    high = layout.get_highest_equivalent_value(value)
    return float(high - low + 1) + 1.0
