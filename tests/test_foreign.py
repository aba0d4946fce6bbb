"""A server that is not msgprof's: `msgprof point|master --server-command` against the example
server of examples/servers/ (sweep point, master case, readiness by file and by port, the
stored messages not verified or checked by a command), and `msgprof conform`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from pypdf import PdfReader

from msgprof.config import PointConfig
from msgprof.experiment import conform
from msgprof.experiment.master import run_master
from msgprof.experiment.monitor import ResourceMonitor
from msgprof.experiment.point import run_point
from msgprof.report import analysis, plots

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "servers" / "bare_server.py"
BY_FILE = f"{sys.executable} {EXAMPLE} --ready {{ready}}"
BY_PORT = f"{sys.executable} {EXAMPLE} --port {{port}}"


def msgprof(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "msgprof", *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_a_point_against_the_example_server_is_ok_and_not_verified(tmp_path) -> None:
    run = tmp_path / "run"
    out = run / "points" / "20-50-1"
    done = msgprof("point", "--clients", "20", "--messages", "50", "--server-command", BY_FILE,
                   "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads((out / "point.json").read_text())
    assert doc["verdict"] == "ok" and doc["acked"] == 1000
    assert doc["lost"] is None and doc["duplicates_stored"] is None
    assert doc["verification"]["verified"] is False
    assert doc["verification"]["reason"].startswith("not verified")
    assert doc["parameters"]["server_command"] == BY_FILE
    assert "lost not verified" in done.stderr
    # the tables and the report say so: lost empty, never 0
    points = analysis.read_tables(run).points
    assert pd.isna(points["lost"].iloc[0]) and not points["verified"].iloc[0]
    pages = [page.extract_text() for page in PdfReader(plots.write_report(run)).pages]
    verdicts = next(text for text in pages if "Verdicts and errors per point" in text)
    assert "not verified" in verdicts


def test_the_master_case_against_a_server_ready_by_its_port(tmp_path) -> None:
    config = PointConfig(clients=5, messages=20, server_command=BY_PORT)
    doc = run_master(config, [(5, 20), (10, 30)], tmp_path / "master")
    assert doc["verdict"] == "ok"
    steps = json.loads((tmp_path / "master" / "master.json").read_text())["steps"]
    assert [s["acked"] for s in steps] == [100, 300, 300, 100]
    assert {s["lost"] for s in steps} == {None}


def test_a_verify_command_counts_what_the_server_did_not_store(tmp_path) -> None:
    script = tmp_path / "highest.py"
    script.write_text("import sys\nfor cid in range(1, 6):\n    print(cid, sys.argv[1])\n")
    for highest, lost in ((20, 0), (18, 10)):
        config = PointConfig(clients=5, messages=20, server_command=BY_FILE, verify="command",
                             verify_command=f"{sys.executable} {script} {highest}")  # fmt: skip
        doc = run_point(config, tmp_path / f"p{highest}")
        assert doc["verification"]["verified"] and doc["lost"] == lost
        assert doc["verdict"] == ("ok" if lost == 0 else "data_loss")


def test_a_server_command_that_never_gets_ready_fails_the_point(tmp_path) -> None:
    config = PointConfig(clients=2, messages=5, server_command=f"{sys.executable} -c "
                         "'import sys; sys.exit(3)' {ready}")  # fmt: skip
    doc = run_point(config, tmp_path / "p")
    assert doc["verdict"] == "server_failed"


@pytest.mark.parametrize(("given", "says"), [
    ({"server_command": "server --fast"}, "needs {ready}"),
    ({"server_command": "server {ready} {host}"}, "has {host}"),
    ({"server_command": BY_FILE, "verify": "file"}, "needs --verify none or command"),
    ({"verify": "command"}, "--verify command needs --verify-command"),
    ({"server_command": BY_FILE, "curve": True}, "brings its own security"),
])  # fmt: skip
def test_a_server_command_the_point_cannot_use_is_refused(given, says) -> None:
    with pytest.raises(ValueError, match=says.replace("{", r"\{").replace("}", r"\}")):
        PointConfig(clients=1, messages=1, **given)


@pytest.mark.parametrize("target", [BY_FILE, BY_PORT, "msgprof server --data-dir {data}/q "
                                    "--ready-file {ready}"])  # fmt: skip
def test_conform_passes_the_example_and_msgprofs_own_server(target) -> None:
    results = conform.conform(target)
    assert all(r.passed for r in results), conform.table(results)
    assert {r.case for r in results} == {name for name, _rule, _run in conform.CASES}


def test_conform_fails_a_server_that_acknowledges_a_duplicate_as_stored() -> None:
    server = ROOT / "tests" / "tools" / "duplicate_ok_server.py"
    bad = f"{sys.executable} {server} --ready {{ready}}"
    done = msgprof("conform", bad)
    assert done.returncode == 1
    failing = [line for line in done.stdout.splitlines() if " FAIL " in line]
    assert failing == [line for line in failing if line.startswith("duplicate ")]
    assert any("seq 2 again" in line and "DUPLICATE" in line and line.endswith("OK")
               for line in failing)  # fmt: skip
    assert "broken: duplicate: a seq at or below the last stored is DUPLICATE" in done.stdout


def test_conform_says_what_is_wrong_with_a_target() -> None:
    done = msgprof("conform", "not-a-server")
    assert done.returncode == 2 and "no endpoint (tcp://HOST:PORT)" in done.stderr


def test_a_foreign_servers_resources_include_its_children(tmp_path) -> None:
    """A server that runs its work in a child process (a wrapper, forked workers): the
    monitor sums the family, so the child's 64 MB show."""
    code = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
            "'import time; block = bytearray(64 << 20); time.sleep(20)']); time.sleep(20)")
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(1.5)  # the child has its memory
        alone = ResourceMonitor(parent.pid, None)
        family = ResourceMonitor(parent.pid, None, children=True)
        for monitor in (alone, family):
            monitor._sample()
        rss_alone = alone.table()["rss_bytes"][0].as_py()
        rss_family = family.table()["rss_bytes"][0].as_py()
        assert rss_family - rss_alone > 60 << 20
        assert family.table()["threads"][0].as_py() >= 2
    finally:
        for proc in psutil.Process(parent.pid).children(recursive=True):
            proc.kill()
        parent.kill()
        parent.wait()
