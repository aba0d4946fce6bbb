"""One sweep point and the master test case end to end over loopback, and the verifier."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pytest

from msgprof.experiment.clients import split_ids
from msgprof.experiment.master import parse_steps, step_plan
from msgprof.experiment.verify import verify_queues
from msgprof.store.queue import QueueStore
from msgprof.wire.payload import payload_for


def msgprof(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "msgprof", "-q", *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.mark.parametrize("ack_after", ["write", "fsync", "buffer"])
def test_point_end_to_end(tmp_path, ack_after):
    out = tmp_path / "point"
    done = msgprof("point", "--clients", "20", "--messages", "50", "--payload-bytes", "100",
                   "--ack-after", ack_after, "--strict", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    point = json.loads((out / "point.json").read_text())
    assert point["verdict"] == "ok", point["verdict_detail"]
    assert (point["acked"], point["lost"], point["duplicates_stored"]) == (1000, 0, 0)
    assert point["verification"]["checked"] == 1000
    assert point["errors"] == {}
    assert point["throughput_msgs_per_s"] > 0
    rtt = pd.read_parquet(out / "rtt.parquet")
    assert len(rtt) == 1000 and (rtt["status"] == "OK").all() and (rtt["rtt_ns"] > 0).all()
    assert set(rtt["payload_bytes"]) == {100}
    clients = pd.read_parquet(out / "clients.parquet")
    assert sorted(clients["client_id"]) == list(range(1, 21))
    assert (clients["connect_ns"] > 0).all() and (clients["acked"] == 50).all()
    resources = pd.read_parquet(out / "resources.parquet")
    assert {"rss_bytes", "open_fds", "queue_bytes"} <= set(resources.columns)
    limits = json.loads((out / "limits.json").read_text())
    assert limits["rlimit_nofile_soft"] > 0 and limits["somaxconn"]
    server = json.loads((out / "server.json").read_text())
    assert server["stored"] == 1000 and server["config"]["ack_after"] == ack_after
    assert not (out / "queues").exists() and not (out / "work").exists()


def test_point_that_hits_the_descriptor_limit_has_that_verdict(tmp_path):
    out = tmp_path / "point"
    done = msgprof("point", "--clients", "160", "--messages", "5", "--processes", "1", "--rlimit-nofile", "200",
                   "--backlog", "16", "--max-open-files", "16", "--connect-timeout-s", "3",
                   "--timeout-s", "2", "--deadline-s", "20", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr  # a limit is a result, not a crash
    point = json.loads((out / "point.json").read_text())
    assert point["verdict"] == "descriptor_limit", point["verdict_detail"]
    assert point["server"]["refused"] > 0
    assert point["connected"] < 160
    assert point["errors"]["not_connected"] == 160 - point["connected"]  # recorded as such
    assert point["lost"] == 0 and point["duplicates_stored"] == 0
    strict = msgprof("point", "--clients", "160", "--messages", "5", "--processes", "1", "--rlimit-nofile", "200",
                     "--backlog", "16", "--max-open-files", "16", "--connect-timeout-s", "3",
                     "--timeout-s", "2", "--deadline-s", "20", "--strict", "--out", str(out))  # fmt: skip
    assert strict.returncode == 1


def test_master_ramps_up_and_down_with_growing_client_ids(tmp_path):
    out = tmp_path / "master"
    done = msgprof("master", "--steps", "3x10,6x20", "--out", str(out))
    assert done.returncode == 0, done.stderr
    master = json.loads((out / "master.json").read_text())
    assert master["verdict"] == "ok"
    assert [(s["phase"], s["clients"]) for s in master["steps"]] == [
        ("ramp_up", 3), ("ramp_up", 6), ("ramp_down", 6), ("ramp_down", 3)]  # fmt: skip
    seen: set[int] = set()
    for step in master["steps"]:
        clients = pd.read_parquet(out / step["dir"] / "clients.parquet")
        ids = set(clients["client_id"])
        assert not ids & seen  # ids keep growing across steps
        seen |= ids
        point = json.loads((out / step["dir"] / "point.json").read_text())
        assert point["phase"] == step["phase"] and point["lost"] == 0
    assert seen == set(range(1, 19))
    assert master["server"]["stored"] == 3 * 10 + 6 * 20 + 6 * 20 + 3 * 10


def _rtt(rows):
    cid, seq, status = zip(*rows)
    return pa.table({"client_id": pa.array(cid, pa.uint32()), "seq": pa.array(seq, pa.uint64()),
                     "status": pa.array(status)})  # fmt: skip


def test_verifier_finds_lost_corrupt_and_unacked(tmp_path):
    with QueueStore(tmp_path) as store:
        for seq in (1, 2, 3):
            store.append(1, seq, payload_for(1, seq, 16))
        store.append(2, 1, b"not the payload!")
        store.commit()
    rtt = _rtt([(1, 1, "OK"), (1, 2, "OK"), (1, 4, "OK"), (2, 1, "OK"), (1, 3, "TIMEOUT")])
    result = verify_queues(tmp_path, rtt, 16)
    assert result["checked"] == 4
    assert result["lost"] == 2  # client 1 seq 4 never stored; client 2 seq 1 stored corrupt
    assert result["corrupt"] == 1
    assert result["stored_unacked"] == 1  # client 1 seq 3: stored, its ack timed out
    assert result["duplicates_stored"] == 0
    assert verify_queues(tmp_path, rtt, 16, client_ids=[1])["lost"] == 1


def test_split_ids_covers_every_id_once():
    assert split_ids(1, 10, 3) == [(1, 4), (5, 7), (8, 10)]
    assert split_ids(5, 2, 4) == [(5, 5), (6, 6)]
    ranges = split_ids(1, 10_000, 7)
    assert sum(hi - lo + 1 for lo, hi in ranges) == 10_000 and ranges[-1][1] == 10_000


def test_parse_steps_and_plan():
    assert parse_steps("10x100, 50X200") == [(10, 100), (50, 200)]
    for bad in ("", "10", "x5", "0x5", "10x-1", "ax1"):
        with pytest.raises(ValueError):
            parse_steps(bad)
    plan = step_plan([(2, 5), (3, 5)])
    assert [(p["phase"], p["first_client_id"]) for p in plan] == [
        ("ramp_up", 1), ("ramp_up", 3), ("ramp_down", 6), ("ramp_down", 9)]  # fmt: skip


def test_point_with_curve_encrypts_and_authenticates(tmp_path):
    out = tmp_path / "point"
    done = msgprof("point", "--clients", "10", "--messages", "20", "--curve", "--strict", "--out", str(out))
    assert done.returncode == 0, done.stderr
    point = json.loads((out / "point.json").read_text())
    assert point["verdict"] == "ok" and point["acked"] == 200
    assert point["parameters"]["curve"] is True
    assert json.loads((out / "server.json").read_text())["curve"] is True
    assert not list(out.rglob("*.key_secret"))  # the run's secret keys do not outlive it


def test_throughput_without_a_shared_clock_adds_the_processes_own_rates():
    from msgprof.experiment.summary import throughput

    docs = [
        {"acked_per_s": 1000.0, "window_start_ns": 5, "window_end_ns": 2_000_000_005},
        {"acked_per_s": 500.0, "window_start_ns": 10**15, "window_end_ns": 10**15 + 10**9},
    ]  # the second process's clock is on another host: its window cannot be compared
    assert throughput(None, docs, shared_clock=False) == {
        "msgs_per_s": 1500.0, "window_s": 2.0, "window": "per_process"}  # fmt: skip
