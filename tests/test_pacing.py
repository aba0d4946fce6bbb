"""Paced (open-loop) clients: the schedule, the intended-time latency, and the bad inputs.

The stall test stops a real `msgprof server` process with SIGSTOP for a known time while paced
clients run against it: the corrected latency's tail covers the stall, the RTT's does not, and a
closed loop in the same situation records the stall once per client (coordinated omission).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from msgprof import cli, histlog
from msgprof.config import ClientConfig, PointConfig
from msgprof.load.client import run_clients
from msgprof.stats import quantile
from tests.conftest import server_process
from tests.test_client import EchoServer

STALL_S = 0.5


def _rtt(out: Path):
    return pq.read_table(out / "rtt.parquet").to_pandas()


def _stall_at(pid: int, after_s: float, length_s: float) -> threading.Thread:
    """Stop process `pid` `after_s` from now for `length_s`, from a thread."""

    def stall() -> None:
        time.sleep(after_s)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(length_s)
        finally:
            os.kill(pid, signal.SIGCONT)

    thread = threading.Thread(target=stall, daemon=True)
    thread.start()
    return thread


def test_paced_schedule_and_columns(tmp_path: Path) -> None:
    with EchoServer() as server:
        config = ClientConfig(server.endpoint, [1, 2, 3], messages=40, rate=100.0, warmup_s=0.05)
        summary = run_clients(config, tmp_path)
    rtt = _rtt(tmp_path)
    assert len(rtt) == 120 and (rtt.status == "OK").all()
    assert {"intended_ns", "latency_ns", "lag_ns", "warmup", "window_wait_ns"} <= set(rtt.columns)
    for _, sends in rtt.groupby("client_id"):
        gaps = np.diff(sends.sort_values("seq").intended_ns.to_numpy())
        assert np.allclose(gaps, 10_000_000, atol=1)  # uniform: every 1/rate s exactly
        first = sends.intended_ns.min()
        assert (sends.warmup == (sends.intended_ns < first + 50_000_000)).all()
    # Phases are random per client: the clients do not send in lockstep.
    assert rtt.groupby("client_id").intended_ns.min().nunique() == 3
    assert (rtt.lag_ns >= 0).all()
    assert (rtt.latency_ns == rtt.t_send_ns + rtt.rtt_ns - rtt.intended_ns).all()
    assert summary["paced"] and summary["offered_msgs_per_s"] == 300.0
    assert summary["achieved_msgs_per_s"] > 0  # this process's own, over its window
    assert summary["warmup_messages"] == int(rtt.warmup.sum()) > 0
    assert summary["measured_sends"] == 120 - summary["warmup_messages"]
    # How late the sends were depends on the host (no timing here); how they are counted not.
    assert summary["late_sends"] == summary["late_window_full"] + summary["late_generator"]
    assert summary["late_sends"] == int((rtt[~rtt.warmup].lag_ns > 1_000_000).sum())
    logged = histlog.read_log(tmp_path / "latency.hlog")
    assert {item.tag for item in logged} == {"corrected", "uncorrected"}
    assert histlog.merge(logged, "corrected").get_total_count() == summary["measured_sends"]


def test_timed_run_ends_by_itself(tmp_path: Path) -> None:
    with EchoServer() as server:
        config = ClientConfig(server.endpoint, [1, 2], duration_s=0.5, rate=40.0,
                              arrivals="poisson")  # fmt: skip
        t0 = time.monotonic()
        summary = run_clients(config, tmp_path)
        took = time.monotonic() - t0
    assert took < 5
    rtt = _rtt(tmp_path)
    assert (rtt.status == "OK").all()
    span = rtt.groupby("client_id").intended_ns.agg(lambda s: s.max() - s.min())
    assert (span < 500_000_000).all()
    assert summary["messages_planned"] == summary["sent"] == len(rtt)
    assert summary["errors"]["not_sent"] == 0


def test_window_full_sends_wait_and_keep_schedule(tmp_path: Path) -> None:
    """A server slower than the schedule: sends wait for the window, the schedule holds, and
    the lateness is the window's (the server's backpressure), not the generator's."""
    with server_process(tmp_path) as (proc, endpoint, _stats):
        _stall_at(proc.pid, 0.3, STALL_S)
        config = ClientConfig(endpoint, [1], messages=100, rate=100.0, max_in_flight=2)
        summary = run_clients(config, tmp_path / "out")
    rtt = _rtt(tmp_path / "out").sort_values("seq")
    assert (rtt.status == "OK").all()
    gaps = np.diff(rtt.intended_ns.to_numpy())
    assert np.allclose(gaps, 10_000_000, atol=1)
    late = rtt[rtt.lag_ns > 1_000_000]
    assert len(late) >= 30  # ~50 sends were due during the stall, two went out on time
    own = late.lag_ns - late.window_wait_ns
    # the stall's backlog waited behind the full window (a loaded host may add a few late sends
    # of the generator's own around it: not counted here)
    assert (own <= 1_000_000).sum() >= 30
    assert (late.window_wait_ns <= late.lag_ns).all() and (rtt.window_wait_ns >= 0).all()
    assert summary["late_window_full"] >= 30


