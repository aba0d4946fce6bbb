"""Interval logs of latency histograms: the file round trip, the binning, and quantiles of merged
histograms against exact quantiles of the raw samples (the reason the analysis merges histograms
instead of averaging per-process percentiles)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from msgprof import histlog, stats
from msgprof.histlog import Interval

QS = (0.5, 0.9, 0.99, 0.999, 1.0)
BASE_NS = 86_400 * 1_000_000_000  # a monotonic clock a day after boot


def _process(rng: np.random.Generator, kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(reply time, latency) in ns of one load-generator process over ~5 s."""
    t = BASE_NS + np.sort(rng.integers(0, 5_000_000_000, n))
    if kind == "lognormal":
        lat = rng.lognormal(np.log(300_000), 0.6, n)
    elif kind == "bimodal":  # a fast body and 2 % of messages stuck behind a 50 ms stall
        lat = rng.lognormal(np.log(200_000), 0.3, n)
        stalled = rng.random(n) < 0.02
        lat[stalled] = 50_000_000 + rng.exponential(2_000_000, int(stalled.sum()))
    else:
        lat = np.full(n, 750_400.0)
    return t, lat


def _equal(a: Interval, b: Interval) -> bool:
    return (
        a.tag == b.tag
        and a.start_s == b.start_s
        and a.length_s == b.length_s
        and a.hist.get_total_count() == b.hist.get_total_count()
        and a.hist.equals(b.hist)
    )


def test_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(1)
    items = []
    for tag, kind in (("rtt", "lognormal"), ("server.q-1", "bimodal")):
        t, lat = _process(rng, kind, 5_000)
        items += histlog.intervals(t, lat, tag)
    items.append(Interval("", 7.5, 0.25, histlog.new_histogram()))  # untagged, empty
    path = histlog.write_log(tmp_path / "c0.hlog", items, ["point 3, repetition 1", "rate=5000"])

    back = histlog.read_log(path)
    expected = sorted(items, key=lambda i: (i.start_s, i.tag))
    assert len(back) == len(expected)
    assert all(_equal(a, b) for a, b in zip(back, expected, strict=True))

    lines = path.read_text().splitlines()
    assert lines[0] == "#[Histogram log format version 1.3]"
    assert lines[1:3] == ["#point 3, repetition 1", "#rate=5000"]
    base = float(lines[4].split()[1])
    assert abs(base - (time.time() - time.monotonic())) < 5
    assert float(lines[5].split()[1]) == pytest.approx(base + expected[0].start_s, abs=2e-3)
    assert lines[6] == histlog.LEGEND
    assert lines[7].startswith("7.500,0.250,0.000,")
    assert lines[8].startswith(f"Tag=rtt,{BASE_NS / 1e9:.3f},1.000,")
    assert not list(tmp_path.glob(".*.tmp"))


def test_merged_quantiles_match_exact_and_averaged_p99s_do_not() -> None:
    rng = np.random.default_rng(7)
    items, raw, per_process_p99 = [], [], {}
    for kind, n in (("lognormal", 40_000), ("bimodal", 40_000), ("constant", 20_000)):
        t, lat = _process(rng, kind, n)
        items += histlog.intervals(t, lat, "rtt")
        raw.append(histlog.to_us(lat))
        per_process_p99[kind] = stats.quantile(histlog.to_us(lat), 0.99)
    items.append(histlog.intervals(np.array([BASE_NS]), np.array([9e9]), "other")[0])

    merged = histlog.merge(items, "rtt")
    assert merged.get_total_count() == 100_000
    exact = stats.quantiles(np.concatenate(raw), QS)
    for q, got, want in zip(QS, histlog.quantiles_us(merged, QS), exact, strict=True):
        assert 0 <= got - want <= histlog.precision_us(want), (q, got, want)

    # The bimodal process's p99 sits in its stall; merged, the stalls are 0.8 % of the messages.
    averaged = float(np.mean(list(per_process_p99.values())))
    assert abs(averaged - exact[2]) > 10 * histlog.precision_us(exact[2])


def test_merge_selects_by_tag_and_start() -> None:
    t = BASE_NS + np.arange(10) * 1_000_000_000
    items = histlog.intervals(t, np.full(10, 1e6), "a") + histlog.intervals(
        t, np.full(10, 2e6), "b"
    )
    start = BASE_NS / 1e9
    assert histlog.merge(items, "a").get_total_count() == 10
    assert histlog.merge(items, "a", start + 2, start + 5).get_total_count() == 3
    assert histlog.merge(items, "b", start_s=start + 8).get_max_value() == 2000
    assert histlog.merge(items, "c").get_total_count() == 0
    assert all(math.isnan(v) for v in histlog.quantiles_us(histlog.merge(items, "c"), QS))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 99, 1000, 1001, 4567])
def test_quantile_rank_is_inverted_cdf(n: int) -> None:
    """Values below 2048 µs have buckets of one value, so the ranks must agree exactly."""
    values = np.random.default_rng(n).integers(1, 2048, n)
    hist = histlog.new_histogram()
    histlog.record(hist, values * 1000)
    qs = [0.0, 0.001, 0.1, 0.25, 0.3, 0.5, 0.54, 0.7, 0.9, 0.91, 0.95, 0.99, 0.999, 0.9999, 1.0]
    assert histlog.quantiles_us(hist, qs) == stats.quantiles(values, qs)


