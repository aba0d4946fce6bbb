"""Cluster execution: the srun launcher's placement, and real runs on a real SLURM.

The unit tests need nothing. The tests marked `slurm` need a running SLURM whose commands are on
PATH (tests/cluster/slurm-up.sh starts one on this host, as .ci/run does when it runs as root);
without one they are skipped with the reason. Every SLURM command runs with a timeout, and every
job a test submits is cancelled if the test gives up on it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from msgprof.config import PointConfig
from msgprof.experiment import launch
from msgprof.experiment.lifecycle import ChildProcesses

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")

# The workflow test's tiny sweep, without its descriptor-limit point (which measures nothing
# here that the local workflow test does not).
TINY = {
    "run": "tiny",
    "sweep": {"clients": [3, 5], "messages": [4], "repetitions": 1, "payload_bytes": 32},
    "master": {"enabled": True, "steps": ["2x3", "4x5"]},
    "paced": {"clients": [3], "rate": [40], "duration_s": 1.5, "warmup_s": 0.3},
    "server": {"backlog": 16, "max_open_files": 16},
    "client": {"timeout_s": 2, "connect_timeout_s": 3, "deadline_s": 30},
}


# --- placement, without SLURM ------------------------------------------------------------------


class Srun:
    """A fake allocation: SLURM variables set and scontrol answered from a table."""

    def __init__(self, monkeypatch, nodes: list[str], cpus: str, here: str) -> None:
        for var in [v for v in os.environ if v.startswith(("SLURM_", "SRUN_", "SBATCH_"))]:
            monkeypatch.delenv(var)
        monkeypatch.setenv("SLURM_JOB_ID", "42")
        monkeypatch.setenv("SLURM_JOB_NODELIST", "fake-list")
        monkeypatch.setenv("SLURM_JOB_CPUS_PER_NODE", cpus)
        monkeypatch.setenv("SLURMD_NODENAME", here)
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")  # of the step running msgprof point
        monkeypatch.setattr(launch.shutil, "which", lambda tool: f"/usr/bin/{tool}")
        answers = {("scontrol", "show", "node", "-o", n): f"NodeName={n} NodeAddr=127.0.0.1"
                   for n in nodes}  # fmt: skip
        answers[("scontrol", "show", "hostnames", "fake-list")] = "\n".join(nodes) + "\n"
        answers[("scontrol", "show", "job", "-o", "42")] = "JobId=42 TimeLimit=00:20:00"
        monkeypatch.setattr(launch, "_run", lambda argv: answers[tuple(argv)])
        launch._srun_placement.cache_clear()


def test_bind_addresses_are_explicit_and_never_wildcards():
    assert launch.normalise_bind("tcp://127.0.0.1:0") == "tcp://127.0.0.1:0"
    assert launch.normalise_bind("localhost") == "tcp://127.0.0.1:0"
    assert launch.normalise_bind("127.0.0.1:5555") == "tcp://127.0.0.1:5555"
    assert launch.normalise_bind("[::1]:7") == "tcp://[::1]:7"
    assert launch.normalise_bind("ipc:///tmp/x") == "ipc:///tmp/x"
    for wildcard in ("0.0.0.0", "*", "tcp://*:0", "tcp://0.0.0.0:5555", "::"):
        with pytest.raises(ValueError, match="wildcard"):
            launch.normalise_bind(wildcard)
    with pytest.raises(ValueError, match="port"):
        launch.normalise_bind("127.0.0.1:http")
    assert launch.placement(PointConfig(clients=1, messages=1)).bind == launch.LOOPBACK_BIND


def test_cpus_per_node_expands_slurm_notation():
    assert launch.expand_cpus_per_node("2(x3),1", 4) == [2, 2, 2, 1]
    assert launch.expand_cpus_per_node("16", 1) == [16]
    assert launch.expand_cpus_per_node("garbage", 2) == [1, 1]
    assert launch.expand_cpus_per_node("4(x2)", 3) == [1, 1, 1]  # does not match the nodes


def test_srun_outside_an_allocation_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(ValueError, match="needs a SLURM allocation"):
        launch.check("srun", None)
    env = {k: v for k, v in ENV.items() if k != "SLURM_JOB_ID"}
    done = subprocess.run(
        [sys.executable, "-m", "msgprof", "point", "--clients", "1", "--messages", "1",
         "--launcher", "srun", "--out", str(tmp_path / "p")],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "needs a SLURM allocation" in done.stderr, done.stderr
    assert not (tmp_path / "p").exists()


def test_srun_puts_clients_on_the_other_nodes(monkeypatch):
    Srun(monkeypatch, ["n1", "n2", "n3"], "4(x3)", here="n1")
    config = PointConfig(clients=100, messages=1, launcher="srun")
    place = launch.placement(config)
    assert place.server_node == "n1" and place.client_nodes == ("n2", "n3")
    assert place.bind == "tcp://127.0.0.1:0" and not place.co_located
    assert launch.client_processes(config) == 8  # the CPUs of the client nodes
    argv = launch.client_argv(config, 1, 8, ["python", "-m", "msgprof", "client"])
    srun = argv[argv.index("srun") :]
    assert srun[:8] == [
        "srun", "--nodes=1", "--ntasks=1", "--cpus-per-task=1", "--exclusive",
        "--nodelist=n3", "--job-name=msgprof-client-1", "--kill-on-bad-exit=1",
    ]  # fmt: skip
    assert srun[-4:] == ["python", "-m", "msgprof", "client"]
    # The step that runs `msgprof point` must not pass its own CPUs or tasks on to the clients.
    assert argv[: argv.index("srun")] == [
        "env", "-u", "SLURM_CPUS_PER_TASK", "-u", "SLURM_JOB_CPUS_PER_NODE",
        "-u", "SLURM_JOB_NODELIST",
    ]  # fmt: skip
    doc = launch.describe(config)
    assert doc["kind"] == "srun" and doc["co_located"] is False and doc["shared_clock"] is False
    assert [s["node"] for s in doc["client_steps"]] == ["n2", "n3"] * 4
    assert doc["slurm"]["job_id"] == "42" and doc["slurm"]["time_limit"] == "00:20:00"
    # More processes than CPUs on a node: the steps share them rather than wait for each other.
    assert "--overlap" in launch.client_argv(config, 0, 20, [])


def test_srun_on_a_single_node_is_co_located_and_says_so(monkeypatch):
    Srun(monkeypatch, ["solo"], "2", here="solo")
    config = PointConfig(clients=5, messages=1, launcher="srun", bind="localhost:0")
    assert launch.placement(config).bind == "tcp://127.0.0.1:0"
    assert "--overlap" in launch.client_argv(config, 0, 2, [])
    doc = launch.describe(config)
    assert doc["co_located"] is True and doc["nodes"] == ["solo"] and "one node" in doc["note"]


def test_srun_refuses_to_serve_from_outside_the_allocation(monkeypatch):
    Srun(monkeypatch, ["n1", "n2"], "1(x2)", here="login")
    with pytest.raises(ValueError, match="not a node of job 42"):
        launch.placement(PointConfig(clients=1, messages=1, launcher="srun"))


# --- a real SLURM ------------------------------------------------------------------------------


def _slurm(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, env=ENV, check=False
    )


def _idle_nodes() -> list[tuple[str, int]]:
    """(name, CPUs) of the idle nodes of the default partition; [] without a usable SLURM."""
    if shutil.which("sinfo") is None:
        return []
    try:
        done = _slurm("sinfo", "-h", "-N", "-t", "idle", "-o", "%N %c", timeout=15)
    except subprocess.TimeoutExpired:
        return []
    if done.returncode != 0:
        return []
    return [(name, int(cpus)) for name, cpus in (line.split() for line in done.stdout.splitlines())]


@pytest.fixture(scope="module")
def slurm_nodes() -> list[tuple[str, int]]:
    nodes = _idle_nodes()
    if not nodes:
        pytest.skip(
            "no SLURM with an idle node here (sinfo missing, failing or showing none idle): "
            "start one with `sudo tests/cluster/slurm-up.sh`"
        )
    return nodes


def _cancel(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=30, check=False)


def _sbatch_wait(script: str, tmp_path: Path, *options: str, timeout: float = 300) -> str:
    """Submit `script`, wait for the job to end (bounded); the job's output."""
    path = tmp_path / "job.sh"
    path.write_text("#!/bin/bash\nset -eu\n" + script)
    out = tmp_path / "job.out"
    done = _slurm("sbatch", "--parsable", f"--output={out}", "--time=10", *options, str(path))
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _slurm("squeue", "-h", "-j", job, "-o", "%T").stdout.strip()
        if not state:
            break
        time.sleep(0.5)
    else:
        _cancel([job])
        pytest.fail(
            f"job {job} still {state} after {timeout} s: {out.read_text() if out.exists() else ''}"
        )
    return out.read_text() if out.exists() else ""