def _stalled_run(
    tmp_path: Path, name: str, after_s: float, **load
) -> tuple[np.ndarray, np.ndarray]:
    """(corrected latency, RTT) in ns of the OK messages of 5 clients against a server that is
    stopped for STALL_S, `after_s` into the run."""
    with server_process(tmp_path / name) as (proc, endpoint, _stats):
        stall = _stall_at(proc.pid, after_s, STALL_S)
        run_clients(ClientConfig(endpoint, range(1, 6), **load), tmp_path / name / "out")
        stall.join()
    rtt = _rtt(tmp_path / name / "out")
    assert (rtt.status == "OK").all()
    ok = rtt[~rtt.warmup]
    return ok.latency_ns.to_numpy(), ok.rtt_ns.to_numpy()


@pytest.mark.slow
def test_stall_corrected_in_open_loop_not_in_closed(tmp_path: Path) -> None:
    (tmp_path / "open").mkdir()
    (tmp_path / "closed").mkdir()
    latency, rtt = _stalled_run(tmp_path, "open", 1.0, rate=100.0, duration_s=3.0)
    stall_ns = STALL_S * 1e9
    # Every message scheduled during the stall waited for it: ~50 per client of ~300, their
    # latencies spread from the whole stall down to nothing, so the tail from p90 up shows it.
    assert latency.max() >= 0.8 * stall_ns
    assert quantile(latency, 0.99) >= 0.5 * stall_ns
    assert quantile(latency, 0.9) >= 0.1 * stall_ns
    # The RTT from the actual send sees the stall once per client (the message in flight).
    assert rtt.max() >= 0.8 * stall_ns
    assert quantile(rtt, 0.99) < 0.1 * stall_ns
    assert (rtt > 0.1 * stall_ns).sum() <= 10

    # A closed loop in the same situation: its clients wait, send nothing meanwhile, and so
    # its own latency (intended = actual send) misses the stall just as the RTT did.
    # (The stall comes early: a closed loop runs through its messages as fast as it can.)
    closed_latency, closed_rtt = _stalled_run(tmp_path, "closed", 0.3, messages=4000)
    assert (closed_latency == closed_rtt).all()
    assert closed_rtt.max() >= 0.8 * stall_ns
    assert quantile(closed_rtt, 0.99) < 0.1 * stall_ns


# --- bad input -----------------------------------------------------------------------------


