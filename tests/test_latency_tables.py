"""latency.csv and the latency columns of points.csv, from a real run of two paced repetitions:
quantiles of merged HdrHistograms agree with the exact quantiles of the raw samples, and a
configuration's percentiles are those of its repetitions' messages pooled, never averaged."""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from msgprof import histlog
from msgprof.report import analysis, latency
from msgprof.stats import quantiles

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "points.csv"
#: points.csv's columns before paced points existed (results/reference at 096b2ff): a closed
#: loop keeps them, in this order, with their meaning.
CLOSED_LOOP_COLUMNS = (
    "run,point,phase,step,clients,messages,rep,payload_bytes,ack_after,curve,verdict,verdicts,"
    "connected,planned,acked,lost,duplicates_stored,throughput_msgs_per_s,throughput_window,"
    "rtt_p50_us,rtt_p90_us,rtt_p99_us,rtt_p999_us,rtt_max_us,rtt_mean_us,connect_p50_ms,"
    "connect_p99_ms,connect_max_ms,first_ack_p50_ms,errors,client_busiest_thread_max,"
    "client_saturated,server_cpu_s,server_peak_rss_mb,server_peak_fds,server_peak_queue_mb,"
    "server_service_p50_us,server_service_p99_us,refused,somaxconn,rlimit_nofile"
).split(",")
REPS = ("4-60-r200-1", "4-60-r200-2")
QS = list(latency.QUANTILES.values())


def build_run(run: Path) -> Path:
    """Two repetitions of 4 clients × 60 messages at 200 messages/s each, with the real msgprof."""
    done = run / ".complete"
    if done.exists():
        return run
    msgprof = [sys.executable, "-m", "msgprof", "-q", "point", "--clients", "4"]
    pace = ["--messages", "60", "--rate", "200", "--processes", "1"]
    jobs = [
        subprocess.Popen(msgprof + pace + ["--out", str(run / "points" / name)]) for name in REPS
    ]
    for job in jobs:
        assert job.wait(timeout=120) == 0
    done.touch()
    return run


@pytest.fixture(scope="session")
def paced_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.getbasetemp() / "paced_run")


@pytest.fixture
def run(paced_run: Path, tmp_path: Path) -> Path:
    """A copy of the paced run with its tables written."""
    copy = tmp_path / "paced"
    shutil.copytree(paced_run, copy)
    analysis.write_tables(copy)
    return copy


def measured_us(point_dirs: list[Path], column: str) -> np.ndarray:
    """`column` (latency_ns or rtt_ns) of the messages latency.hlog records, pooled, in µs: OK
    and DUPLICATE replies out of warm-up."""
    parts = []
    for path in point_dirs:
        rtt = pq.read_table(path / "rtt.parquet").to_pandas()
        kept = rtt["status"].isin(["OK", "DUPLICATE"]) & ~rtt["warmup"] & (rtt["rtt_ns"] >= 0)
        parts.append(rtt.loc[kept, column].to_numpy())
    return histlog.to_us(np.concatenate(parts))


def assert_within_precision(from_histogram: list[float], exact: list[float]) -> None:
    """Each histogram quantile lies at or above the exact one by less than its bucket width."""
    for hist_value, value in zip(from_histogram, exact, strict=True):
        assert value <= hist_value <= value + histlog.precision_us(value), (hist_value, value)


def test_paced_points_are_sweep_rows_with_their_pace(run: Path) -> None:
    points = pd.read_csv(run / "points.csv")
    assert list(points["point"]) == list(REPS)
    assert set(points["phase"]) == {"sweep"} and list(points["rep"]) == [1, 2]
    assert list(points["messages"]) == [60, 60] and points["duration_s"].isna().all()
    assert list(points["rate_per_client"]) == [200.0, 200.0]
    assert list(points["offered_msgs_per_s"]) == [800.0, 800.0]
    for p in points.itertuples():
        doc = json.loads((run / "points" / p.point / "point.json").read_text())
        assert p.achieved_msgs_per_s == pytest.approx(doc["achieved_msgs_per_s"], abs=1e-3)
        assert p.measured_sends == doc["measured_sends"] == 240
        assert p.late_generator == doc["late_generator"]
        assert p.lag_p99_us == pytest.approx(doc["lag_p99_us"], abs=1e-3)


def test_point_quantiles_agree_with_the_exact_ones_of_rtt_parquet(run: Path) -> None:
    points = pd.read_csv(run / "points.csv").set_index("point")
    for name in REPS:
        row = points.loc[name]
        corrected = quantiles(measured_us([run / "points" / name], "latency_ns"), QS)
        assert_within_precision([row[f"latency_{q}_us"] for q in latency.QUANTILES], corrected)
        uncorrected = quantiles(measured_us([run / "points" / name], "rtt_ns"), [0.99])
        assert_within_precision([row["uncorrected_p99_us"]], uncorrected)


