"""Server-side profiling: py-spy samples the server of a real point, and the profile names the
server's own hot path; a profiler that cannot start leaves the point measuring."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from conftest import Peer, server_process
from pypdf import PdfReader

from msgprof.config import PointConfig
from msgprof.experiment import profiler
from msgprof.experiment.point import run_point
from msgprof.report import analysis, plots
from msgprof.report import stacks as stacks_format
from msgprof.report.flamegraph import write_flamegraph
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
    roots = [frames[0] for frames, _count in stacks_format.read_collapsed(path)]
    assert roots == ["thread MainThread", "thread msgprof-store-flusher"]
    rows = {r["function"]: r for r in stacks_format.top_rows(stacks_format.read_collapsed(path))}
    assert rows["thread MainThread"]["total_pct"] == 60.0


def test_top_rows_and_speedscope_from_collapsed_stacks(tmp_path: Path) -> None:
    path = tmp_path / "server.collapsed"
    path.write_text(COLLAPSED)
    stacks = stacks_format.read_collapsed(path)
    rows = {r["function"]: r for r in stacks_format.top_rows(stacks)}
    assert rows["Server._serve_burst"] == {"function": "Server._serve_burst",
        "file": "msgprof/server/server.py", "line": 264, "self_pct": 60.0, "total_pct": 60.0,
        "samples": 6}  # fmt: skip
    assert (rows["Server.run"]["self_pct"], rows["Server.run"]["total_pct"]) == (30.0, 90.0)
    assert rows["<module>"]["self_pct"] == 0.0 and rows["<module>"]["samples"] == 9
    svg = write_flamegraph(stacks, tmp_path / "server.svg", "server profile").read_text()
    assert svg.startswith("<?xml") and "Server._serve_burst" in svg and "10 samples" in svg
    doc = stacks_format.speedscope(stacks, "server")
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
    # flame.csv: every stack of the (only, so largest) point, and its flame graph's page
    flame = analysis.read_tables(tmp_path / "run").flame
    assert set(flame["point"]) == {"100-300-1"}
    assert flame["samples"].sum() == doc["profile"]["samples"]
    assert flame["stack"].str.contains("Server._serve_burst").any()
    page = next(text for text in pages if "The server's flame graph at 100-300-1" in text)
    assert "100 clients × 300 messages" in page and "Server._serve_burst" in page


@pytest.mark.skipif(profiler.py_spy() is None, reason="py-spy is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="py-spy attaches to another process as root")
def test_a_profile_without_samples_still_writes_every_file(tmp_path: Path) -> None:
    # A sleeping process is idle to py-spy: no sample, as in a point too short to be caught.
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sampler = profiler.Profiler(tmp_path / "profile", rate_hz=20, native=False)
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


@pytest.mark.skipif(profiler.py_spy() is None, reason="py-spy is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="py-spy attaches to another process as root")
def test_a_server_started_alone_profiles_itself(tmp_path: Path) -> None:
    out = tmp_path / "profile"
    with server_process(tmp_path, "--profile-out", str(out), "--profile-rate-hz", "200") as (
        proc, endpoint, _stats,
    ), zmq.Context() as ctx:  # fmt: skip
        peer = Peer(ctx, endpoint)
        seq, deadline = 0, time.monotonic() + 2.0
        while time.monotonic() < deadline and seq < 20_000:  # bounded in time and count
            seq += 1
            peer.data(7, seq)
            assert peer.ack() is not None
        peer.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    doc = json.loads((out / "profile.json").read_text())
    assert doc["profiled"] and doc["rate_hz"] == 200 and doc["samples"] > 20
    with open(out / "top.csv") as f:
        assert any(row["function"] == "Server._serve_burst" for row in csv.DictReader(f))
    assert (out / "server.svg").is_file() and (out / "server.speedscope.json").is_file()


@pytest.mark.skipif(profiler.py_spy() is None, reason="py-spy is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="py-spy attaches to another process as root")
def test_profiled_client_processes_name_the_load_generators_hot_path(tmp_path: Path) -> None:
    config = PointConfig(clients=40, messages=400, processes=2, profile_clients=True,
                         profile_rate_hz=200)  # fmt: skip
    point = tmp_path / "run" / "points" / "40-400-1"
    doc = run_point(config, point)
    assert doc["verdict"] in ("ok", "generator_behind")
    assert doc["profile"]["reason"] == "off"  # the server was not sampled, the clients were
    assert [c["profiled"] for c in doc["profile"]["clients"]] == [True, True]
    for k in (0, 1):
        with open(point / "profile" / f"client-{k}" / "top.csv") as f:
            files = {row["file"] for row in csv.DictReader(f)}
        assert any(file.startswith("msgprof/load/") for file in files)
        assert (point / "profile" / f"client-{k}" / "client.svg").is_file()
    table = analysis.read_tables(tmp_path / "run").profile
    assert set(table["process"]) == {"client-0", "client-1"}
    assert table[table["file"].str.startswith("msgprof/load/")]["process"].nunique() == 2


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
    from msgprof.report.profile_table import read_flame, read_profile

    table = read_profile(tmp_path / "profile.csv", analysis.KEY_COLUMNS)  # an older run: none
    assert table.empty and list(table.columns)[-1] == "samples"
    assert read_flame(tmp_path / "flame.csv", analysis.KEY_COLUMNS).empty


def test_the_flame_graph_is_of_the_largest_profiled_point(tmp_path: Path) -> None:
    from msgprof.report.profile_table import Flame

    flame = Flame()
    for name, phase, clients, messages in (("100-300-1", "sweep", 100, 300),
                                           ("2000-20-1", "sweep", 2000, 20),
                                           ("9", "ramp_up", 5000, 10),
                                           ("2000-10-1", "sweep", 2000, 10)):  # fmt: skip
        (tmp_path / name / "profile").mkdir(parents=True)
        (tmp_path / name / "profile" / "server.collapsed").write_text(f"{name};f (a.py:1) 3\n")
        keys = {"point": name, "phase": phase, "clients": clients, "messages": messages}
        flame.offer(keys, tmp_path / name)
    assert [row["point"] for row in flame.rows] == ["2000-20-1"]  # a sweep point first


@pytest.mark.skipif(profiler.py_spy() is None, reason="py-spy is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="py-spy attaches to another process as root")
def test_each_master_step_gets_its_own_profile(tmp_path: Path) -> None:
    from msgprof.experiment.master import run_master

    config = PointConfig(clients=10, messages=200, profile=True, profile_rate_hz=200)
    doc = run_master(config, [(10, 200), (50, 200)], tmp_path / "run" / "master")
    assert doc["verdict"] == "ok"
    steps = sorted((tmp_path / "run" / "master").glob("0*-*"))
    assert len(steps) == 4
    for step in steps:
        point = json.loads((step / "point.json").read_text())
        assert point["profile"]["rate_hz"] == 200 and point["profile"]["reason"] in (
            None, "py-spy recorded no sample")  # fmt: skip
        assert (step / "profile" / "top.csv").is_file()
    table = analysis.read_tables(tmp_path / "run").profile
    assert set(table["phase"]) <= {"ramp_up", "ramp_down"} and table["step"].notna().all()
    assert "Server._serve_burst" in set(table["function"])