def _client_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    base = ["client", "--endpoint", "tcp://127.0.0.1:1", "--client-ids", "1", "--out", "/tmp/x"]
    with pytest.raises(SystemExit) as exit_:
        cli.main([*base, *argv])
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--messages", "5", "--rate", "-3"], "--rate: must be positive, got -3"),
        (["--messages", "5", "--rate", "0"], "--rate: must be positive, got 0"),
        (["--messages", "5", "--rate", "x"], "--rate: invalid float value: 'x'"),
        (["--rate", "10", "--messages", "5", "--duration-s", "2"],
         "give --messages or --duration-s, not both"),
        (["--rate", "10"], "--rate needs --messages or --duration-s"),
        (["--messages", "5", "--rate", "10", "--arrivals", "bursty"],
         "--arrivals: invalid choice: 'bursty'"),
        (["--duration-s", "2"], "--duration-s needs --rate"),
        (["--messages", "5", "--max-in-flight", "4"], "--max-in-flight needs --rate"),
        (["--messages", "5", "--arrivals", "poisson"], "--arrivals needs --rate"),
        (["--messages", "5", "--rate", "10", "--max-in-flight", "0"],
         "--max-in-flight: must be 1..1000, got 0"),
        (["--messages", "5", "--rate", "10", "--max-in-flight", "1001"],
         "--max-in-flight: must be 1..1000, got 1001"),
        (["--rate", "10", "--duration-s", "2", "--warmup-s", "2"],
         "--warmup-s 2 must be shorter than --duration-s"),
        (["--messages", "5", "--warmup-s", "-1"], "--warmup-s: must not be negative, got -1"),
        (["--messages", "0", "--rate", "10"], "--rate needs at least one message"),
        (["--messages", "5", "--rate", "10", "--resend"], "does not go with --rate"),
        ([], "--messages is required"),
    ],
)  # fmt: skip
def test_bad_pacing_input(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert message in _client_error(capsys, *argv)


def test_point_pacing_checked() -> None:
    with pytest.raises(ValueError, match="not both"):
        PointConfig(clients=2, messages=5, duration_s=3, rate=10)
    with pytest.raises(ValueError, match="needs --rate"):
        PointConfig(clients=2, duration_s=3)
    point = PointConfig(clients=4, duration_s=3, rate=2.5)
    assert point.offered_msgs_per_s == 10.0 and point.messages_per_client(None) == 7.5


def test_closed_loop_columns_agree(tmp_path: Path) -> None:
    with EchoServer() as server:
        run_clients(ClientConfig(server.endpoint, [1, 2], messages=30), tmp_path)
    rtt = _rtt(tmp_path)
    assert (rtt.intended_ns == rtt.t_send_ns).all() and (rtt.lag_ns == 0).all()
    assert (rtt.latency_ns == rtt.rtt_ns).all()
    assert not rtt.warmup.any() and (rtt.window_wait_ns == 0).all()
    summary = json.loads((tmp_path / "client.json").read_text())
    assert not summary["paced"] and summary["offered_msgs_per_s"] is None


def test_achieved_counts_measured_replies_in_the_window() -> None:
    """Replies to warm-up messages (a backlog) and replies read after the window do not count."""
    import pyarrow as pa

    from msgprof.experiment.offered import achieved

    ms = 1_000_000
    rtt = pa.table({
        "status": ["OK", "OK", "OK", "OK", "TIMEOUT"],
        "t_send_ns": [0, 1000 * ms, 1500 * ms, 2900 * ms, 1200 * ms],
        "rtt_ns": [1100 * ms, 1 * ms, 1 * ms, 200 * ms, -1],
        "warmup": [True, False, False, False, False],
    })  # fmt: skip
    docs = [{"measured_start_ns": 1000 * ms, "measured_end_ns": 3000 * ms},
            {"measured_start_ns": 900 * ms, "measured_end_ns": 3100 * ms}]  # fmt: skip
    rate, window_s = achieved(rtt, docs)
    assert window_s == 2.0
    assert rate == 1.0  # 2 of the 4 OK replies: not the warm-up one, not the one read at 3.1 s
    assert achieved(rtt, [{"measured_start_ns": None}]) == (None, 0.0)
    # Processes on other hosts share no clock: their own rates add up.
    docs[0]["achieved_msgs_per_s"], docs[1]["achieved_msgs_per_s"] = 2.5, 3.0
    assert achieved(rtt, docs, shared_clock=False) == (5.5, 2.2)


def test_overload_is_the_servers_backpressure_not_the_generator(tmp_path: Path) -> None:
    """Offered far above what one client's round trips allow: the backlog queues behind the
    full window, so the late sends are the window's, however late the first one was."""
    with server_process(tmp_path) as (_proc, endpoint, _stats):
        config = ClientConfig(endpoint, [1], messages=400, rate=20_000.0)
        summary = run_clients(config, tmp_path / "out")
    assert summary["late_sends"] > 300
    assert summary["late_window_full"] >= 0.95 * summary["late_sends"]