def test_latency_csv_pools_the_repetitions_messages(run: Path) -> None:
    table = pd.read_csv(run / "latency.csv")
    assert list(table.columns) == latency.TABLE_COLUMNS
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["clients"], row["rate_per_client"], row["messages"]) == (4, 200.0, 60)
    assert math.isnan(row["duration_s"]) and row["arrivals"] == "uniform"
    assert row["repetitions"] == 2 and row["points"] == ";".join(REPS)
    dirs = [run / "points" / name for name in REPS]
    pooled = measured_us(dirs, "latency_ns")
    assert row["latency_count"] == pooled.size == 480
    assert_within_precision(
        [row[f"latency_{q}_us"] for q in latency.QUANTILES], quantiles(pooled, QS)
    )
    assert_within_precision(
        [row["uncorrected_p50_us"], row["uncorrected_p99_us"], row["uncorrected_max_us"]],
        quantiles(measured_us(dirs, "rtt_ns"), [0.5, 0.99, 1.0]),
    )
    merged = latency.merged_histograms(dirs, "corrected")
    assert histlog.quantiles_us(merged, [0.99]) == [row["latency_p99_us"]]

    docs = [json.loads((d / "point.json").read_text()) for d in dirs]
    windows = [d["achieved_window_s"] for d in docs]
    weighted = sum(d["achieved_msgs_per_s"] * w for d, w in zip(docs, windows)) / sum(windows)
    assert row["achieved_msgs_per_s"] == pytest.approx(weighted, abs=1e-3)
    assert row["measured_sends"] == 480
    assert row["worst_rep_lag_p99_us"] == pytest.approx(max(d["lag_p99_us"] for d in docs))
    assert row["late_generator_share"] == pytest.approx(
        sum(d["late_generator"] for d in docs) / 480
    )
    verdicts = sorted({v for d in docs for v in d["verdicts"]})
    assert (row["verdicts"] if isinstance(row["verdicts"], str) else "") == ";".join(verdicts)
    assert row["ok_repetitions"] == sum(d["verdict"] == "ok" for d in docs)


def test_a_percentile_is_never_averaged(tmp_path: Path) -> None:
    """Two repetitions far apart: the merged p50 is a measured value of the pooled messages, not
    the mean of the two medians (which no message came near)."""
    doc = {"clients": 1, "messages": 100, "rep": 1, "rate_per_client": 10.0, "verdict": "ok",
           "verdicts": [], "measured_sends": 100, "late_generator": 0}  # fmt: skip
    for rep, value_ns in ((1, 100_000), (2, 10_000_000)):
        point = tmp_path / "points" / f"1-100-r10-{rep}"
        point.mkdir(parents=True)
        (point / "point.json").write_text(json.dumps(doc | {"rep": rep}))
        n = 100 if rep == 1 else 98
        t = np.arange(n, dtype=np.int64) * 10_000_000
        items = histlog.intervals(t, np.full(n, value_ns), "corrected")
        histlog.write_log(point / latency.HLOG, items)
    tables = analysis.collect(tmp_path)
    row = tables.latency.iloc[0]
    # 198 messages, 100 of them at 100 µs: the median (the 99th) is 100 µs
    assert row["latency_count"] == 198
    assert row["latency_p50_us"] == 100.0
    assert row["latency_p90_us"] == pytest.approx(10_000, abs=histlog.precision_us(10_000))
    assert tables.points["latency_p50_us"].mean() > 5000  # what averaging the medians would say
    assert math.isnan(row["uncorrected_p50_us"])  # no such tag in these logs


def test_a_point_without_latency_hlog_has_nan_quantiles_and_a_warning(
    run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (run / "points" / REPS[1] / "latency.hlog").unlink()
    with caplog.at_level(logging.WARNING, logger="msgprof.analysis"):
        tables = analysis.collect(run)
    row = tables.points.set_index("point").loc[REPS[1]]
    for name in ("latency_p50_us", "latency_max_us", "uncorrected_p99_us"):
        assert math.isnan(row[name]), name
    assert row["measured_sends"] == 240  # from point.json, still there
    assert any("latency.hlog missing" in r.getMessage() for r in caplog.records)
    config = tables.latency.iloc[0]
    assert config["repetitions"] == 2 and config["latency_count"] == 240  # the other rep alone
    first = tables.points.set_index("point").loc[REPS[0]]
    assert config["latency_p99_us"] == first["latency_p99_us"]


def test_tables_read_back_and_old_columns_stay_a_prefix(run: Path) -> None:
    again = analysis.read_tables(run)
    assert list(again.latency.columns) == latency.TABLE_COLUMNS
    assert str(again.latency["latency_count"].dtype) == "Int64"
    assert str(again.points["measured_sends"].dtype) == "Int64"
    header = (run / "points.csv").read_text().splitlines()[0].split(",")
    assert header[: len(CLOSED_LOOP_COLUMNS)] == CLOSED_LOOP_COLUMNS
    assert header[len(CLOSED_LOOP_COLUMNS) :] == (
        analysis.PACE_COLUMNS + latency.POINT_COLUMNS + analysis.CAPACITY_COLUMNS
        + analysis.PROFILE_COLUMNS
    )
    assert REFERENCE.read_text().splitlines()[0].split(",") == header


def test_analysis_csv_keeps_each_points_clients_together(run: Path) -> None:
    clients = pd.read_csv(run / "analysis.csv")
    assert list(clients["point"]) == [REPS[0]] * 4 + [REPS[1]] * 4
    assert list(clients["client_id"]) == [1, 2, 3, 4] * 2


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("10-100-2", {"clients": "10", "messages": "100", "rep": "2", "rate_per_client": None}),
        ("4-60-r200-1", {"messages": "60", "rate_per_client": 200.0, "duration_s": None}),
        ("100-20s-r50-3", {"messages": None, "duration_s": 20.0, "rate_per_client": 50.0}),
        ("8-2.5s-r0.5-1-curve", {"duration_s": 2.5, "rate_per_client": 0.5, "rep": "1"}),
    ],
)
def test_point_names_are_read_when_point_json_lacks_the_keys(name: str, expected: dict) -> None:
    keys = analysis.point_keys("r", "points", Path(name), {})
    assert keys["phase"] == "sweep"
    for key, value in expected.items():
        assert keys[key] == value, key
