"""`msgprof knee`: the bisection against a fake probe, the search's knee.json against a fake
point, its command line, its bad inputs, and one real quick search end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from msgprof.cli import _build_parser, main
from msgprof.config import PointConfig
from msgprof.experiment.bisection import STOP_RATIO, Bisection
from msgprof.experiment.knee import (
    KneeRun,
    KneeSearch,
    base_point,
    closed_loop_point,
    judge,
    knee_argv,
    point_options,
)

# --- the bisection ----------------------------------------------------------------------------


def _threshold_probe(threshold: float, calls: list[float]):
    """A probe that passes at or below `threshold` (a monotone system) and logs each call."""

    def probe(rate: float) -> bool:
        calls.append(rate)
        return rate <= threshold

    return probe


@pytest.mark.parametrize("threshold", [101.0, 250.0, 1234.0, 7777.0, 9999.0])
def test_bisection_converges_on_a_monotone_threshold_and_keeps_every_probe(threshold):
    calls: list[float] = []
    search = Bisection(100.0, 10_000.0, max_probes=30).run(_threshold_probe(threshold, calls))
    assert search.status == "found"
    assert calls[:2] == [100.0, 10_000.0]  # lo first, then hi
    assert [rate for rate, _ok in search.tried] == calls
    assert all(ok == (rate <= threshold) for rate, ok in search.tried)
    assert search.passing <= threshold < search.failing
    assert search.failing / search.passing < STOP_RATIO
    assert len(set(calls)) == len(calls)


def test_bisection_stops_after_its_probes_with_the_best_bracket_so_far():
    calls: list[float] = []
    search = Bisection(100.0, 10_000.0, max_probes=4).run(_threshold_probe(3000.0, calls))
    # lo, hi, then geometric means rounded to 3 figures: sqrt(100 * 10000) = 1000, then 3160
    assert calls == [100.0, 10_000.0, 1000.0, 3160.0]
    assert (search.status, search.passing, search.failing) == ("found", 1000.0, 3160.0)


def test_bisection_when_even_lo_fails_stops_at_once():
    calls: list[float] = []
    search = Bisection(100.0, 800.0, max_probes=6).run(_threshold_probe(50.0, calls))
    assert calls == [100.0]
    assert (search.status, search.passing, search.failing) == ("lo_fails", None, 100.0)


def test_bisection_when_hi_passes_says_the_knee_is_above_it():
    calls: list[float] = []
    search = Bisection(100.0, 800.0, max_probes=6).run(_threshold_probe(1e9, calls))
    assert calls == [100.0, 800.0]
    assert (search.status, search.passing, search.failing) == ("above_hi", 800.0, None)


def test_bisection_sees_every_state_and_refuses_a_bad_range():
    seen: list[int] = []
    Bisection(100.0, 800.0, max_probes=6).run(
        lambda rate: rate < 300, after_each=lambda state: seen.append(len(state.tried))
    )
    assert seen == list(range(1, len(seen) + 1)) and len(seen) >= 3
    for lo, hi, probes in ((800.0, 100.0, 6), (100.0, 100.0, 6), (100.0, 800.0, 1)):
        with pytest.raises(ValueError):
            Bisection(lo, hi, probes)


# --- judging a probe --------------------------------------------------------------------------


def _point_json(offered: float, p99_us: float, achieved: float | None = None,
                verdict: str = "ok", clients: int = 4) -> dict:  # fmt: skip
    """The keys of a paced point's point.json that a search reads."""
    return {
        "verdict": verdict,
        "verdict_detail": "detail of " + verdict,
        "rate_per_client": offered / clients,
        "offered_msgs_per_s": offered,
        "achieved_msgs_per_s": offered if achieved is None else achieved,
        "latency": {"corrected": {"p50_us": p99_us / 4, "p99_us": p99_us, "p999_us": p99_us * 2}},
        "measured_sends": 100,
        "lag_p99_us": 12.0,
        "throughput_msgs_per_s": offered,
    }


