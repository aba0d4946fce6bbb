"""The start barrier: a point's client processes send only once all have connected."""

from __future__ import annotations

from pathlib import Path

from msgprof.config import PointConfig
from msgprof.experiment.point import run_point
from msgprof.load.barrier import StartBarrier, make_barrier


def test_the_barrier_opens_when_every_party_has_arrived(tmp_path: Path) -> None:
    directory = make_barrier(tmp_path / "b", 2)
    first = StartBarrier(directory, timeout_ns=10**12)
    assert not first.waiting
    assert first.passed(0) is False and first.waiting
    (directory / "connected-999999").touch()  # the other process arrives
    assert first.passed(1) is True and not first.timed_out


def test_a_party_that_never_arrives_holds_the_others_only_until_the_timeout(tmp_path) -> None:
    directory = make_barrier(tmp_path / "b", 3)
    alone = StartBarrier(directory, timeout_ns=1000)
    assert alone.passed(0) is False
    assert alone.passed(999) is False
    assert alone.passed(1000) is True and alone.timed_out


def test_make_barrier_clears_an_earlier_run(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "connected-1").touch()
    directory = make_barrier(tmp_path / "b", 2)
    assert StartBarrier(directory, 10**12).passed(0) is False


def test_every_client_of_a_point_is_connected_at_once(tmp_path: Path) -> None:
    """Two processes of 1,000 clients, one message each: the one that connects first waits
    for the other, so the server sees all 2,000 connected together (without the barrier the
    first was done with some clients before the second had connected all: 2 of 3 tries peaked
    at 1,820 and 1,910 with two messages each)."""
    doc = run_point(PointConfig(clients=2000, messages=1, processes=2), tmp_path / "p")
    assert doc["verdict"] == "ok"
    assert doc["server"]["peak_connections"] == 2000
    assert [p["start_barrier_timed_out"] for p in doc["client_processes_detail"]] == [False] * 2
