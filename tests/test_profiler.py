"""Server-side profiling: py-spy samples the server of a real point, and the profile names the
server's own hot path; a profiler that cannot start leaves the point measuring."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pypdf import PdfReader

from msgprof.config import PointConfig
from msgprof.experiment import profiler
from msgprof.experiment.flamegraph import write_flamegraph
from msgprof.experiment.point import run_point
from msgprof.report import analysis, plots
from msgprof.report.profile_table import TOP_N

COLLAPSED = """\
<module> (msgprof/__main__.py:1);Server.run (msgprof/server/server.py:250);Server._serve_burst (msgprof/server/server.py:264) 6
<module> (msgprof/__main__.py:1);Server.run (msgprof/server/server.py:250) 3
Thread.run (threading.py:975);_Background._flusher (msgprof/store/modes.py:120) 1
"""  # noqa: E501


def test_thread_roots_are_named_by_thread_not_by_id(tmp_path: Path) -> None:
    path = tmp_path / "server.collapsed"
    path.write_text("thread (10809): MainThread;serve (msgprof/server/server.py:500) 3\n"
                    "thread (10813): msgprof-store-flusher;_flush (m/s.py:1) 2\n")  # fmt: skip
    roots = [frames[0] for frames, _count in profiler.read_collapsed(path)]
    assert roots == ["thread MainThread", "thread msgprof-store-flusher"]
    rows = {r["function"]: r for r in profiler.top_rows(profiler.read_collapsed(path))}
    assert rows["thread MainThread"]["total_pct"] == 60.0


def test_top_rows_and_speedscope_from_collapsed_stacks(tmp_path: Path) -> None:
    path = tmp_path / "server.collapsed"
    path.write_text(COLLAPSED)
    stacks = profiler.read_collapsed(path)
    rows = {r["function"]: r for r in profiler.top_rows(stacks)}
    assert rows["Server._serve_burst"] == {"function": "Server._serve_burst",
        "file": "msgprof/server/server.py", "line": 264, "self_pct": 60.0, "total_pct": 60.0,
        "samples": 6}  # fmt: skip
    assert (rows["Server.run"]["self_pct"], rows["Server.run"]["total_pct"]) == (30.0, 90.0)
    assert rows["<module>"]["self_pct"] == 0.0 and rows["<module>"]["samples"] == 9
    svg = write_flamegraph(stacks, tmp_path / "server.svg", "server profile").read_text()
    assert svg.startswith("<?xml") and "Server._serve_burst" in svg and "10 samples" in svg
    doc = profiler.speedscope(stacks, "server")
    assert doc["profiles"][0]["weights"] == [6, 3, 1]
    frames = doc["shared"]["frames"]
    assert [frames[i]["name"] for i in doc["profiles"][0]["samples"][0]] == [
        "<module>", "Server.run", "Server._serve_burst"]  # fmt: skip


@pytest.mark.skipif(profiler.py_spy() is None, reason="py-spy is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="py-spy attaches to another process as root")
def test_a_profiled_point_names_the_servers_hot_path(tmp_path: Path) -> None:
    config = PointConfig(clients=100, messages=300, profile=True, profile_rate_hz=200)
    point = tmp_path / "run" / "points" / "100-300-1"  # a sweep point of a run directory
    doc = run_point(config, point)
    assert doc["verdict"] in ("ok", "generator_behind")
    assert doc["profile"]["profiled"] and doc["profile"]["reason"] is None
    assert doc["profile"]["samples"] > 20
    profile = point / "profile"
    with open(profile / "top.csv") as f:
        rows = list(csv.DictReader(f))
    files = {row["file"] for row in rows}
    assert "msgprof/server/server.py" in files  # the serving loop
    assert any(file.startswith("msgprof/store/") for file in files)  # the store
    assert any(row["function"] == "Server._serve_burst" for row in rows)
    assert "Server._serve_burst" in (profile / "server.svg").read_text()
    speedscope = json.loads((profile / "server.speedscope.json").read_text())
    assert speedscope["profiles"][0]["type"] == "sampled"
    # profile.csv: the point's top functions after its columns
    table = analysis.read_tables(tmp_path / "run").profile
    assert list(table["rank"]) == list(range(1, min(len(rows), TOP_N) + 1))
    assert set(table["point"]) == {"100-300-1"} and set(table["clients"]) == {100}
    assert "Server._serve_burst" in set(table["function"])
    assert table["self_pct"].sum() <= 100.01  # each share rounded to 3 decimals
    assert bool(analysis.read_tables(tmp_path / "run").points["profiled"].iloc[0])
    # the report's page: the server's own functions against the load
    pages = [p.extract_text() for p in PdfReader(plots.write_report(tmp_path / "run")).pages]
    page = next(text for text in pages if "Where the server's time goes" in text)
    assert "Server._serve_burst (msgprof/server/server.py)" in page


@pytest.mark.skipif(profiler.py_spy() is None, reason="py-spy is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="py-spy attaches to another process as root")
def test_a_profile_without_samples_still_writes_every_file(tmp_path: Path) -> None:
    # A sleeping process is idle to py-spy: no sample, as in a point too short to be caught.
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sampler = profiler.ServerProfiler(tmp_path / "profile", rate_hz=20, native=False)
        assert sampler.start(idle.pid)
        time.sleep(0.5)
        doc = sampler.stop()
    finally:
        idle.kill()
        idle.wait()
    assert doc["profiled"] is False and doc["reason"] == "py-spy recorded no sample"
    names = {p.name for p in (tmp_path / "profile").iterdir()}
    assert {"server.speedscope.json", "server.svg", "top.csv", "server.collapsed"} <= names
    assert (tmp_path / "profile" / "top.csv").read_text().splitlines() == [
        ",".join(profiler.TOP_COLUMNS)]  # fmt: skip
    assert "0 samples" in (tmp_path / "profile" / "server.svg").read_text()
    speedscope = json.loads((tmp_path / "profile" / "server.speedscope.json").read_text())
    assert speedscope["profiles"][0]["samples"] == []


def test_a_profiler_that_cannot_start_leaves_the_point_measuring(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(profiler, "py_spy", lambda: None)  # as on a host without py-spy
    doc = run_point(PointConfig(clients=5, messages=20, profile=True), tmp_path / "p")
    assert doc["verdict"] == "ok" and doc["acked"] == 100
    assert doc["profile"] == {"profiled": False, "reason": "py-spy not found (pip install py-spy)",
                              "rate_hz": 20, "native": False, "threads": False,
                              "samples": 0}  # fmt: skip


def test_a_point_without_profile_says_so(tmp_path: Path) -> None:
    doc = run_point(PointConfig(clients=2, messages=5), tmp_path / "p")
    assert doc["profile"] == {"profiled": False, "reason": "off"}
    assert not (tmp_path / "p" / "profile").exists()


def test_a_run_without_profiles_reads_as_no_rows(tmp_path: Path) -> None:
    from msgprof.report.profile_table import read_profile

    table = read_profile(tmp_path / "profile.csv", analysis.KEY_COLUMNS)  # an older run: none
    assert table.empty and list(table.columns)[-1] == "samples"