def _srun_point(tmp_path: Path, nodes: int) -> tuple[dict, str, Path]:
    out = tmp_path / "point"
    script = (
        f"{BIN}/msgprof point --launcher srun --clients 6 --messages 20 --timeout-s 5"
        f" --deadline-s 60 --strict --out {out}\necho point-exit=$?\n"
    )
    text = _sbatch_wait(script, tmp_path, f"--nodes={nodes}", "--exclusive")
    assert "point-exit=0" in text, text
    return json.loads((out / "point.json").read_text()), text, out


@pytest.mark.slurm
def test_srun_launcher_runs_a_point_inside_an_allocation(slurm_nodes, tmp_path):
    point, _text, out = _srun_point(tmp_path, nodes=1)
    assert point["verdict"] == "ok" and point["acked"] == 6 * 20 and point["lost"] == 0
    launcher = point["launcher"]
    assert launcher["kind"] == "srun" and launcher["co_located"] is True
    assert launcher["nodes"] == [launcher["server_node"]] and launcher["slurm"]["job_id"]
    assert not launcher["bind"].startswith(("tcp://0.0.0.0", "tcp://*"))
    server_stats = json.loads((out / "server.json").read_text())
    assert server_stats["endpoint"].rsplit(":", 1)[0] == launcher["bind"].rsplit(":", 1)[0]
    for k in range(point["client_processes"]):
        first = (out / f"client-{k}.log").read_text().splitlines()[0]
        assert re.fullmatch(rf"srun step {launcher['slurm']['job_id']}\.\d+ on node \S+", first), (
            first
        )