def test_hdrh_own_percentile_rank_differs() -> None:
    """Why quantiles_us computes the rank itself: hdrh rounds q·n to the nearest, not up."""
    hist = histlog.new_histogram()
    histlog.record(hist, np.arange(1, 11) * 1000)
    assert hist.get_value_at_percentile(54.0) == 5
    assert histlog.quantiles_us(hist, [0.54]) == [6.0] == stats.quantiles(np.arange(1, 11), [0.54])


def test_intervals_bin_by_reply_time() -> None:
    s = 1_000_000_000
    t = BASE_NS + np.array([3 * s + 500, 0, s - 1, s, 5 * s + 7, int(0.1 * s)])
    lat = np.array([4000, 1000, 2000, 3000, 6000, 1000])
    items = histlog.intervals(t, lat, "rtt")
    start = BASE_NS // s
    assert [i.start_s for i in items] == [start, start + 1, start + 3, start + 5]
    assert all(i.length_s == 1.0 and i.tag == "rtt" for i in items)
    assert [i.hist.get_total_count() for i in items] == [3, 1, 1, 1]
    assert [i.hist.get_max_value() for i in items] == [2, 3, 4, 6]
    assert histlog.intervals(np.array([], dtype=np.int64), np.array([]), "rtt") == []
    with pytest.raises(ValueError, match="shape"):
        histlog.intervals(t, lat[:-1], "rtt")


def test_intervals_of_a_million_samples() -> None:
    rng = np.random.default_rng(3)
    n = 1_000_000
    t = BASE_NS + rng.integers(0, 60 * 1_000_000_000, n)  # unsorted: 60 one-second bins
    lat = rng.lognormal(np.log(400_000), 1.0, n)
    items = histlog.intervals(t, lat, "rtt")  # vectorised: well under a second (no timing here)
    assert len(items) == 60
    assert histlog.merge(items, "rtt").get_total_count() == n


def test_record_clamps_and_refuses_negative() -> None:
    hist = histlog.new_histogram()
    top_ns = histlog.HIGHEST_US * 1000
    assert histlog.record(hist, np.array([0, 400, 1499, top_ns, top_ns + 500, 10**16])) == 2
    assert hist.get_total_count() == 6
    assert hist.get_min_value() == 1
    assert hist.get_count_at_value(1) == 3  # 0 and 400 ns clamped up, 1499 ns rounds to 1 µs
    assert histlog.record(hist, np.array([np.inf])) == 1
    for bad in (np.array([5, -1]), np.array([np.nan]), np.array([-0.5])):
        with pytest.raises(ValueError, match="non-negative"):
            histlog.record(hist, bad)
    assert hist.get_total_count() == 7


def test_record_equals_one_value_at_a_time() -> None:
    """Grouping values by bucket before recording changes nothing hdrh reports."""
    values_ns = np.random.default_rng(5).lognormal(np.log(1e6), 3.0, 20_000)
    grouped, single = histlog.new_histogram(), histlog.new_histogram()
    histlog.record(grouped, values_ns)
    for v in np.clip(histlog.to_us(values_ns), histlog.LOWEST_US, histlog.HIGHEST_US).tolist():
        single.record_value(v)
    assert grouped.equals(single)
    assert grouped.get_min_value() == single.get_min_value()
    assert grouped.get_max_value() == single.get_max_value()
    assert grouped.encode() == single.encode()


def test_precision() -> None:
    assert histlog.precision_us(1000) == 2  # one-µs buckets up to 2048 µs
    assert histlog.precision_us(10_000) == 9  # 8-µs buckets in [8192, 16384)
    assert histlog.precision_us(50_000_000) <= 50_000_000 * 1e-3 + 1
    assert math.isnan(histlog.precision_us(math.nan))


def test_malformed_line_names_it(tmp_path) -> None:
    t = BASE_NS + np.arange(3) * 1_000_000_000
    path = histlog.write_log(tmp_path / "a.hlog", histlog.intervals(t, np.full(3, 1e6), "rtt"))
    good = path.read_text()
    n_lines = len(good.splitlines())
    truncated = good.splitlines()[-1][:-12]  # a histogram cut short
    for bad in ("Tag=rtt,1.000,1.000,1.000", "Tag=rtt,x,1.000,1.000,HISTF", "1,1,1,!!!", truncated):
        path.write_text(good + bad + "\n")
        with pytest.raises(ValueError, match=rf"a\.hlog:{n_lines + 1}: malformed"):
            histlog.read_log(path)


def test_bad_tag_refused_at_write(tmp_path) -> None:
    hist = histlog.new_histogram()
    for tag in ("a b", "x,y", "ü"):
        with pytest.raises(ValueError, match="tag"):
            histlog.write_log(tmp_path / "t.hlog", [Interval(tag, 1.0, 1.0, hist)])
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="tag"):
        histlog.intervals(np.array([1]), np.array([1]), "a=b")


def test_quantiles_refuse_q_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="not in"):
        histlog.quantiles_us(histlog.new_histogram(), [99.0])
