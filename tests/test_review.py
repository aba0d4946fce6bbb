"""Reviewing runs: `msgprof compare` (matched points, bootstrap intervals, verdicts), `msgprof
check` (service-level gates and their exit code) and `msgprof runs` (the index of runs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pypdf import PdfReader

from msgprof.cli import main
from msgprof.config import PointConfig
from msgprof.experiment.point import run_point
from msgprof.report import analysis, compare, plots, runs, slo

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "reference"
RTT_COLUMNS = ["rtt_p50_us", "rtt_p90_us", "rtt_p99_us", "rtt_p999_us", "rtt_max_us", "rtt_mean_us"]
CLIENT_RTT = ["rtt_median_us", "rtt_p90_us", "rtt_p99_us", "rtt_max_us"]


def fabricated_run(path: Path, scale: float, seed: int, reps: int = 3) -> Path:
    """A run of three sweep sizes with `reps` repetitions each (and one size run once), whose
    RTTs are `scale` × a base with ±5 % noise between repetitions and ±10 % between clients."""
    rng = np.random.default_rng(seed)
    points, clients = [], []
    for size, base, times in ((1, 120.0, reps), (10, 300.0, reps), (100, 2000.0, reps),
                              (50, 900.0, 1)):  # fmt: skip
        for rep in range(1, times + 1):
            level = scale * base * rng.uniform(0.95, 1.05)
            name = f"{size}-100-{rep}"
            per_client = level * rng.uniform(0.9, 1.1, size=size)
            points.append({
                "run": path.name, "point": name, "phase": "sweep", "clients": size,
                "messages": 100, "rep": rep, "payload_bytes": 64, "ack_after": "write",
                "curve": False, "verdict": "ok", "acked": 100 * size, "lost": 0,
                "throughput_msgs_per_s": size / level * 1e6, "server_cpu_s": 0.5,
                **{c: level * (1 + k) for k, c in enumerate(RTT_COLUMNS)},
            })  # fmt: skip
            for cid, value in enumerate(per_client, start=1):
                rtts = {c: value * (1 + k) for k, c in enumerate(CLIENT_RTT)}
                clients.append({"point": name, "client_id": cid, "connect_ms": 1.0, **rtts})
    path.mkdir(parents=True)
    pd.DataFrame(points).to_csv(path / "points.csv", index=False)
    pd.DataFrame(clients).to_csv(path / "analysis.csv", index=False)
    (path / "manifest.json").write_text(json.dumps({
        "run": path.name, "git": {"commit": "a" * 40, "dirty": False}, "host": "vm",
        "config_sha256": "b" * 64, "started_unix_s": 1.8e9 + seed}))  # fmt: skip
    return path


def test_the_reference_against_itself_is_the_same_everywhere(tmp_path, capsys) -> None:
    assert main(["compare", str(REFERENCE), str(REFERENCE), "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "compare.csv")
    assert len(table) > 100 and set(table["verdict"]) == {"same"}
    assert (table["ratio"] == 1.0).all()
    assert {"rtt_p50_us", "throughput_msgs_per_s", "connect_p99_ms"} <= set(table["metric"])
    assert (tmp_path / "compare.pdf").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "A: reference" in out and "only in" not in out and "warning" not in out


def test_latencies_half_again_as_long_are_slower_with_an_interval_above_one(tmp_path) -> None:
    a = compare.load_run(fabricated_run(tmp_path / "a", 1.0, seed=1))
    b = compare.load_run(fabricated_run(tmp_path / "b", 1.5, seed=2))
    table = compare.compare(a, b).table
    for metric in ("rtt_p50_us", "rtt_p99_us", "rtt_p999_us"):
        rows = table[(table["metric"] == metric) & (table["clients"] != 50)]
        assert set(rows["verdict"]) == {"slower"}, rows
        assert (rows["ci_low"] > 1.0).all() and (rows["ratio"].between(1.3, 1.7)).all()
    repeated = table[(table["metric"] == "rtt_p50_us") & (table["clients"] != 50)]
    assert set(repeated["ci_units"]) == {"repetitions"}
    # the size run once: the interval falls back to its clients (RTT), none for the rest
    once = table[table["clients"] == 50].set_index("metric")
    assert once.loc["rtt_p50_us", "ci_units"] == "clients"
    assert once.loc["rtt_p50_us", "verdict"] == "slower"
    assert once.loc["rtt_p999_us", "ci_units"] == "none"
    assert once.loc["rtt_p999_us", "verdict"] == "unknown"
    throughput = table[table["metric"] == "throughput_msgs_per_s"]
    assert set(throughput[throughput["clients"] != 50]["verdict"]) == {"slower"}  # fewer msg/s
    # and the other way round: faster
    back = compare.compare(b, a).table
    assert set(back[back["metric"] == "rtt_p50_us"]["verdict"]) == {"faster"}


def test_noise_alone_is_the_same_and_the_same_seed_gives_the_same_intervals(tmp_path) -> None:
    a = compare.load_run(fabricated_run(tmp_path / "a", 1.0, seed=1))
    b = compare.load_run(fabricated_run(tmp_path / "b", 1.0, seed=2))
    first, again = compare.compare(a, b).table, compare.compare(a, b).table
    rtt = first[first["metric"].str.startswith("rtt", na=False)]
    assert set(rtt["verdict"]) <= {"same"}
    pd.testing.assert_frame_equal(first, again)


def test_points_of_one_run_only_are_listed_and_fail_on_gates_the_exit_code(
    tmp_path, capsys
) -> None:  # fmt: skip
    fabricated_run(tmp_path / "a", 1.0, seed=1)
    b = fabricated_run(tmp_path / "b", 1.5, seed=2)
    points = pd.read_csv(b / "points.csv")
    points[points["clients"] != 100].to_csv(b / "points.csv", index=False)
    args = ["compare", str(tmp_path / "a"), str(b), "--out", str(tmp_path / "c")]
    assert main([*args, "--fail-on", "faster"]) == 0
    assert main([*args, "--fail-on", "slower"]) == 1
    out = capsys.readouterr().out
    assert "only in A: 100 clients × 100 msg" in out
    table = pd.read_csv(tmp_path / "c" / "compare.csv")
    assert (table["verdict"] == "only_a").sum() == 1


def test_runs_that_differ_in_one_setting_are_matched_without_it(tmp_path) -> None:
    """Two real runs at another ack mode: matched by size, the difference named, intervals."""
    for mode in ("write", "fsync"):
        for size in (5, 20):
            config = PointConfig(clients=size, messages=100, ack_after=mode)
            doc = run_point(config, tmp_path / mode / "points" / f"{size}-100-1")
            assert doc["verdict"] == "ok"
        analysis.write_tables(tmp_path / mode)
    result = compare.compare(compare.load_run(tmp_path / "write"),
                             compare.load_run(tmp_path / "fsync"))  # fmt: skip
    assert result.differences == {"ack_after": ("write", "fsync")}
    rtt = result.table[result.table["metric"] == "rtt_p50_us"]
    assert sorted(rtt["clients"]) == [5, 20]
    assert set(rtt["ci_units"]) == {"clients"} and rtt["ci_low"].notna().all()
    assert (rtt["ci_low"] <= rtt["ratio"]).all() and (rtt["ratio"] <= rtt["ci_high"]).all()
    lines = compare.summary_lines(result)
    assert any("differ in ack_after: write (A) vs fsync (B)" in line for line in lines)
    # the gates of one of them, on the report's page
    run = str(tmp_path / "write")
    assert main(["check", run, "--slo", "rtt_p99_us<=1", "--slo", "lost==0", "--report-only"]) == 0
    pages = [p.extract_text() for p in PdfReader(plots.write_report(tmp_path / "write")).pages]
    page = next(text for text in pages if "Service-level gates" in text)
    assert "2 gates at 2 points: 2 failed" in page and "FAIL" in page and "lost==0" in page


def test_a_directory_without_points_is_a_clear_error(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["compare", str(tmp_path), str(REFERENCE)])
    assert exit_.value.code == 2
    assert "no points.csv" in capsys.readouterr().err


def test_check_exits_one_on_a_failing_gate_and_zero_otherwise(tmp_path, capsys) -> None:
    run = fabricated_run(tmp_path / "a", 1.0, seed=1)
    assert main(["check", str(run), "--slo", "lost==0", "--slo", "rtt_p99_us<=100000"]) == 0
    table = pd.read_csv(run / "slo.csv")
    assert len(table) == 2 * 10 and set(table["result"]) == {"pass"}
    assert main(["check", str(run), "--slo", "rtt_p99_us<=1000", "--slo", "verdict==ok"]) == 1
    out = capsys.readouterr().out
    assert "FAIL rtt_p99_us<=1000" in out and "100-100-1" in out and "ok   verdict==ok" in out
    # only the small points: the gate holds there
    assert main(["check", str(run), "--slo", "rtt_p99_us<=1000", "--where", "clients<=10"]) == 0
    assert main(["check", str(run), "--slo", "rtt_p99_us<=1", "--report-only"]) == 0


@pytest.mark.parametrize(("gate", "says"), [
    ("rtt_p99_us=<5000", "gate 'rtt_p99_us=<5000': expected COLUMN OP VALUE"),
    ("rtt_p99_us<=", "expected COLUMN OP VALUE"),
    ("verdict<=ok", "gate 'verdict<=ok': <= needs a number"),
    ("rtt_p99<=5", "gate 'rtt_p99<=5': points.csv has no column 'rtt_p99'"),
])  # fmt: skip
def test_a_bad_gate_is_a_clear_error_naming_it(tmp_path, capsys, gate, says) -> None:
    run = fabricated_run(tmp_path / "a", 1.0, seed=1)
    with pytest.raises(SystemExit) as exit_:
        main(["check", str(run), "--slo", gate])
    assert exit_.value.code == 2 and says in capsys.readouterr().err


def test_a_gate_on_a_value_a_point_lacks_is_not_applicable() -> None:
    points = pd.DataFrame({"point": ["a", "b"], "latency_p99_us": [900.0, np.nan]})
    table = slo.evaluate(points, [slo.parse_gate("latency_p99_us<1000")], [])
    assert list(table["result"]) == ["pass", "n/a"] and not slo.failed(table)


def test_runs_lists_every_run_and_says_which_are_incomplete(tmp_path, capsys) -> None:
    results = tmp_path / "results"
    fabricated_run(results / "good", 1.0, seed=1)
    shutil.copytree(REFERENCE, results / "reference")
    (results / "half").mkdir()
    (results / "half" / "config.yaml").write_text("run: half\n")
    broken = fabricated_run(results / "broken", 1.0, seed=3)
    (broken / "manifest.json").write_text("{not json")
    (results / "logs").mkdir()  # not a run
    assert main(["runs", str(results)]) == 0
    table = pd.read_csv(results / "index.csv").set_index("run")
    assert set(table.index) == {"good", "reference", "half", "broken"}
    assert table.loc["reference", "status"] == "complete"
    commit = json.loads((REFERENCE / "manifest.json").read_text())["git"]["commit"]
    assert table.loc["reference", "commit"] == commit[:12]
    assert table.loc["reference", "points"] == 23 and table.loc["reference", "master_steps"] == 8
    assert table.loc["good", "most_clients_ok"] == 100
    assert table.loc["half", "status"] == "incomplete: no manifest.json; no points.csv"
    assert "manifest.json unreadable" in table.loc["broken", "status"]
    assert "reference" in capsys.readouterr().out


def test_runs_on_the_repository_lists_the_reference() -> None:
    table = runs.index(ROOT / "results")
    assert "reference" in set(table["run"])
    with pytest.raises(ValueError, match="no such directory"):
        runs.index(ROOT / "no-such-results")