@pytest.mark.parametrize(
    "document, passed, words",
    [
        (_point_json(100, 4000), True, "within the SLO 5 ms"),
        (_point_json(100, 5000), True, "within the SLO"),  # at the SLO passes
        (_point_json(100, 5001), False, "corrected p99 5 ms is over the SLO 5 ms"),
        (_point_json(100, 4000, achieved=98.9), False, "under 99% of the 100.0 offered"),
        (_point_json(100, 4000, achieved=math.nan), False, "no achieved rate"),
        (_point_json(100, math.nan), False, "no measured latency"),
        (_point_json(100, 4000, verdict="generator_behind"), False, "verdict generator_behind"),
        (_point_json(100, 4000, verdict="timeouts"), False, "verdict timeouts"),
    ],
)  # fmt: skip
def test_a_probe_passes_only_when_ok_within_the_slo_and_keeping_up(document, passed, words):
    ok, why = judge(document, slo_p99_ms=5.0)
    assert ok is passed and words in why, why


# --- the search and its knee.json, against a fake point ----------------------------------------


class FakePoints:
    """run_point for a server that keeps p99 at 1 ms up to `capacity` msg/s and 80 ms above;
    it checks that knee.json lists every earlier probe before each new one runs."""

    def __init__(self, capacity: float, interrupt_at: int | None = None) -> None:
        self.capacity = capacity
        self.interrupt_at = interrupt_at
        self.configs: list[PointConfig] = []

    def __call__(self, config: PointConfig, out_dir: Path) -> dict:
        knee_json = out_dir.parent / "knee.json"
        earlier = [c for c in self.configs if c.rate is not None]
        assert len(json.loads(knee_json.read_text())["probes"]) == len(earlier)
        self.configs.append(config)
        out_dir.mkdir(parents=True)
        if config.rate is None:  # the closed-loop point
            return _point_json(self.capacity * 1.1, 900, clients=config.clients)
        offered = config.rate * config.clients
        document = _point_json(offered, 1000 if offered <= self.capacity else 80_000,
                               clients=config.clients)  # fmt: skip
        if len(self.configs) == self.interrupt_at:
            document |= {"verdict": "interrupted", "interrupted_by": "SIGTERM"}
        return document


def _search(tmp_path: Path, fake: FakePoints, **search) -> dict:
    knee = KneeSearch(**{"slo_p99_ms": 10.0, "duration_s": 3.0, "probes": 6} | search)
    base = base_point({"clients": 4, "warmup_s": 0.5}, knee)
    return KneeRun(base, knee, tmp_path / "knee", fake).run()


def test_a_search_writes_every_probe_and_the_highest_passing_rate(tmp_path):
    fake = FakePoints(capacity=1000.0)
    document = _search(tmp_path, fake, lo=100.0, hi=8000.0)
    assert document == json.loads((tmp_path / "knee" / "knee.json").read_text())
    probes = document["probes"]
    assert [p["rate_msgs_per_s"] for p in probes] == [c.rate * 4 for c in fake.configs]
    assert [p["dir"] for p in probes][:3] == ["probe-01-100", "probe-02-8000", "probe-03-894"]
    assert {c.duration_s for c in fake.configs} == {3.0}
    assert {c.warmup_s for c in fake.configs} == {0.5}
    for record in probes:
        assert record["passed"] == (record["rate_msgs_per_s"] <= 1000.0), record
        assert record["rate_per_client"] == record["rate_msgs_per_s"] / 4
        assert set(record) >= {"verdict", "p50_us", "p99_us", "p999_us", "achieved_msgs_per_s",
                               "why"}  # fmt: skip
    result = document["result"]
    assert result["status"] == "found" and len(probes) == 6
    passing = max(p["rate_msgs_per_s"] for p in probes if p["passed"])
    assert result["knee_msgs_per_s"] == passing == result["highest_passing_msgs_per_s"]
    assert result["knee_per_client"] == passing / 4
    assert result["lowest_failing_msgs_per_s"] > 1000.0 >= passing
    assert "stopped after 6 probes" in result["reason"]
    assert document["search"]["hi_from"] == "--hi"


