"""`msgprof capacity`: the growing search on small numbers, against a fake point and for real.

The search doubles from --lo until a probe fails, then bisects; a count past this host's limits
fails before any process starts and names the limit. The real search runs points against a
server whose descriptor budget admits 140 connections (`--rlimit-nofile 300`, as in
test_overload), so its first failure is the descriptor limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_knee import _threshold_probe  # passes at or below a threshold, logs each call

from msgprof.config import PointConfig
from msgprof.experiment import budget
from msgprof.experiment.bisection import Bisection, whole_steps
from msgprof.experiment.capacity import CapacityRun, CapacitySearch


@pytest.mark.parametrize("threshold", [150, 999, 1000, 5000, 17_000])
def test_growing_then_bisecting_brackets_the_threshold(threshold: int) -> None:
    calls: list[float] = []
    probe = _threshold_probe(threshold, calls)
    search = Bisection(1000, None, 30, rounding=whole_steps(1)).run(probe)
    if threshold < 1000:
        assert search.status == "lo_fails" and calls == [1000]
        return
    first_fail = next(i for i, c in enumerate(calls) if c > threshold)
    assert calls[: first_fail + 1] == [1000 * 2**k for k in range(first_fail + 1)]
    assert search.status == "found"
    assert search.passing <= threshold < search.failing
    assert search.failing / search.passing < 1.05
    assert all(float(c).is_integer() for c in calls)


def test_growing_stops_at_the_limit_and_says_so() -> None:
    calls: list[float] = []
    search = Bisection(1000, None, 30, rounding=whole_steps(1), limit=5000)
    search.run(_threshold_probe(10**9, calls))
    assert calls == [1000, 2000, 4000, 5000] and search.status == "above_hi"
    calls.clear()
    search = Bisection(1000, None, 3, rounding=whole_steps(1)).run(_threshold_probe(10**9, calls))
    assert calls == [1000, 2000, 4000] and search.status == "no_failure"


def test_a_step_rounds_the_counts_and_ends_the_search() -> None:
    calls: list[float] = []
    search = Bisection(500, None, 30, rounding=whole_steps(500), min_gap=500)
    search.run(_threshold_probe(2600, calls))
    assert all(c % 500 == 0 for c in calls)
    assert (search.passing, search.failing) == (2500, 3000)


def _fake_point(fail_from: int):
    """A point that is ok below `fail_from` clients and times out from there."""

    def run_point(config: PointConfig, out: Path) -> dict[str, Any]:
        out.mkdir(parents=True)
        ok = config.clients < fail_from
        return {
            "verdict": "ok" if ok else "timeouts",
            "verdict_detail": None if ok else "acks took too long",
            "connected": config.clients,
            "acked": config.clients * 10 if ok else config.clients,
            "lost": 0,
            "errors": {} if ok else {"TIMEOUT": 7},
            "clients": config.clients,
            "server": {
                "refused": 0,
                "peak_connections": config.clients,
                "resources": {"peak_rss_bytes": 40_000 * config.clients},
            },
            "throughput_msgs_per_s": 1000.0,
        }

    return run_point


def test_capacity_json_names_the_largest_ok_count_and_the_limit(tmp_path: Path) -> None:
    base = PointConfig(clients=100, messages=10, rate=1.0)
    search = CapacitySearch(lo=100, probes=20)
    doc = CapacityRun(base, search, tmp_path, _fake_point(1234)).run()
    assert doc == json.loads((tmp_path / "capacity.json").read_text())
    result = doc["result"]
    assert result["status"] == "found" and result["limit"] == "timeouts"
    assert result["largest_ok_clients"] < 1234 <= result["first_failing_clients"]
    assert result["first_failing_clients"] / result["largest_ok_clients"] < 1.05
    assert result["first_failing_errors"] == {"TIMEOUT": 7}
    assert [p["clients"] for p in doc["probes"]][:5] == [100, 200, 400, 800, 1600]


def test_a_count_past_the_hosts_limits_fails_without_running(tmp_path: Path) -> None:
    base = PointConfig(clients=1, messages=10)
    most = budget.most_clients(base)
    ran: list[int] = []

    def run_point(config: PointConfig, out: Path) -> dict[str, Any]:
        ran.append(config.clients)
        return _fake_point(10**9)(config, out)

    search = CapacitySearch(lo=most + 1, probes=3)
    doc = CapacityRun(base, search, tmp_path, run_point).run()
    assert ran == []
    assert doc["probes"][0]["verdict"] == "limit" and doc["probes"][0]["limit"] == "descriptors"
    assert doc["result"]["status"] == "lo_fails"
    assert (
        "RLIMIT_NOFILE" in doc["probes"][0]["verdict_detail"]
        or "nr_open" in (doc["probes"][0]["verdict_detail"])
    )


def test_a_real_search_finds_the_descriptor_limit(tmp_path: Path) -> None:
    out = tmp_path / "search"
    done = subprocess.run(
        [sys.executable, "-m", "msgprof", "-q", "capacity", "--lo", "100", "--probes", "3",
         "--rlimit-nofile", "300", "--max-open-files", "32", "--backlog", "64",
         "--rate", "2", "--duration-s", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads((out / "capacity.json").read_text())
    probes = doc["probes"]
    assert [p["clients"] for p in probes][:2] == [100, 200]
    assert probes[0]["verdict"] in ("ok", "generator_behind")  # held: all acked, none lost
    assert probes[0]["acked"] >= 500 and probes[0]["lost"] == 0
    assert probes[0]["peak_connections"] == 100 and probes[0]["passed"]
    assert probes[1]["verdict"] == "descriptor_limit" and probes[1]["limit"] == "descriptors"
    assert probes[1]["refused"] > 0 and probes[1]["kernel_tcp"] is not None
    assert all((out / p["dir"] / "point.json").is_file() for p in probes)
    result = doc["result"]
    assert result["limit"] == "descriptors"
    assert result["largest_ok_clients"] >= 100 and result["first_failing_clients"] <= 200
