"""msg_proc_profiling.pdf: a valid PDF with its eight pages in order, byte-stable on a rerun,
drawn from the analysis tables alone, and a note instead of a crash when a run has nothing for a
page; two more pages, latency against offered load and over time, for a run with paced points."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pypdf import PdfReader
from test_analysis import build_run

from msgprof import histlog
from msgprof.report import plots
from msgprof.report.pages import offered, tables, timeline

PAGE_TITLES = [
    "Client id vs connect time",
    "Client id vs median RTT",
    "RTT quantiles vs clients",
    "Throughput vs clients",
    "Server resources over time",
    "Verdicts and errors per point",
    "System limits",
    "Provenance",
]


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the fixture run with a manifest and config, and its report rendered once."""
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(build_run(tmp_path_factory.getbasetemp() / "fixture_run"), run)
    manifest = {
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "host": "testhost",
        "config_sha256": "feedbeef",
        "versions": {"msgprof": "0.1.0"},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "config.yaml").write_text("run: run\nsweep:\n  clients: [3, 4, 30]\n")
    plots.write_report(run)
    return run


def _texts(pdf: Path) -> list[str]:
    return [page.extract_text() for page in PdfReader(pdf).pages]


def test_report_is_a_pdf_with_the_pages_in_order(rendered: Path) -> None:
    pdf = rendered / plots.REPORT_NAME
    assert pdf.read_bytes().startswith(b"%PDF-")
    texts = _texts(pdf)
    assert len(texts) == len(PAGE_TITLES)
    for text, title in zip(texts, PAGE_TITLES):
        assert title in text
    assert not list(rendered.glob(".*.tmp"))


def test_report_made_its_tables_and_shows_what_they_hold(rendered: Path) -> None:
    for name in ("analysis.csv", "points.csv", "resources.csv", "limits.csv"):
        assert (rendered / name).is_file(), name
    texts = _texts(rendered / plots.REPORT_NAME)
    assert "step 3 ↓ 3×6" in texts[0]  # the master ramp-down is told apart in the seed's plot
    assert "30-3-1" in texts[5] and "4-8-1" in texts[5]
    assert "somaxconn" in texts[6]
    assert "0123456789abcdef" in texts[7] and "clients: [3, 4, 30]" in texts[7]


def test_every_page_is_also_a_png_under_its_category(rendered: Path) -> None:
    figures = sorted((rendered / "figures").rglob("*.png"))
    assert len(figures) == len(PAGE_TITLES)
    assert [int(p.name[:2]) for p in sorted(figures, key=lambda p: p.name)] == list(
        range(1, len(PAGE_TITLES) + 1)
    )
    assert {p.parent.name for p in figures} == {"Clients", "Load", "Server", "Verdicts",
                                                "Provenance"}  # fmt: skip
    first = rendered / "figures" / "Clients" / "01-client-id-vs-connect-time.png"
    assert first.read_bytes().startswith(b"\x89PNG") and first.stat().st_size > 10_000
    assert not (rendered / ".figures.tmp").exists()


def test_rerun_gives_the_same_bytes(rendered: Path) -> None:
    pdf = rendered / plots.REPORT_NAME
    before = pdf.read_bytes()
    plots.write_report(rendered)
    assert pdf.read_bytes() == before


