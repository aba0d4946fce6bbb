"""Descriptor exhaustion: more clients than the server has descriptors for.

libzmq's accept loop spins at 100% CPU once accept() fails with EMFILE, and clients then hang
silently. The server keeps a budget instead: past it, handshakes are refused, so it stays idle,
says which limit it hit, and the clients it could not take are recorded as not connected.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pandas as pd
import psutil
from conftest import server_process

from msgprof.experiment.verify import verify_queues

CLIENTS = 200


def test_exhausted_descriptors_refuse_without_spinning_and_lose_nothing(tmp_path):
    limit = ["--rlimit-nofile", "200", "--backlog", "16", "--max-open-files", "16"]
    with server_process(tmp_path, *limit) as (proc, endpoint, stats_path):
        server = psutil.Process(proc.pid)
        cpu_before = sum(server.cpu_times()[:2])
        t0 = time.monotonic()
        client = subprocess.run(
            [sys.executable, "-m", "msgprof", "-q", "client", "--endpoint", endpoint,
             "--client-ids", f"1-{CLIENTS}", "--messages", "5", "--start", "all_connected",
             "--connect-timeout-s", "4", "--timeout-s", "3", "--out", str(tmp_path / "clients")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        wall = time.monotonic() - t0
        cpu = sum(server.cpu_times()[:2]) - cpu_before
        assert client.returncode == 0, client.stderr
    # A spinning accept loop would burn a whole core for the whole wait.
    assert cpu / wall < 0.5, f"server used {cpu:.2f} s CPU in {wall:.2f} s"

    stats = json.loads(stats_path.read_text())
    connections = stats["connections"]
    assert connections["refused"] > 0 and not connections["accept_failed"]
    assert "descriptor limit" in (tmp_path / "server.log").read_text()
    summary = json.loads((tmp_path / "clients" / "client.json").read_text())
    # The budget held: never an EMFILE. Connections may pass the budget by what the server's
    # count lags behind libzmq's accepts, which the descriptors kept aside (one accept burst of
    # 16 and 64 reserved) absorb.
    assert connections["peak"] <= connections["max_connections"] + 16 + 64
    assert summary["connected"] < CLIENTS
    assert summary["errors"]["not_connected"] == CLIENTS - summary["connected"]
    assert summary["wall_s"] < 4 + 3 + 10  # recorded within the timeouts, no hang

    rtt = pd.read_parquet(tmp_path / "clients" / "rtt.parquet")
    import pyarrow as pa

    check = verify_queues(tmp_path / "queues", pa.Table.from_pandas(rtt), 64)
    assert check["lost"] == 0 and check["duplicates_stored"] == 0
    assert check["checked"] == summary["acked"] > 0