@pytest.mark.parametrize(
    "capacity, status, words, probes",
    [(50.0, "lo_fails", "even --lo 100 msg/s fails: corrected p99 80 ms", 1),
     (1e6, "above_hi", "--hi 800 msg/s passes: the knee is above --hi", 2)],
)  # fmt: skip
def test_a_search_outside_its_range_has_no_knee_and_says_why(tmp_path, capacity, status, words,
                                                             probes):  # fmt: skip
    document = _search(tmp_path, FakePoints(capacity), lo=100.0, hi=800.0)
    result = document["result"]
    assert (result["status"], result["knee_msgs_per_s"]) == (status, None)
    assert words in result["reason"] and len(document["probes"]) == probes


def test_an_interrupted_search_keeps_what_it_found(tmp_path):
    document = _search(tmp_path, FakePoints(1000.0, interrupt_at=3), lo=100.0, hi=8000.0)
    assert document["interrupted_by"] == "SIGTERM"
    assert [p["passed"] for p in document["probes"]] == [True, False, False]
    result = json.loads((tmp_path / "knee" / "knee.json").read_text())["result"]
    assert result["status"] == "interrupted" and result["highest_passing_msgs_per_s"] == 100.0
    assert "interrupted by SIGTERM after 3 probes" in result["reason"]


def test_without_hi_a_closed_loop_point_sets_it(tmp_path):
    fake = FakePoints(capacity=1000.0)
    document = _search(tmp_path, fake, lo=100.0)
    closed = fake.configs[0]
    assert (closed.rate, closed.duration_s, closed.max_in_flight) == (None, None, 1)
    assert closed.messages == 5000  # 20,000 messages over 4 clients
    assert document["closed_loop"]["throughput_msgs_per_s"] == 1100.0
    assert (
        document["search"].items()
        >= {"hi_msgs_per_s": 1380.0, "hi_from": "closed-loop point"}.items()
    )
    assert document["probes"][1]["rate_msgs_per_s"] == 1380.0  # 1.25 x 1100, 3 figures


def test_a_closed_loop_below_lo_leaves_no_range_to_search(tmp_path):
    document = _search(tmp_path, FakePoints(capacity=50.0), lo=100.0)
    assert document["result"]["status"] == "no_hi" and document["probes"] == []
    assert "not above --lo 100: give --hi or a lower --lo" in document["result"]["reason"]


def test_a_new_search_deletes_the_probes_of_an_earlier_one(tmp_path):
    stale = tmp_path / "knee" / "probe-09-123"
    stale.mkdir(parents=True)
    (tmp_path / "knee" / "notes").mkdir()
    _search(tmp_path, FakePoints(1e6), lo=100.0, hi=800.0)
    assert not stale.exists() and (tmp_path / "knee" / "notes").is_dir()


def test_closed_loop_point_sends_at_least_a_few_messages_each():
    knee = KneeSearch(slo_p99_ms=1.0, duration_s=3.0)
    base = base_point({"clients": 10_000, "max_in_flight": 4, "arrivals": "poisson"}, knee)
    assert closed_loop_point(base).messages == 10


# --- the command line -------------------------------------------------------------------------