@pytest.mark.slurm
def test_srun_launcher_puts_clients_on_another_node(slurm_nodes, tmp_path):
    if len(slurm_nodes) < 2:
        pytest.skip(
            "the test cluster has one idle node; MSGPROF_SLURM_NODES=2 slurm-up.sh makes two"
        )
    point, _text, out = _srun_point(tmp_path, nodes=2)
    launcher = point["launcher"]
    assert point["verdict"] == "ok" and point["acked"] == 6 * 20, point["verdict_detail"]
    assert launcher["co_located"] is False and len(launcher["nodes"]) == 2
    (other,) = set(launcher["nodes"]) - {launcher["server_node"]}
    assert launcher["client_nodes"] == [other]
    assert {step["node"] for step in launcher["client_steps"]} == {other}
    for k in range(point["client_processes"]):
        assert f"on node {other}" in (out / f"client-{k}.log").read_text().splitlines()[0]


def _snakemake(workdir: Path, *args: str, timeout: float) -> tuple[int, str]:
    """Run snakemake; on timeout SIGTERM it (it cancels its SLURM jobs), then kill it."""
    argv = [
        str(BIN / "snakemake"),
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]
    log = workdir / "snakemake.out"
    with open(log, "w") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=ENV)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            ChildProcesses.stop(proc, grace_s=60)  # SIGTERM: it cancels its jobs
            proc.wait()
            _cancel(re.findall(r"submitted with SLURM jobid (\d+)", log.read_text()))
            code = -1
    return code, log.read_text()


