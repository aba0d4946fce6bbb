"""Stopping a point stops everything it started: SIGTERM, SIGINT and SIGKILL leave no orphan.

A point started by hand or by Snakemake is stopped the same way when a user cancels a run or a
cluster job hits its time limit; a `msgprof server` left running holds its port, descriptors
and data directory for as long as nobody notices.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow


def _start_long_point(out: Path, *extra: str) -> subprocess.Popen:
    """A point that would run for minutes: many messages per client, generous deadline."""
    argv = [sys.executable, "-m", "msgprof", "-q", "point", "--clients", "20",
            "--messages", "1000000", "--processes", "2", "--deadline-s", "300",
            "--out", str(out), *extra]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(out.parent / "point.log", "wb"))


def _command(process: psutil.Process) -> str:
    """A process's command line; "" for one that is gone or a zombie by the time it is asked
    (a child of a point can exit between being listed and being read)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _children_when_loaded(point: subprocess.Popen, out: Path, timeout_s: float = 60) -> list[psutil.Process]:
    """The point's descendants once its server and both client processes run and load flows."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert point.poll() is None, (out.parent / "point.log").read_text()
        kids = psutil.Process(point.pid).children(recursive=True)
        commands = [_command(k) for k in kids]
        servers = [c for c in commands if " server " in f" {c} "]
        clients = [c for c in commands if " client " in f" {c} "]
        if servers and len(clients) >= 2:
            time.sleep(1.0)  # messages are flowing by now
            return psutil.Process(point.pid).children(recursive=True)
        time.sleep(0.1)
    raise AssertionError("the point's server and clients did not start")


def _assert_all_gone(processes: list[psutil.Process], within_s: float) -> None:
    gone, alive = psutil.wait_procs(processes, timeout=within_s)
    for proc in alive:  # clean up before failing, so no test leaves a process behind
        proc.kill()
    assert not alive, f"still running after {within_s} s: {[p.pid for p in alive]}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_point_stops_its_children_and_says_interrupted(tmp_path, signum):
    out = tmp_path / "point"
    point = _start_long_point(out)
    try:
        children = _children_when_loaded(point, out)
        point.send_signal(signum)
        point.wait(timeout=60)
        _assert_all_gone(children, within_s=5)
    finally:
        if point.poll() is None:
            point.kill()
    doc = json.loads((out / "point.json").read_text())
    assert doc["verdict"] == "interrupted", doc.get("verdict_detail")
    assert doc["acked"] > 0  # what was measured before the signal is kept
    assert doc["lost"] == 0


def test_a_killed_point_leaves_no_orphan(tmp_path):
    out = tmp_path / "point"
    point = _start_long_point(out)
    try:
        children = _children_when_loaded(point, out)
        assert all(c.pid != os.getpid() for c in children)
        point.kill()  # SIGKILL: the point gets no chance to clean up
        point.wait(timeout=10)
        _assert_all_gone(children, within_s=30)
    finally:
        if point.poll() is None:
            point.kill()


def test_cancelling_the_workflow_leaves_no_msgprof_process(tmp_path):
    """Ctrl-C on `snakemake`: the terminal sends SIGINT to its whole process group."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    bindir = Path(sys.executable).parent
    config = {
        "run": "cancelled",
        "sweep": {"clients": [20], "messages": [1000000], "repetitions": 1},
        "master": {"enabled": False},
        "paced": {"clients": []},
        "client": {"processes": 2, "deadline_s": 300},
    }
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    workflow = subprocess.Popen(
        [str(bindir / "snakemake"), "-s", str(root / "Snakefile"), "--directory", str(tmp_path),
         "--cores", "2"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "snakemake.log", "wb"), env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        started: list[psutil.Process] = []
        while time.monotonic() < deadline and not started:
            assert workflow.poll() is None, (tmp_path / "snakemake.log").read_text()[-3000:]
            kids = psutil.Process(workflow.pid).children(recursive=True)
            # the point's clients, not the calibration's (`msgprof calibrate` runs clients too)
            if any("client" in (cmd := _command(k)) and "/points/" in cmd for k in kids):
                time.sleep(1.0)
                started = psutil.Process(workflow.pid).children(recursive=True)
            time.sleep(0.2)
        assert started, "the sweep's point never started its clients"
        os.killpg(workflow.pid, signal.SIGINT)
        workflow.wait(timeout=120)
        _assert_all_gone(started, within_s=30)
        stray = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
        assert not stray, [p.pid for p in stray]
    finally:
        if workflow.poll() is None:
            os.killpg(workflow.pid, signal.SIGKILL)
