"""msg_proc_profiling.pdf: a valid PDF with its eight pages in order, byte-stable on a rerun,
drawn from the analysis tables alone, and a note instead of a crash when a run has nothing for a
page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pypdf import PdfReader
from test_analysis import build_run

from msgprof.report import plots
from msgprof.report.pages import tables

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
