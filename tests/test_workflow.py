"""The real Snakemake workflow on a tiny config: outputs, reruns, a point that hits a limit."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Points of 3 and 150 clients; the server's descriptor budget (200 - 16 queue files - 16 backlog
# - 64 reserve = 104 connections) is too small for 150, so that point must end with the
# verdict descriptor_limit while the rest of the sweep completes.
TINY = {
    "run": "tiny",
    "sweep": {"clients": [3, 150], "messages": [4], "repetitions": 1, "payload_bytes": 32},
    "master": {"enabled": True, "steps": ["2x3", "4x5"]},
    # one paced point, timed, and a paced sweep twin of every sweep point (counted)
    "paced": {"clients": [3], "rate": [40], "duration_s": 1.5, "warmup_s": 0.3},
    "server": {"backlog": 16, "max_open_files": 16, "rlimit_nofile": 200},
    "client": {"processes": 1, "timeout_s": 2, "connect_timeout_s": 3, "deadline_s": 30},
    # gates checked after the analysis (the 150-client point is left out by the filter)
    "slo": {"gates": ["lost==0", "acked>=6"], "where": ["clients<=100"]},
}


def snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--cores", "2", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny sweep, run once for the tests of this module."""
    workdir = tmp_path_factory.mktemp("workflow")
    (workdir / "config").mkdir()
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(TINY))
    done = snakemake(workdir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return workdir


def test_lint_and_dry_run_are_clean():
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    lint = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=120)  # fmt: skip
    assert lint.returncode == 0 and "Lints for" not in lint.stdout + lint.stderr, lint.stdout
    dry = subprocess.run([str(BIN / "snakemake"), "-n"], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert dry.returncode == 0, dry.stderr


def test_snakefiles_are_snakefmt_clean():
    if shutil.which("snakefmt", path=str(BIN)) is None:
        pytest.skip("snakefmt is not installed (it comes with the test extra)")
    done = subprocess.run([str(BIN / "snakefmt"), "--check", "Snakefile", "workflow"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_outputs_columns_and_pdf(tiny_run):
    run = tiny_run / "results" / "tiny"
    analysis = pd.read_csv(run / "analysis.csv")
    points = pd.read_csv(run / "points.csv")
    for column in ("run", "point", "phase", "clients", "messages", "client_id", "connect_ms",
                   "first_ack_ms", "rtt_median_us", "rtt_p90_us", "rtt_p99_us", "rtt_max_us",
                   "acked", "errors"):  # fmt: skip
        assert column in analysis.columns, column
    for column in ("point", "phase", "verdict", "throughput_msgs_per_s", "rtt_p50_us",
                   "rtt_p99_us", "lost", "client_busiest_thread_max", "server_cpu_s",
                   "server_peak_rss_mb"):  # fmt: skip
        assert column in points.columns, column
    assert set(points["phase"]) == {"sweep", "ramp_up", "ramp_down"}
    assert len(points) == 2 + 1 + 4
    paced = points[points["point"] == "3-1.5s-r40-1"].iloc[0]
    assert paced["offered_msgs_per_s"] == 120 and pd.isna(paced["messages"])
    assert paced["measured_sends"] > 0 and paced["latency_p99_us"] > 0
    latency = pd.read_csv(run / "latency.csv")
    assert list(latency["points"]) == ["3-1.5s-r40-1"]
    small = points[points["point"] == "3-4-1"].iloc[0]
    assert small["verdict"] == "ok" and small["acked"] == 12 and small["lost"] == 0
    assert len(analysis[analysis["point"] == small["point"]]) == 3
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config_sha256"] and manifest["packages"]["pyzmq"]
    assert yaml.safe_load((run / "config.yaml").read_text())["run"] == "tiny"
    from pypdf import PdfReader

    pages = [page.extract_text() for page in PdfReader(run / "msg_proc_profiling.pdf").pages]
    assert len(pages) >= 8
    # every job's benchmark file, summed up on the last page
    for job in ("points/3-4-1", "master", "calibrate", "analysis", "manifest", "profiling_pdf"):
        assert (run / "benchmarks" / f"{job}.tsv").is_file(), job
    assert "The pipeline's own cost" in pages[-1]
    assert re.search(r"points 3 [0-9.]+", pages[-1]) and "calibrate 1" in pages[-1]


def test_point_over_the_descriptor_budget_is_a_recorded_verdict(tiny_run):
    point = json.loads((tiny_run / "results/tiny/points/150-4-1/point.json").read_text())
    assert point["verdict"] == "descriptor_limit", point["verdict_detail"]
    assert point["lost"] == 0


def test_second_run_does_nothing_and_a_deleted_point_is_redone_alone(tiny_run):
    again = snakemake(tiny_run, "-n")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
    (tiny_run / "results/tiny/points/3-4-1/point.json").unlink()
    redo = snakemake(tiny_run)
    assert redo.returncode == 0, redo.stderr[-3000:]
    text = redo.stdout + redo.stderr
    jobs = set(re.findall(r"^(?:local)?rule (\w+):", text, flags=re.MULTILINE))
    expected = {"point", "analysis", "manifest", "slo", "profiling_pdf", "slo_gate", "all"}
    assert jobs == expected, jobs
    assert len(re.findall(r"^(?:local)?rule point:", text, flags=re.MULTILINE)) == 1
    assert "wildcards: clients=3, messages=4, rep=1" in text


def test_gates_are_checked_and_a_failing_one_fails_the_run(tiny_run, tmp_path):
    slo = pd.read_csv(tiny_run / "results/tiny/slo.csv")
    assert set(slo["gate"]) == {"lost==0", "acked>=6"} and set(slo["result"]) == {"pass"}
    assert "150-4-1" not in set(slo["point"])  # where: clients<=100
    assert (tiny_run / "results/tiny/logs/slo.passed").is_file()
    from pypdf import PdfReader

    pdf = PdfReader(tiny_run / "results/tiny/msg_proc_profiling.pdf")
    pages = [p.extract_text() for p in pdf.pages]
    assert any("Service-level gates" in text for text in pages)
    # the same run with a gate no point can meet: the job slo_gate fails, the run exits non-zero
    workdir = tmp_path / "copy"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    done = snakemake(workdir, "--config", "slo={gates: ['rtt_p99_us<=1']}")
    assert done.returncode != 0
    text = done.stdout + done.stderr
    assert "Error in rule slo_gate" in text and "FAIL rtt_p99_us<=1" in text
    slo = pd.read_csv(workdir / "results/tiny/slo.csv")
    assert set(slo["result"]) == {"fail"}
    assert (workdir / "results/tiny/msg_proc_profiling.pdf").is_file()


def test_compare_to_adds_the_comparison_with_another_run(tiny_run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    shutil.copytree(workdir / "results/tiny", workdir / "results/before")  # the same numbers
    done = snakemake(workdir, "--config", "compare_to=before")
    assert done.returncode == 0, done.stderr[-3000:]
    out = workdir / "results/tiny/compare-to-before"
    table = pd.read_csv(out / "compare.csv")
    assert set(table["verdict"]) == {"same"} and len(table) > 10
    assert (out / "compare.pdf").is_file() and json.loads((out / "compare.json").read_text())
    text = done.stdout + done.stderr
    jobs = set(re.findall(r"^(?:local)?rule (\w+):", text, flags=re.MULTILINE))
    assert jobs == {"compare", "all"}


def chromium() -> str:
    """A headless Chromium: found, or installed from Debian's packages as root; else skip."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("no chromium, and installing it needs root and apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
    done = subprocess.run(install, capture_output=True, text=True, timeout=900, env=env)
    if done.returncode != 0:  # a stale package list: once more after an update
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600, env=env)
        done = subprocess.run(install, capture_output=True, text=True, timeout=900, env=env)
    if done.returncode != 0 or shutil.which("chromium") is None:
        pytest.skip(f"chromium cannot be installed here: {done.stderr.strip()[-300:]}")
    return shutil.which("chromium")


def test_the_html_report_renders_every_figure_by_category(tiny_run, tmp_path):
    html = tmp_path / "report.html"
    done = snakemake(tiny_run, "--report", str(html))
    assert done.returncode == 0, done.stderr[-3000:]
    browser = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
               "--virtual-time-budget=5000", "--window-size=1400,1000"]  # fmt: skip
    shot = tmp_path / "shot.png"
    subprocess.run([*browser, f"--screenshot={shot}", html.as_uri()], capture_output=True,
                   timeout=180, check=True)  # fmt: skip
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3].reshape(-1, 3)
    assert pixels.std() > 0.05 and len(set(map(tuple, pixels[::97].round(2)))) > 20  # not blank
    dom = subprocess.run([*browser, "--dump-dom", html.as_uri()], capture_output=True,
                         text=True, timeout=180, check=True).stdout  # fmt: skip
    # the menu as rendered: one entry per category of figures, tables and provenance
    for category in ("Clients", "Load", "Server", "Verdicts", "Provenance", "Tables"):
        assert re.search(rf">\s*{category}\s*<", dom), category
    # every page of the PDF is a figure of its own, captioned with its title
    figures = sorted((tiny_run / "results/tiny/figures").rglob("*.png"))
    assert len(figures) >= 10
    for figure in figures:
        title = figure.stem[3:].replace("-", " ")
        assert figure.name in dom and title in dom, figure.name
    assert "Service-level gates" in dom or "service level gates" in dom


EXAMPLE_SERVER = ROOT / "examples" / "servers" / "bare_server.py"


def test_a_sweep_against_a_server_command_checks_it_first(tmp_path):
    """The example server: conformance first, then every point and the master case against it,
    nothing verified (lost empty); a server that breaks a rule is refused before any point."""
    command = [sys.executable, str(EXAMPLE_SERVER), "--ready", "{ready}"]
    config = dict(TINY, sweep=dict(TINY["sweep"], clients=[3]), paced={"clients": []},
                  server={"command": command})  # fmt: skip
    (tmp_path / "good" / "config").mkdir(parents=True)
    (tmp_path / "good" / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    done = snakemake(tmp_path / "good")
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "good" / "results" / "tiny"
    assert "checks pass" in (run / "conformance.txt").read_text()
    points = pd.read_csv(run / "points.csv")
    assert set(points["verdict"]) == {"ok"} and (points["acked"] == points["planned"]).all()
    assert points["lost"].isna().all() and not points["verified"].any()
    breaks_a_rule = ROOT / "tests" / "tools" / "duplicate_ok_server.py"
    bad = dict(config, server={"command": [sys.executable, str(breaks_a_rule), *command[2:]]})
    (tmp_path / "bad" / "config").mkdir(parents=True)
    (tmp_path / "bad" / "config" / "config.yaml").write_text(yaml.safe_dump(bad))
    done = snakemake(tmp_path / "bad")
    assert done.returncode != 0 and "Error in rule conformance" in done.stdout + done.stderr
    assert "broken: duplicate" in done.stderr
    assert not list((tmp_path / "bad" / "results" / "tiny").glob("points/*/point.json"))


def test_curve_sweep_plans_a_curve_twin_of_every_point(tmp_path):
    (tmp_path / "config").mkdir()
    config = dict(TINY, sweep=dict(TINY["sweep"], clients=[3], curve=[False, True]))
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    dry = snakemake(tmp_path, "-n", "-p")
    assert dry.returncode == 0, dry.stderr
    text = dry.stdout + dry.stderr
    assert "--out results/tiny/points/3-4-1 " in text
    assert "--curve --out results/tiny/points/3-4-1-curve " in text