def test_knee_argv_gives_the_search_and_every_probe_setting_back():
    knee = KneeSearch(slo_p99_ms=7.5, lo=200.0, hi=900.0, duration_s=4.0, probes=5)
    point = base_point({"clients": 12, "warmup_s": 1.0, "ack_after": "fsync", "curve": True,
                        "max_in_flight": 3, "processes": 2}, knee)  # fmt: skip
    argv = knee_argv(point, knee, Path("out"), strict=True)
    args = _build_parser().parse_args(argv)
    assert KneeSearch(**{k: getattr(args, k) for k in vars(knee)}) == knee
    again = base_point({name: getattr(args, name) for name, _d, _h in point_options()}, knee)
    assert again == point and (args.out, args.strict) == (Path("out"), True)
    assert "--rate" not in argv and "--messages" not in argv


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lo", "800", "--hi", "100"], "msgprof knee: error: --lo 800 must be below --hi 100"),
        (["--lo", "100", "--hi", "100"], "--lo 100 must be below --hi 100"),
        (["--slo-p99-ms", "-1"], "argument --slo-p99-ms: must be positive, got -1.0"),
        (["--clients", "0"], "argument --clients: must be at least 1, got 0"),
        (["--probes", "1"], "argument --probes: must be at least 2"),
        (["--duration-s", "1", "--warmup-s", "1"], "--warmup-s 1 must be shorter than"),
    ],
)
def test_bad_input_is_one_clear_error_exit_2(tmp_path, capsys, extra, message):
    argv = ["knee", "--clients", "4", "--slo-p99-ms", "5", "--out", str(tmp_path / "k"), *extra]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "k").exists()


def test_a_real_quick_search_end_to_end(tmp_path):
    """Two real probes (or one, when --lo already fails on a busy host)."""
    out = tmp_path / "knee"
    argv = [sys.executable, "-m", "msgprof", "-q", "knee", "--clients", "4", "--slo-p99-ms",
            "50", "--lo", "100", "--hi", "800", "--duration-s", "1.5", "--warmup-s", "0.3",
            "--probes", "2", "--processes", "1", "--out", str(out)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads((out / "knee.json").read_text())
    assert set(document) >= {"search", "parameters", "probes", "result"}
    assert (
        document["search"].items()
        >= {
            "clients": 4,
            "slo_p99_ms": 50.0,
            "lo_msgs_per_s": 100.0,
            "hi_msgs_per_s": 800.0,
            "duration_s": 1.5,
        }.items()
    )
    probes = document["probes"]
    assert [p["rate_msgs_per_s"] for p in probes] == [100.0, 800.0][: len(probes)]
    for record in probes:
        point = json.loads((out / record["dir"] / "point.json").read_text())
        assert point["offered_msgs_per_s"] == pytest.approx(record["rate_msgs_per_s"])
        assert (point["verdict"], point["duration_s"]) == (record["verdict"], 1.5)
        assert isinstance(record["passed"], bool) and record["why"]
    result = document["result"]
    expected = {"lo_fails": 1, "above_hi": 2, "found": 2}
    assert expected[result["status"]] == len(probes) == result["probes_run"]
    assert (result["knee_msgs_per_s"] is None) == (result["status"] != "found")
    assert sorted(p.name for p in out.iterdir()) == ["knee.json"] + [p["dir"] for p in probes]


@pytest.mark.parametrize(
    "result, strict, code",
    [
        ({"result": {"highest_passing_msgs_per_s": None}}, False, 0),
        ({"result": {"highest_passing_msgs_per_s": None}}, True, 1),
        ({"result": {"highest_passing_msgs_per_s": 800.0}}, True, 0),  # above --hi
        ({"result": {"highest_passing_msgs_per_s": 100.0}, "interrupted_by": "SIGTERM"}, True,
         143),
    ],
)  # fmt: skip
def test_exit_code_says_no_passing_rate_under_strict_and_an_interruption(
    tmp_path, monkeypatch, result, strict, code
):
    from msgprof.experiment import knee

    monkeypatch.setattr(knee, "run_knee", lambda base, search, out: result)
    argv = ["knee", "--clients", "4", "--slo-p99-ms", "5", "--hi", "800", "--out", str(tmp_path)]
    assert main(argv + (["--strict"] if strict else [])) == code
