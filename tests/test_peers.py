"""Dead, silent and duplicate peers, and CURVE: who the server talks to and for how long."""

from __future__ import annotations

import logging
import socket
import struct
import time

import pytest
from conftest import Peer, running_server

from msgprof.wire import security
from msgprof.wire.protocol import Status


def test_two_connections_with_one_client_id_share_its_sequence(tmp_path, zctx):
    """The rule: a client id is one queue; sequence numbers arbitrate between connections."""
    with running_server(tmp_path / "q") as server:
        a = Peer(zctx, server.endpoint)
        b = Peer(zctx, server.endpoint)
        for seq in (1, 2):
            a.data(7, seq)
            assert a.ack().status == Status.OK
        b.data(7, 3)
        assert b.ack().status == Status.OK  # b continues the sequence a started
        a.data(7, 3)
        assert a.ack().status == Status.DUPLICATE  # stored once, whoever sent it
        b.data(7, 5)
        assert b.ack().status == Status.OUT_OF_ORDER
        a.close()
        b.close()
    stats = server.final_stats
    assert stats["stored"] == 3
    assert stats["client_id_takeovers"] == 3  # a -> b -> a -> b


def _server_host_port(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes the connection (EOF or reset) within `seconds`."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if sock.recv(4096) == b"":
                return True
        except socket.timeout:
            continue
        except ConnectionResetError:
            return True
    return False


def test_connection_that_never_handshakes_is_dropped(tmp_path):
    with running_server(tmp_path / "q", handshake_timeout_ms=300) as server:
        raw = socket.create_connection(_server_host_port(server.endpoint), timeout=5)
        try:
            assert _closed_within(raw, 5.0)
        finally:
            raw.close()


def _zmtp_null_handshake(sock: socket.socket) -> None:
    """Speak just enough ZMTP 3.0 (NULL mechanism) to become a DEALER peer, then go silent."""
    greeting = b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + b"\0" * 32
    sock.sendall(greeting)
    received = b""
    while len(received) < 64:
        chunk = sock.recv(64 - len(received))
        assert chunk, "server closed during the greeting"
        received += chunk
    prop = b"\x0bSocket-Type" + struct.pack("!I", 6) + b"DEALER"
    body = b"\x05READY" + prop
    sock.sendall(bytes([0x04, len(body)]) + body)


def test_dead_peer_is_dropped_after_missed_heartbeats(tmp_path):
    with running_server(tmp_path / "q", heartbeat_ms=200) as server:
        raw = socket.create_connection(_server_host_port(server.endpoint), timeout=5)
        try:
            _zmtp_null_handshake(raw)
            # The peer reads but never answers PING: after 3 intervals the server hangs up.
            assert _closed_within(raw, 5.0)
        finally:
            raw.close()
    assert server.final_stats["connections"]["disconnected"] >= 1


def test_idle_but_alive_peer_stays_connected(tmp_path, zctx):
    with running_server(tmp_path / "q", heartbeat_ms=100) as server:
        peer = Peer(zctx, server.endpoint)
        peer.data(1, 1)
        assert peer.ack().status == Status.OK
        time.sleep(1.0)  # ten heartbeat intervals: libzmq answers the PINGs
        peer.data(1, 2)
        assert peer.ack().status == Status.OK
        peer.close()
    assert server.final_stats["connections"]["accepted"] == 1  # never dropped and reconnected


@pytest.fixture
def keys(tmp_path):
    allow = tmp_path / "allow"
    server_pub, server_secret = security.keygen(tmp_path / "server", "server")
    client_pub, client_secret = security.keygen(tmp_path / "clients", "good")
    _, stranger_secret = security.keygen(tmp_path / "strangers", "stranger")
    allow.mkdir()
    (allow / "good.key").write_bytes(client_pub.read_bytes())
    return {"server_pub": server_pub, "server_secret": server_secret, "allow": allow,
            "good": client_secret, "stranger": stranger_secret}  # fmt: skip


def test_curve_admits_allowed_keys_and_refuses_unknown_ones(tmp_path, zctx, keys):
    with running_server(tmp_path / "q", curve_secret=keys["server_secret"], curve_allow=keys["allow"]) as server:
        good = Peer(zctx, server.endpoint, curve=(keys["good"], keys["server_pub"]))
        good.data(1, 1)
        assert good.ack().status == Status.OK

        stranger = Peer(zctx, server.endpoint, curve=(keys["stranger"], keys["server_pub"]))
        stranger.data(2, 1)
        assert stranger.ack(timeout_ms=1000) is None  # refused at the handshake

        plain = Peer(zctx, server.endpoint)  # no CURVE at all
        plain.data(3, 1)
        assert plain.ack(timeout_ms=500) is None
        for peer in (good, stranger, plain):
            peer.close()
    stats = server.final_stats
    assert stats["curve"] is True and stats["stored"] == 1
    assert stats["connections"]["handshake_failed"] >= 1


def test_keygen_command_and_bad_key_files(tmp_path, capsys):
    from msgprof.cli import main

    assert main(["keygen", "--out", str(tmp_path), "--name", "srv"]) == 0
    assert (tmp_path / "srv.key").exists() and (tmp_path / "srv.key_secret").stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError, match="no secret key"):
        security.load_secret(tmp_path / "srv.key")
    with pytest.raises(ValueError, match="plain file name"):
        security.keygen(tmp_path, "../escape")


@pytest.mark.parametrize(
    "endpoint, loopback",
    [("tcp://127.0.0.1:0", True), ("tcp://127.9.9.9:5", True), ("tcp://[::1]:0", True),
     ("tcp://localhost:0", True), ("ipc:///tmp/x", True), ("tcp://0.0.0.0:0", False),
     ("tcp://*:0", False), ("tcp://10.1.2.3:0", False), ("tcp://eth0:0", False)],
)  # fmt: skip
def test_is_loopback(endpoint, loopback):
    assert security.is_loopback(endpoint) is loopback


def test_non_loopback_bind_without_curve_warns(tmp_path, caplog):
    from msgprof.config import ServerConfig
    from msgprof.server.server import Server

    with caplog.at_level(logging.WARNING, logger="msgprof.server"):
        # Binds every interface for an instant and sends nothing: no traffic leaves the host.
        server = Server(ServerConfig(data_dir=tmp_path / "q", bind="tcp://0.0.0.0:0"))
        server.stop()
        server.run()
    assert "without CURVE" in caplog.text
