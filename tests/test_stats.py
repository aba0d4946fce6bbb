"""msgprof.stats: the one quantile rule (numpy's inverted_cdf: always a measured value), the same
per group as over the whole, and the peaks of a server resources table."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from msgprof import stats

QS = (0.0, 0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_quantiles_follow_numpy_inverted_cdf_and_are_samples(n: int) -> None:
    rng = np.random.default_rng(n)
    samples = rng.integers(1, 10**9, size=n)
    got = stats.quantiles(samples, QS)
    assert got == [float(v) for v in np.quantile(samples, QS, method="inverted_cdf")]
    assert set(got) <= set(samples.astype(float))
    assert got[-1] == samples.max() and got[0] == samples.min()


def test_quantile_is_the_smallest_sample_with_enough_at_or_below() -> None:
    samples = [10, 20, 30, 40]
    assert stats.quantile(samples, 0.5) == 20  # linear interpolation would say 25
    assert stats.quantile(samples, 0.51) == 30
    assert stats.quantile(samples, 0.25) == 10
    assert stats.METHOD == "inverted_cdf"


def test_quantiles_leave_the_samples_alone_unless_told() -> None:
    samples = np.array([5, 3, 9, 1, 7])
    stats.quantiles(samples, (0.5,))
    assert list(samples) == [5, 3, 9, 1, 7]
    assert stats.quantiles(samples.copy(), (0.5, 1.0), overwrite=True) == [5.0, 9.0]


def test_empty_input_gives_nan_for_every_quantile() -> None:
    assert all(math.isnan(v) for v in stats.quantiles([], QS))
    assert len(stats.quantiles(np.empty(0, dtype=np.int64), QS)) == len(QS)
    assert math.isnan(stats.quantile([], 0.5))


def test_grouped_quantiles_equal_the_quantiles_of_each_group() -> None:
    rng = np.random.default_rng(7)
    n_groups = 6
    groups = rng.integers(0, n_groups - 1, size=500)  # the last group stays empty
    values = rng.integers(1, 10**6, size=500)
    qs = (0.5, 0.9, 0.99, 1.0)
    per_q = stats.grouped_quantiles(groups, values, n_groups, qs, missing=-1)
    for g in range(n_groups):
        mine = values[groups == g]
        row = [int(per_q[k][g]) for k in range(len(qs))]
        if mine.size:
            assert row == [int(v) for v in stats.quantiles(mine, qs)]
        else:
            assert row == [-1] * len(qs)


def test_one_group_equals_the_whole() -> None:
    values = np.random.default_rng(3).integers(0, 10**6, size=777)
    whole = stats.quantiles(values, QS)
    grouped = stats.grouped_quantiles(np.zeros(777, dtype=np.int64), values, 1, QS)
    assert [float(q[0]) for q in grouped] == whole


def test_grouped_quantiles_of_no_samples_are_all_missing() -> None:
    empty = np.empty(0, dtype=np.int64)
    out = stats.grouped_quantiles(empty, empty, 3, (0.5,), missing=-7)
    assert out[0].tolist() == [-7, -7, -7]


def _resources(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows)


def test_resource_summary_takes_cpu_deltas_and_peaks() -> None:
    sample = {
        "t_s": 0.0,
        "cpu_user_s": 1.0,
        "cpu_system_s": 0.5,
        "cpu_percent": 0.0,
        "rss_bytes": 100,
        "open_fds": 10,
        "threads": 3,
        "queue_bytes": 0,
        "queue_files": 0,
    }
    later = sample | {"t_s": 0.25, "cpu_user_s": 3.0, "cpu_system_s": 1.5, "rss_bytes": 300,
                      "open_fds": 40, "threads": 4, "queue_bytes": 4096, "queue_files": 2}  # fmt: skip
    last = later | {"t_s": 0.5, "cpu_user_s": 3.5, "rss_bytes": 0, "open_fds": 5}  # exiting
    summary = stats.resource_summary(_resources([sample, later, last]))
    assert summary == {
        "samples": 3,
        "cpu_user_s": 2.5,
        "cpu_system_s": 1.0,
        "peak_rss_bytes": 300,
        "peak_open_fds": 40,
        "peak_threads": 4,
        "peak_queue_bytes": 4096,
        "peak_queue_files": 2,
        "rss_per_connection_bytes": None,  # too few descriptors opened for a slope
    }


def test_resource_summary_of_nothing_counts_no_samples() -> None:
    assert stats.resource_summary(None) == {"samples": 0}
    assert stats.resource_summary(_resources([])) == {"samples": 0}


def test_server_service_quantiles_use_the_same_rule() -> None:
    from array import array

    from msgprof.server.server import _quantiles

    samples = array("q", [40, 10, 30, 20])
    assert _quantiles(samples) == {
        "count": 4,
        "p50": 20,
        "p90": 40,
        "p99": 40,
        "p999": 40,
        "max": 40,
    }
    assert _quantiles(array("q")) == {"count": 0}
