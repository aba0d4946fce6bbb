"""Progress of a long point: the line it logs, from the client processes' progress.json and the
server's resource monitor, seen in a real point's log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from msgprof.config import PointConfig
from msgprof.experiment import progress
from msgprof.experiment.point import run_point


def test_counts_of_every_client_process_are_summed(tmp_path: Path) -> None:
    for k, counts in enumerate(({"connected": 3, "clients": 5, "acked": 7, "planned": 50,
                                 "errors": 1}, {"connected": 5, "clients": 5, "acked": 2,
                                                "planned": 50, "errors": 0})):  # fmt: skip
        (tmp_path / f"client-{k}").mkdir()
        (tmp_path / f"client-{k}" / "progress.json").write_text(json.dumps(counts))
    (tmp_path / "client-2").mkdir()
    (tmp_path / "client-2" / "progress.json").write_text("{not json")  # being written
    total = progress.client_counts(tmp_path)
    assert total == {"connected": 8, "clients": 10, "acked": 9, "planned": 100, "errors": 1}
    line = progress.progress_line("sending", 10, total, 1234.5, (230_000_000, 10_123))
    assert line == ("sending: connected 8/10, acked 9/100, 1 errors, 1,234 msg/s; "
                    "server RSS 230 MB, 10,123 descriptors")  # fmt: skip


def test_a_point_logs_its_progress(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(progress, "PERIOD_S", 0.3)
    caplog.set_level(logging.INFO, logger="msgprof.point")
    config = PointConfig(clients=20, messages=10, rate=5.0, processes=2)  # about 2 s of sending
    doc = run_point(config, tmp_path / "p")
    assert doc["acked"] == 200  # (a busy host may make the verdict generator_behind)
    lines = [r.getMessage() for r in caplog.records if r.name == "msgprof.point"]
    sending = [line for line in lines if line.startswith("sending: connected 20/20, acked ")]
    assert sending, lines
    assert any("/200" in line and "server RSS" in line and "descriptors" in line
               for line in sending)  # fmt: skip
    assert any(line.startswith("verifying: the queues against 200 acknowledged") for line in lines)


@pytest.mark.parametrize("counts,phase", [
    ({"connected": 1, "clients": 2, "acked": 0, "planned": 4, "errors": 0}, "connecting"),
    ({"connected": 2, "clients": 2, "acked": 0, "planned": 4, "errors": 0}, "sending"),
])  # fmt: skip
def test_the_phase_follows_the_counts(tmp_path: Path, counts, phase) -> None:
    (tmp_path / "client-0").mkdir()
    (tmp_path / "client-0" / "progress.json").write_text(json.dumps(counts))
    reporter = progress.Progress(tmp_path, 2, None)
    assert reporter.line().startswith(f"{phase}: ")
