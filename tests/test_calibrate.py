"""`msgprof calibrate` and `msgprof client --echo`: against libzmq's proxy every echo is OK, a
reply that is not the echo of the message in flight is an error, calibration.json is whole, and
the report quotes the floor when the run has one and is unchanged when it has none."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zmq
from pypdf import PdfReader
from test_analysis import build_run

from msgprof.config import ClientConfig
from msgprof.experiment.lifecycle import ChildProcesses, wait_ready
from msgprof.load.client import run_clients
from msgprof.report import plots
from msgprof.wire.protocol import HEADER, encode_ack

FLOOR_LABEL = "load generator's own floor (74 µs, msgprof calibrate)"
SENTENCE = "RTTs below 74 µs are the load generator's own cost on this host"


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[str]:
    """The calibration's echo (zmq.proxy in its own process); its endpoint."""
    procs = ChildProcesses()
    try:
        argv = [sys.executable, "-m", "msgprof.experiment.calibrate", str(tmp_path / "ready")]
        proc = procs.start("proxy", argv, tmp_path / "proxy.log")
        endpoint = wait_ready(tmp_path / "ready", proc, 30)
        assert endpoint is not None, (tmp_path / "proxy.log").read_text()
        yield endpoint
        assert procs.stop(proc, 5) is not None  # SIGTERM ends it
    finally:
        procs.kill_all()


@pytest.fixture
def replier() -> Iterator[Callable[[Callable[[list[bytes]], list[bytes]]], str]]:
    """A ROUTER in a thread that answers each request [header, payload] with answer(frames)."""
    ctx = zmq.Context()
    stop = threading.Event()
    threads = []

    def start(answer: Callable[[list[bytes]], list[bytes]]) -> str:
        sock = ctx.socket(zmq.ROUTER)
        sock.bind("tcp://127.0.0.1:0")

        def serve() -> None:
            while not stop.is_set():
                if sock.poll(50):
                    identity, *frames = sock.recv_multipart()
                    sock.send_multipart([identity, *answer(frames)])
            sock.close(linger=0)

        threads.append(threading.Thread(target=serve, daemon=True))
        threads[-1].start()
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    yield start
    stop.set()
    for thread in threads:
        thread.join(5)
    ctx.term()


def _statuses(endpoint: str, out: Path, clients: int = 1, messages: int = 5) -> list[str]:
    config = ClientConfig(
        endpoint, range(1, clients + 1), messages, echo=True, timeout_s=5, deadline_s=30
    )
    run_clients(config, out)
    return pq.read_table(out / "rtt.parquet", columns=["status"])["status"].to_pylist()


def test_echo_mode_against_the_proxy_acks_every_message(proxy: str, tmp_path: Path) -> None:
    statuses = _statuses(proxy, tmp_path / "c", clients=3, messages=50)
    assert statuses == ["OK"] * 150
    assert json.loads((tmp_path / "c" / "client.json").read_text())["acked"] == 150


def test_an_ack_is_no_echo(replier, tmp_path: Path) -> None:
    def ack(frames: list[bytes]) -> list[bytes]:
        fields = HEADER.unpack(frames[0])
        return [encode_ack(0, fields[6], fields[7], fields[8])]

    assert _statuses(replier(ack), tmp_path / "c") == ["INVALID_ACK"]


def test_an_echo_of_another_seq_is_a_mismatch(replier, tmp_path: Path) -> None:
    def wrong_seq(frames: list[bytes]) -> list[bytes]:
        fields = list(HEADER.unpack(frames[0]))
        fields[7] += 1
        return [HEADER.pack(*fields), frames[1]]

    assert _statuses(replier(wrong_seq), tmp_path / "c") == ["MISMATCH"]


def test_echo_is_for_the_closed_loop() -> None:
    with pytest.raises(ValueError, match="--echo"):
        ClientConfig("tcp://127.0.0.1:1", range(1, 2), 10, rate=10.0, echo=True)


def test_calibrate_writes_a_whole_calibration_json(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "msgprof", "-q", "calibrate", "--out", str(run), "--messages", "20"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads((run / "calibration.json").read_text())
    one, hundred = doc["cases"]
    assert (one["clients"], one["messages"]) == (1, 20)
    assert (hundred["clients"], hundred["messages_per_client"], hundred["messages"]) == (
        100,
        2,
        200,
    )
    for case in doc["cases"]:
        assert 0 < case["p50_us"] <= case["p90_us"] <= case["p99_us"]
        assert case["msgs_per_s"] > 0 and case["client_cpu"] > 0
    assert doc["floor_rtt_p50_us"] == one["p50_us"]
    assert (one["solo_loop"], hundred["solo_loop"]) == ("native", None), done.stderr  # as a point
    assert doc["host"] and doc["versions"]["pyzmq"] and doc["started"]
    assert sorted(p.name for p in run.iterdir()) == ["calibration.json"]  # work files removed


def test_calibrate_refuses_too_few_messages(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "msgprof", "calibrate", "--out", str(tmp_path), "--messages", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "at least 10" in done.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    """The fixture run's report text per page without and with a calibration.json."""
    base = build_run(tmp_path_factory.mktemp("calibrated") / "fixture_run")
    texts = []
    for calibrated in (False, True):
        run = tmp_path_factory.mktemp("report") / "run"
        shutil.copytree(base, run)
        if calibrated:
            (run / "calibration.json").write_text(json.dumps({"floor_rtt_p50_us": 73.6}))
        pdf = plots.write_report(run)
        texts.append([page.extract_text() for page in PdfReader(pdf).pages])
    return texts[0], texts[1]


def test_report_states_the_floor_with_a_calibration(runs) -> None:
    plain, calibrated = runs
    assert len(plain) == len(calibrated)
    assert FLOOR_LABEL in calibrated[1]  # client id vs median RTT
    assert FLOOR_LABEL in calibrated[2]  # RTT quantiles vs clients
    assert SENTENCE in calibrated[-1]  # provenance
    assert FLOOR_LABEL not in calibrated[0]  # connect times are no RTT


def test_report_without_a_calibration_says_nothing_of_it(runs) -> None:
    plain, _calibrated = runs
    assert not any("own floor" in text or "own cost" in text for text in plain)
