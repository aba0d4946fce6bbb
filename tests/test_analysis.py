"""The tables of real runs (analysis.csv, points.csv, resources.csv, limits.csv, latency.csv):
columns, exact quantiles of raw samples, order, and a run that is missing files or holds a
half-written point. Paced runs: tests/test_latency_tables.py."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from msgprof import histlog
from msgprof.report import analysis, host_tables, latency
from msgprof.stats import quantiles

DOCS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "points.csv"


def documented_columns(table: str) -> list[str]:
    """Column names of `table` (analysis.csv, points.csv, ...) in docs/results.md, in order."""
    section = DOCS.read_text().split(f"## {table}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.MULTILINE)


#: The fixture run: two plain points, one that runs out of server descriptors, a master case.
SWEEP = {
    "3-5-1": ["--clients", "3", "--messages", "5"],
    "4-8-1": ["--clients", "4", "--messages", "8"],
    "30-3-1": [
        "--clients",
        "30",
        "--messages",
        "3",
        "--rlimit-nofile",
        "100",
        "--backlog",
        "8",
        "--max-open-files",
        "8",
        "--timeout-s",
        "1",
        "--connect-timeout-s",
        "1",
    ],
}
MASTER_STEPS = "2x4,3x6"
HALF_WRITTEN = "5-5-1"


def build_run(run: Path) -> Path:
    """Run the fixture's points and master case with the real `msgprof` (in parallel), once."""
    done = run / ".complete"
    if done.exists():
        return run
    msgprof = [sys.executable, "-m", "msgprof", "-q"]
    jobs = [
        subprocess.Popen(
            msgprof + ["point", *args, "--processes", "1", "--out", str(run / "points" / name)]
        )
        for name, args in SWEEP.items()
    ]
    jobs.append(
        subprocess.Popen(
            msgprof
            + ["master", "--steps", MASTER_STEPS, "--processes", "1", "--out", str(run / "master")]
        )
    )
    for job in jobs:
        assert job.wait(timeout=120) == 0
    half = run / "points" / HALF_WRITTEN
    half.mkdir()
    shutil.copy(run / "points" / "3-5-1" / "rtt.parquet", half / "rtt.parquet")
    done.touch()
    return run


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.getbasetemp() / "fixture_run")


@pytest.fixture
def tables(run_dir: Path, tmp_path: Path) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """A copy of the fixture run with its tables written; (run dir, analysis.csv, points.csv)."""
    copy = tmp_path / "run1"
    shutil.copytree(run_dir, copy)
    analysis.write_tables(copy)
    points = pd.read_csv(copy / "points.csv")
    points[["verdicts", "errors"]] = points[["verdicts", "errors"]].fillna("")
    return copy, pd.read_csv(copy / "analysis.csv"), points


def test_columns_are_exactly_the_documented_ones(tables) -> None:
    run, clients, points = tables
    assert list(clients.columns) == documented_columns("analysis.csv")
    assert list(points.columns) == documented_columns("points.csv")
    assert analysis.CLIENT_COLUMNS == documented_columns("analysis.csv")
    assert analysis.POINT_COLUMNS == documented_columns("points.csv")
    assert host_tables.LIMIT_COLUMNS == documented_columns("limits.csv")
    assert latency.TABLE_COLUMNS == documented_columns("latency.csv")
    assert list(pd.read_csv(run / "latency.csv").columns) == latency.TABLE_COLUMNS
    assert list(pd.read_csv(run / "limits.csv").columns) == documented_columns("limits.csv")
    # resources.csv: the row keys, then the columns the monitor writes to resources.parquet
    resources = list(pd.read_csv(run / "resources.csv").columns)
    assert resources == documented_columns("resources.csv")
    raw = pq.read_schema(run / "points" / "3-5-1" / "resources.parquet").names
    assert resources == host_tables.ROW_KEYS + raw