def _tree(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


def _keys(doc, prefix=""):
    """Every key path of a JSON document, except under `launcher` (which says where it ran)."""
    if not isinstance(doc, dict):
        return set()
    return {f"{prefix}{k}" for k in doc} | {
        path for k, v in doc.items() if k != "launcher" for path in _keys(v, f"{prefix}{k}.")
    }


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_profile_runs_the_tiny_sweep_like_a_local_run(slurm_nodes, tmp_path):
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip(
            "snakemake-executor-plugin-slurm is not installed (pip install -e '.[cluster]')"
        )
    if max(cpus for _name, cpus in slurm_nodes) < 2:
        pytest.skip("the profile asks 2 CPUs per point; no idle node here has them")
    runs = {}
    for kind, args, timeout in (
        ("local", ["--cores", "2"], 600),
        ("slurm", ["--profile", str(ROOT / "profiles/slurm"),
                   "--slurm-init-seconds-before-status-checks", "2"], 900),
    ):  # fmt: skip
        workdir = tmp_path / kind
        (workdir / "config").mkdir(parents=True)
        (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(TINY))
        code, text = _snakemake(workdir, *args, timeout=timeout)
        assert code == 0, text[-6000:]
        runs[kind] = workdir
    local, slurm = (runs[k] / "results" / "tiny" for k in ("local", "slurm"))
    assert "submitted with SLURM jobid" in (runs["slurm"] / "snakemake.out").read_text()

    # The same files, with the same structure inside.
    assert _tree(slurm) == _tree(local)
    for name in sorted(_tree(local)):
        if name.endswith(".json"):
            assert _keys(json.loads((slurm / name).read_text())) == _keys(
                json.loads((local / name).read_text())
            ), name
        elif name.endswith(".parquet"):
            assert pq.read_schema(slurm / name).names == pq.read_schema(local / name).names, name
        elif name.endswith(".csv"):
            assert list(pd.read_csv(slurm / name).columns) == list(
                pd.read_csv(local / name).columns
            )
    points = pd.read_csv(slurm / "points.csv")
    assert len(points) == 2 + 1 + 4
    closed = points[points["rate_per_client"].isna()]  # a paced point may be generator_behind
    assert set(closed["verdict"]) == {"ok"}
    assert (points["acked"] == points["planned"]).all() and (points["lost"] == 0).all()

    # Each measured job ran alone on its node, with resources derived from its size, and the
    # limits it saw were captured inside it; SLURM kept every job's log.
    for point in ("points/3-4-1", "points/5-4-1"):
        doc = json.loads((slurm / point / "point.json").read_text())
        job = doc["launcher"]["slurm"]
        assert doc["launcher"]["kind"] == "local" and job["oversubscribe"] == "NO"
        assert job["time_limit"] == "00:20:00" and job["cpus_per_task"] == "2"
        assert "mem=1001M" in job["tres"] or "mem=1002M" in job["tres"], job["tres"]
        limits = json.loads((slurm / point / "limits.json").read_text())
        assert limits["cpu_affinity"] == 2
        clients, messages, rep = point.split("/")[1].split("-")
        # one folder per job, named by its wildcards joined with "_" (the last one, security,
        # is empty for a point without CURVE)
        logs = list(
            (runs["slurm"] / ".snakemake/slurm_logs/rule_point").glob(
                f"{clients}_{messages}_{rep}_/*.log"
            )
        )
        assert logs and logs[0].stat().st_size > 0
    assert list((runs["slurm"] / ".snakemake/slurm_logs/rule_master").glob("*.log"))
