"""The kernel's listen-queue counters: read from /proc/net/netstat, and seen to move when a real
listen queue overflows (a listener on 127.0.0.1 that never accepts, backlog 1)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest

from msgprof.experiment import netstat
from msgprof.report.analysis import KERNEL_TCP_COLUMNS
from msgprof.stats import MIN_SLOPE_FDS, rss_per_descriptor

SAMPLE = (
    "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPReqQFullDoCookies TCPReqQFullDrop "
    "TCPSynRetrans\nTcpExt: 0 7 9 1 2 30\nIpExt: InNoRoutes InTruncatedPkts\nIpExt: 0 0\n"
)


def test_counters_are_read_by_name(tmp_path: Path) -> None:
    path = tmp_path / "netstat"
    path.write_text(SAMPLE)
    found = netstat.read_counters(path)
    assert found == {"listen_overflows": 7, "listen_drops": 9, "syn_cookies_sent": 1,
                     "syn_queue_drops": 2, "syn_retransmits": 30}  # fmt: skip
    later = dict(found, listen_drops=12)
    assert netstat.deltas(found, later)["listen_drops"] == 3
    assert netstat.deltas({}, later)["listen_drops"] is None
    assert netstat.read_counters(tmp_path / "none") == {}


def test_points_csv_names_every_counter() -> None:
    assert KERNEL_TCP_COLUMNS == list(netstat.COUNTERS.values())


def test_a_full_listen_queue_moves_the_counters() -> None:
    before = netstat.read_counters()
    if not before:
        pytest.skip("this kernel shows no TcpExt counters")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # never accepted: the second completed handshake has nowhere to go
    clients = []
    try:
        for _ in range(8):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(listener.getsockname())
            clients.append(c)
        deadline = time.monotonic() + 10
        moved: dict[str, int | None] = {}
        while time.monotonic() < deadline:
            moved = netstat.deltas(before, netstat.read_counters())
            if (moved["listen_overflows"] or 0) > 0 and (moved["syn_retransmits"] or 0) > 0:
                break
            time.sleep(0.2)
    finally:
        for c in clients:
            c.close()
        listener.close()
    assert moved["listen_overflows"] > 0 and moved["listen_drops"] >= moved["listen_overflows"]
    assert moved["syn_retransmits"] > 0  # the dropped ones are sent again after 1 s


def test_rss_per_descriptor_is_the_slope_while_connections_arrive() -> None:
    fds = [10, 110, 210, 310, 310, 310]
    rss = [1000 + 40_000 * (f - 10) for f in fds[:4]] + [20_000_000, 25_000_000]  # then messages
    assert rss_per_descriptor(fds, rss) == pytest.approx(40_000)
    assert rss_per_descriptor([10, 20, 30], [1, 2, 3]) is None  # fewer than MIN_SLOPE_FDS
    assert rss_per_descriptor([], []) is None
    assert MIN_SLOPE_FDS == 100
    noisy = np.array([0, 100, 200, 300]) * 25_000.0 + [0, 5_000, -5_000, 0]
    assert rss_per_descriptor([0, 100, 200, 300], list(noisy)) == pytest.approx(25_000, rel=0.01)