def test_one_row_per_point_and_per_client_in_phase_order(tables) -> None:
    run, clients, points = tables
    assert list(points["point"]) == [
        "3-5-1",
        "4-8-1",
        "30-3-1",
        "01-ramp_up-2x4",
        "02-ramp_up-3x6",
        "03-ramp_down-3x6",
        "04-ramp_down-2x4",
    ]
    assert list(points["phase"]) == ["sweep"] * 3 + ["ramp_up"] * 2 + ["ramp_down"] * 2
    assert list(points["step"].fillna(0).astype(int)) == [0, 0, 0, 1, 2, 3, 4]
    assert list(points["rep"].fillna(0).astype(int)) == [1, 1, 1, 0, 0, 0, 0]
    assert set(points["run"]) == {"run1"}
    for p in points.itertuples():
        rows = clients[clients["point"] == p.point]
        assert len(rows) == p.clients
        assert rows["client_id"].is_monotonic_increasing
        raw = pd.read_parquet(
            run / ("points" if p.phase == "sweep" else "master") / p.point / "clients.parquet"
        )
        assert sorted(rows["client_id"]) == sorted(raw["client_id"])
    # master client ids keep growing from step to step
    up = clients[clients["point"] == "02-ramp_up-3x6"]["client_id"]
    assert list(up) == [3, 4, 5]


def test_rtt_quantiles_are_exact_over_every_raw_ok_sample(tables) -> None:
    run, _clients, points = tables
    for p in points.itertuples():
        raw = pd.read_parquet(
            run / ("points" if p.phase == "sweep" else "master") / p.point / "rtt.parquet"
        )
        ok = raw.loc[raw["status"] == "OK", "rtt_ns"].to_numpy()
        expected = np.quantile(ok, [0.5, 0.9, 0.99, 0.999, 1.0], method="inverted_cdf") / 1e3
        got = [p.rtt_p50_us, p.rtt_p90_us, p.rtt_p99_us, p.rtt_p999_us, p.rtt_max_us]
        np.testing.assert_allclose(got, expected, atol=1e-3)
        assert p.rtt_mean_us == pytest.approx(ok.mean() / 1e3, abs=1e-3)
        assert p.acked == len(ok)


def test_connect_quantiles_are_measured_values_of_the_connected_clients(tables) -> None:
    _run, clients, points = tables
    for p in points.itertuples():
        connect = clients.loc[clients["point"] == p.point, "connect_ms"].dropna().to_numpy()
        got = [p.connect_p50_ms, p.connect_p99_ms, p.connect_max_ms]
        if not len(connect):
            assert all(math.isnan(v) for v in got)
            continue
        expected = np.quantile(connect, [0.5, 0.99, 1.0], method="inverted_cdf")
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert set(got) <= set(connect)  # never an interpolation between two clients


def test_per_client_values_are_converted_from_clients_parquet(tables) -> None:
    run, clients, _points = tables
    raw = pd.read_parquet(run / "points" / "4-8-1" / "clients.parquet")
    rows = clients[clients["point"] == "4-8-1"].reset_index(drop=True)
    np.testing.assert_allclose(rows["connect_ms"], raw["connect_ns"] / 1e6, atol=1e-6)
    np.testing.assert_allclose(rows["rtt_median_us"], raw["rtt_median_ns"] / 1e3, atol=1e-3)
    assert (rows["acked"] == 8).all() and (rows["sent"] == 8).all()


def test_a_point_that_hit_a_limit_keeps_its_verdict_errors_and_limits(tables) -> None:
    run, clients, points = tables
    doc = json.loads((run / "points" / "30-3-1" / "point.json").read_text())
    row = points.set_index("point").loc["30-3-1"]
    assert row["verdict"] == doc["verdict"]
    assert row["verdicts"] == ";".join(doc["verdicts"])
    assert row["errors"] == ";".join(f"{k}={v}" for k, v in sorted(doc["errors"].items()) if v)
    assert int(row["rlimit_nofile"]) == 100  # the server's limit, not the point process's
    never = clients[(clients["point"] == "30-3-1") & ~clients["connected"]]
    assert len(never) == 30 - int(row["connected"])
    assert never["connect_ms"].isna().all()