def test_report_reads_the_tables_not_the_point_directories(rendered: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(rendered, run)
    shutil.rmtree(run / "points")
    shutil.rmtree(run / "master")
    pdf = plots.write_report(run)
    assert pdf.read_bytes() == (rendered / plots.REPORT_NAME).read_bytes()


def test_empty_run_gets_notes_not_a_crash(tmp_path: Path) -> None:
    pdf = plots.write_report(tmp_path)
    texts = _texts(pdf)
    assert len(texts) == len(PAGE_TITLES)
    assert "no sweep points in this run" in texts[0]
    assert "no master test case in this run" in texts[0]
    assert "manifest.json missing" in texts[7]


def test_long_verdict_table_continues_on_further_pages(
    rendered: Path, tmp_path: Path, monkeypatch
) -> None:
    run = tmp_path / "run"
    shutil.copytree(rendered, run)
    monkeypatch.setattr(tables, "TABLE_ROWS", 3)
    texts = _texts(plots.write_report(run))
    assert len(texts) == len(PAGE_TITLES) + 2  # seven points and steps: three table pages
    assert "continued, 3/3" in texts[7]


# Paced points: the two pages drawn only for them, and the knee.

PACED_TITLES = ["Latency against offered load", "Latency over time"]
#: Two timed paced points of one configuration but their rate: one series of two offered loads.
PACED_POINTS = {"4-2s-r100-1": "100", "4-2s-r200-1": "200"}


@pytest.fixture(scope="module")
def paced_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of two real paced points (4 clients, 2 s), an SLO in its config.yaml, analysed
    and reported."""
    run = tmp_path_factory.mktemp("paced") / "run"
    msgprof = [sys.executable, "-m", "msgprof", "-q"]
    jobs = [
        subprocess.Popen(
            msgprof
            + [
                "point",
                "--clients",
                "4",
                "--rate",
                rate,
                "--duration-s",
                "2",
                "--warmup-s",
                "0.5",
                "--processes",
                "1",
                "--out",
                str(run / "points" / name),
            ]
        )  # fmt: skip
        for name, rate in PACED_POINTS.items()
    ]
    for job in jobs:
        assert job.wait(timeout=120) == 0
    (run / "config.yaml").write_text("run: run\nslo:\n  p99_ms: 50\n")
    subprocess.run(msgprof + ["analyze", str(run)], check=True, stdout=subprocess.DEVNULL)
    plots.write_report(run)
    return run


def test_paced_run_gets_both_pages_after_the_load_pages(paced_run: Path) -> None:
    pdf = paced_run / plots.REPORT_NAME
    texts = _texts(pdf)
    expected = PAGE_TITLES[:4] + PACED_TITLES + PAGE_TITLES[4:]
    assert len(texts) == len(expected)
    for text, title in zip(texts, expected):
        assert title in text
    offered_text, timeline_text = texts[4], texts[5]
    assert "p99 ≤ 50 ms" in offered_text  # the SLO of the run's config.yaml
    assert "knee = highest offered rate" in offered_text
    for name in PACED_POINTS:
        assert name in timeline_text  # both points, the highest offered load first
    assert timeline_text.index("4-2s-r200-1") < timeline_text.index("4-2s-r100-1")
    before = pdf.read_bytes()
    plots.write_report(paced_run)
    assert pdf.read_bytes() == before


def test_paced_pages_name_the_points_whose_generator_fell_behind(paced_run: Path) -> None:
    points = pd.read_csv(paced_run / "points.csv")
    behind = sorted(points.loc[points["verdict"] == offered.BEHIND, "point"])
    text = _texts(paced_run / plots.REPORT_NAME)[4]
    if behind:
        assert "not a measurement of the server" in text
        for name in behind:
            assert name in text
    else:
        assert "not a measurement of the server" not in text


def test_a_run_without_paced_points_gets_neither_page(rendered: Path) -> None:
    texts = _texts(rendered / plots.REPORT_NAME)
    assert not any(title in text for text in texts for title in PACED_TITLES)


def _configs(offered_rates, achieved, p99_us, verdicts=None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "offered_msgs_per_s": offered_rates,
            "achieved_msgs_per_s": achieved,
            "latency_p99_us": p99_us,
            "verdicts": verdicts or ["ok"] * len(offered_rates),
        }
    )


def test_knee_is_the_highest_rate_within_the_slo_that_keeps_up() -> None:
    configs = _configs([100, 200, 400, 800], [100, 199, 390, 500], [1e3, 2e3, 9e3, 5e4])
    assert offered.knee(configs, 10) == 200  # 400 achieved 390 < 0.99 × 400
    assert offered.knee(configs, 1.5) == 100  # 200's p99 is 2 ms
    assert offered.knee(configs, 0.5) is None
    exact = _configs([100, 200], [99, 198], [1e3, 10e3])  # both bounds are inclusive
    assert offered.knee(exact, 10) == 200


def test_knee_ignores_generator_behind_and_missing_values() -> None:
    configs = _configs(
        [100, 200, 400, 800],
        [100, 200, float("nan"), 800],
        [1e3, 2e3, 3e3, float("nan")],
        ["ok", "generator_behind", "ok", "ok"],
    )
    assert offered.knee(configs, 10) == 100
    assert offered.knee(configs.iloc[0:0], 10) is None
    # not the first failure: the highest rate that qualifies, as the SLO defines it
    bumpy = _configs([100, 200, 400], [100, 200, 400], [20e3, 1e3, 2e3])
    assert offered.knee(bumpy, 10) == 400
    both = _configs([100, 200], [100, 200], [1e3, 1e3], ["ok", "data_loss;generator_behind"])
    assert offered.knee(both, 10) == 100
    # every repetition must be ok (latency.csv leaves the verdicts empty then), as msgprof knee
    failed = _configs([100, 200, 400], [100, 200, 400], [1e3, 1e3, 1e3], ["", "", "timeouts"])
    assert offered.knee(failed, 10) == 200


def test_slo_comes_from_the_run_config_else_ten_ms(tmp_path: Path) -> None:
    assert offered.slo_p99_ms(tmp_path) == offered.DEFAULT_SLO_P99_MS == 10.0
    (tmp_path / "config.yaml").write_text("run: x\nslo:\n  p99_ms: 2.5\n")
    assert offered.slo_p99_ms(tmp_path) == 2.5
    (tmp_path / "config.yaml").write_text("run: x\nslo: {}\n")
    assert offered.slo_p99_ms(tmp_path) == 10.0
    (tmp_path / "config.yaml").write_text("run: [unclosed\n")
    assert offered.slo_p99_ms(tmp_path) == 10.0


def test_interval_quantiles_add_the_processes_of_one_interval() -> None:
    ns = np.array([100_000, 200_000, 300_000, 4_000_000])
    t = np.array([10, 10, 10, 10]) * 1_000_000_000 + np.arange(4)
    one = histlog.intervals(t[:2], ns[:2], "corrected") + histlog.intervals(
        t[2:], ns[2:], "corrected"
    )  # two processes' lines for the same second
    one += histlog.intervals(t + 1_000_000_000, ns, "uncorrected")
    frame = timeline.interval_quantiles(one)
    assert list(frame["start_s"]) == [10.0, 11.0]
    assert (
        frame.loc[0, "corrected_p50_us"]
        == histlog.quantiles_us(histlog.merge(one, "corrected"), [0.5])[0]
    )
    assert 3990 <= frame.loc[0, "corrected_max_us"] <= 4010
    assert np.isnan(frame.loc[0, "uncorrected_p99_us"]) and np.isnan(
        frame.loc[1, "corrected_p50_us"]
    )


def test_resource_samples_are_put_on_the_monotonic_clock(paced_run: Path) -> None:
    point = paced_run / "points" / "4-2s-r100-1"
    samples = timeline.monotonic_samples(point / "resources.parquet")
    origin = float(pq.read_schema(point / "resources.parquet").metadata[b"t0_monotonic_s"])
    assert samples is not None and (samples["rss_bytes"] > 0).all()
    assert np.allclose(samples["t_mono_s"] - samples["t_s"], origin)
    starts = [item.start_s for item in histlog.read_log(point / "latency.hlog")]
    # the load ran while the server was sampled: its intervals lie within the samples' span
    assert samples["t_mono_s"].min() - 1 <= min(starts) <= samples["t_mono_s"].max()
    assert timeline.monotonic_samples(point / "missing.parquet") is None


def test_a_capacity_search_gets_its_page_before_the_provenance(rendered: Path, tmp_path) -> None:
    from test_capacity import _fake_point

    from msgprof.config import PointConfig
    from msgprof.experiment.capacity import CapacityRun, CapacitySearch

    run = tmp_path / "run"
    shutil.copytree(rendered, run)
    base = PointConfig(clients=100, messages=10, rate=1.0)
    CapacityRun(base, CapacitySearch(lo=100, probes=8), run / "capacity", _fake_point(1234)).run()
    texts = _texts(plots.write_report(run))
    assert len(texts) == len(PAGE_TITLES) + 1
    page = texts[-2]
    assert "Capacity: how many concurrent clients the server holds" in page
    assert "largest ok:" in page and "limit: timeouts" in page and "timeouts" in page
    assert "Provenance" in texts[-1]
