"""Source addresses: clients of a loopback server connect from many addresses of 127.0.0.0/8.

One source address has ~28,000 ephemeral ports towards one server port; a 50,000-client point
needs more than one. The clients' addresses are asked of the server's side of each connection
(libzmq's Peer-Address of every message received), not of the client's own record.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zmq

from msgprof.config import ClientConfig
from msgprof.load.client import run_clients
from msgprof.load.sockets import client_sources, connect_endpoint, loopback_destination
from msgprof.wire.protocol import ECHO, ECHO_OFFSET


@pytest.fixture
def echo_recording_peers() -> Iterator[tuple[str, dict[int, set[str]]]]:
    """A ROUTER in a thread that sends each request back unchanged and records, per client id,
    the addresses its requests came from."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind("tcp://127.0.0.1:0")
    peers: dict[int, set[str]] = {}
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if sock.poll(50):
                identity, header, payload = sock.recv_multipart(copy=False)
                client_id = ECHO.unpack_from(header.bytes, ECHO_OFFSET)[0]
                peers.setdefault(client_id, set()).add(header.get("Peer-Address"))
                sock.send_multipart([identity, header, payload])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockopt_string(zmq.LAST_ENDPOINT), peers
    stop.set()
    thread.join(5)
    sock.close(linger=0)
    ctx.term()


def test_clients_connect_from_the_addresses_they_record(echo_recording_peers, tmp_path: Path):
    endpoint, peers = echo_recording_peers
    config = ClientConfig(endpoint, range(1, 8), 3, echo=True, clients_per_source=3, timeout_s=5)
    run_clients(config, tmp_path)
    table = pq.read_table(tmp_path / "clients.parquet").to_pydict()
    assert table["acked"] == [3] * 7
    recorded = dict(zip(table["client_id"], table["source_address"]))
    expected = {1: "127.0.0.2", 2: "127.0.0.2", 3: "127.0.0.2", 4: "127.0.0.3", 5: "127.0.0.3",
                6: "127.0.0.3", 7: "127.0.0.4"}  # fmt: skip
    assert recorded == expected
    assert peers == {cid: {address} for cid, address in expected.items()}


def test_no_spread_leaves_the_source_to_the_kernel(echo_recording_peers, tmp_path: Path):
    endpoint, peers = echo_recording_peers
    config = ClientConfig(endpoint, range(1, 3), 2, echo=True, clients_per_source=0, timeout_s=5)
    run_clients(config, tmp_path)
    assert pq.read_table(tmp_path / "clients.parquet")["source_address"].to_pylist() == [None] * 2
    assert peers == {1: {"127.0.0.1"}, 2: {"127.0.0.1"}}


def test_only_a_loopback_server_is_reached_from_spread_addresses() -> None:
    assert loopback_destination("tcp://127.0.0.1:5555")
    assert loopback_destination("tcp://127.3.2.1:5555")
    assert not loopback_destination("tcp://10.0.0.1:5555")
    assert not loopback_destination("tcp://localhost:5555")
    assert not loopback_destination("ipc:///tmp/x")
    assert client_sources("tcp://10.0.0.1:1", [1, 2], 1) == [None, None]
    assert client_sources("tcp://127.0.0.1:1", [1, 2, 10_001], 10_000) == [
        "127.0.0.2", "127.0.0.2", "127.0.0.3"]  # fmt: skip
    assert connect_endpoint("tcp://127.0.0.1:9", "127.0.0.5") == "tcp://127.0.0.5:0;127.0.0.1:9"
    with pytest.raises(ValueError, match="outside 127.0.0.0/8"):
        client_sources("tcp://127.0.0.1:1", [2**31 - 1], 1)


def test_a_connect_rate_spaces_the_connects(echo_recording_peers, tmp_path: Path):
    """10 clients at 20 connects a second: connect() calls 50 ms apart, 0.45 s from first to
    last (a storm would make them all within a few ms)."""
    endpoint, _peers = echo_recording_peers
    config = ClientConfig(endpoint, range(1, 11), 1, echo=True, connect_rate=20.0, timeout_s=5)
    run_clients(config, tmp_path)
    table = pq.read_table(tmp_path / "clients.parquet").to_pydict()
    assert table["acked"] == [1] * 10
    starts = sorted(table["t_connect_ns"])
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 49_000_000  # never two within the gap
    assert 0.45e9 <= starts[-1] - starts[0] < 1.0e9