def test_server_columns_come_from_the_point_summary(tables) -> None:
    run, _clients, points = tables
    doc = json.loads((run / "points" / "3-5-1" / "point.json").read_text())
    row = points.set_index("point").loc["3-5-1"]
    res = doc["server"]["resources"]
    assert row["server_cpu_s"] == pytest.approx(res["cpu_user_s"] + res["cpu_system_s"], abs=1e-3)
    assert row["server_peak_rss_mb"] == pytest.approx(res["peak_rss_bytes"] / 2**20, abs=1e-6)
    assert row["server_peak_fds"] == res["peak_open_fds"]
    assert row["server_service_p99_us"] == pytest.approx(
        doc["server"]["service_ns"]["p99"] / 1e3, abs=1e-3
    )
    assert row["throughput_msgs_per_s"] == pytest.approx(doc["throughput_msgs_per_s"], abs=1e-3)


def test_resources_table_holds_every_raw_sample_in_point_order(tables) -> None:
    run, _clients, points = tables
    resources = pd.read_csv(run / "resources.csv")
    expected = [*points["point"], host_tables.MASTER]
    assert list(dict.fromkeys(resources["point"])) == expected
    for name in expected:
        group = "master" if name == host_tables.MASTER else None
        if group is None:
            phase = points.set_index("point").loc[name, "phase"]
            group = "points" if phase == "sweep" else "master"
        path = run / group / ("" if name == host_tables.MASTER else name) / "resources.parquet"
        raw = pd.read_parquet(path)
        rows = resources[resources["point"] == name].reset_index(drop=True)
        assert len(rows) == len(raw) > 0, name
        for column in raw.columns:  # as sampled: floats round-trip exactly
            np.testing.assert_array_equal(rows[column].to_numpy(), raw[column].to_numpy())
    steps = resources[resources["phase"] == "ramp_down"]
    assert set(steps["step"]) == {3, 4}
    assert set(resources.loc[resources["point"] == "master", "phase"]) == {"master"}


def test_limits_table_has_each_points_limits_json_with_text_kept_as_text(tables) -> None:
    run, _clients, points = tables
    limits = analysis.read_tables(run).limits
    assert list(limits["point"]) == list(points["point"])
    row = limits.set_index("point").loc["4-8-1"]
    doc = json.loads((run / "points" / "4-8-1" / "limits.json").read_text())
    assert row["somaxconn"] == doc["somaxconn"] and isinstance(row["somaxconn"], str)
    assert row["ip_local_port_range"] == doc["ip_local_port_range"]
    assert row["rlimit_nofile_soft"] == doc["rlimit_nofile_soft"]
    assert row["host"] == doc["host"] and row["captured_unix_s"] == doc["captured_unix_s"]
    step = limits.set_index("point").loc["02-ramp_up-3x6"]
    assert step["phase"] == "ramp_up" and step["step"] == 2


def test_half_written_point_is_skipped_with_a_warning(run_dir: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="msgprof.analysis"):
        clients, points, resources, limits, *_others = analysis.collect(run_dir)
    assert HALF_WRITTEN not in set(points["point"])
    assert HALF_WRITTEN not in set(clients["point"])
    assert HALF_WRITTEN not in set(resources["point"]) | set(limits["point"])
    assert any(
        HALF_WRITTEN in r.getMessage() and "point.json" in r.getMessage() for r in caplog.records
    )


def test_missing_optional_files_give_nan_not_a_crash(run_dir: Path, tmp_path: Path, caplog) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    point = run / "points" / "4-8-1"
    for name in ("rtt.parquet", "clients.parquet", "limits.json", "resources.parquet"):
        (point / name).unlink()
    doc = json.loads((point / "point.json").read_text())
    doc["server"]["resources"] = {"samples": 0}
    (point / "point.json").write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="msgprof.analysis"):
        clients, points, resources, limits, *_others = analysis.collect(run)
    row = points.set_index("point").loc["4-8-1"]
    for name in (
        "rtt_p50_us",
        "rtt_max_us",
        "connect_p50_ms",
        "server_cpu_s",
        "server_peak_rss_mb",
    ):
        assert math.isnan(row[name]), name
    assert pd.isna(row["somaxconn"])
    assert row["verdict"] == "ok" and row["acked"] == 32
    assert "4-8-1" not in set(clients["point"])
    assert "4-8-1" not in set(resources["point"]) | set(limits["point"])
    assert len(caplog.records) >= 4


def test_write_tables_is_atomic_and_reads_back(tables) -> None:
    run, clients, points = tables
    assert not list(run.glob(".*.tmp"))
    again = analysis.read_tables(run)
    assert len(again.clients) == len(clients) and len(again.points) == len(points)
    again_points = again.points
    assert str(again_points["step"].dtype) == "Int64"
    assert again_points.loc[0, "errors"] == "" and again_points.loc[0, "verdicts"] == ""


def test_empty_run_gives_header_only_tables(tmp_path: Path) -> None:
    paths = analysis.write_tables(tmp_path)
    assert [p.name for p in paths] == list(analysis.FILES)
    headers = [p.read_text().strip().split(",") for p in paths]
    assert headers[:2] == [documented_columns("analysis.csv"), documented_columns("points.csv")]
    assert headers[2] == host_tables.ROW_KEYS  # no samples: no sample columns
    assert headers[3] == documented_columns("limits.csv")
    assert headers[4] == documented_columns("latency.csv")
    assert all(len(frame) == 0 for frame in analysis.read_tables(tmp_path))


def test_raw_rtt_is_read_a_row_group_at_a_time(run_dir: Path, tmp_path: Path) -> None:
    table = pq.read_table(run_dir / "points" / "30-3-1" / "rtt.parquet")
    pq.write_table(table, tmp_path / "rtt.parquet", row_group_size=7)
    assert pq.ParquetFile(tmp_path / "rtt.parquet").num_row_groups > 1
    frame = table.to_pandas()
    expected = frame.loc[frame["status"] == "OK", "rtt_ns"].to_numpy()
    np.testing.assert_array_equal(analysis.ok_rtt_ns(tmp_path / "rtt.parquet"), expected)


def test_format_errors_sorts_kinds_and_drops_zeros() -> None:
    assert (
        analysis.format_errors({"not_sent": 7, "BUSY": 0, "TIMEOUT": 3}) == "TIMEOUT=3;not_sent=7"
    )
    assert analysis.format_errors({}) == ""


def test_closed_loop_points_keep_the_reference_columns_first(tables) -> None:
    """points.csv of a closed-loop run: the reference run's columns, in its order, then the new."""
    run, _clients, points = tables
    reference = REFERENCE.read_text().splitlines()[0].split(",")
    assert list(points.columns[: len(reference)]) == reference
    assert analysis.POINT_COLUMNS[: len(reference)] == reference
    assert len(pd.read_csv(run / "latency.csv")) == 0  # no paced point


def test_closed_loop_latency_is_the_round_trip_from_latency_hlog(tables) -> None:
    run, _clients, points = tables
    for p in points[points["phase"] == "sweep"].itertuples():
        if p.point == "30-3-1":
            continue  # refused clients: not every message measured
        rtt = pd.read_parquet(run / "points" / p.point / "rtt.parquet")
        stored = rtt[rtt["status"].isin(["OK", "DUPLICATE"])]
        assert (stored["latency_ns"] == stored["rtt_ns"]).all()
        exact = quantiles(histlog.to_us(stored["rtt_ns"].to_numpy()), [0.5, 0.99, 1.0])
        for value, name in zip(exact, ["p50", "p99", "max"], strict=True):
            got = getattr(p, f"latency_{name}_us")
            assert value <= got <= value + histlog.precision_us(value), (p.point, name)
        assert p.uncorrected_p99_us == p.latency_p99_us
        assert math.isnan(p.rate_per_client) and math.isnan(p.offered_msgs_per_s)
        assert math.isnan(p.duration_s) and math.isnan(p.achieved_msgs_per_s)
        assert p.lag_p99_us == 0 and p.late_sends == 0 and p.measured_sends == len(rtt)
