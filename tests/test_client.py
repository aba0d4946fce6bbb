"""Load generator against a tiny in-test ROUTER that answers the protocol in several ways."""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Self

import numpy as np
import pyarrow.parquet as pq
import pytest
import zmq

import msgprof.load.client
import msgprof.load.native
import msgprof.load.solo
from msgprof.client_ids import format_client_ids, parse_client_ids
from msgprof.config import ClientConfig
from msgprof.load.capacity import CapacityError, plan_capacity
from msgprof.load.client import progress_line, run_clients
from msgprof.wire.payload import payload_for
from msgprof.wire.protocol import HEADER, MAX_CLIENT_ID, Status, encode_ack

RTT_COLUMNS = [
    "client_id", "seq", "payload_bytes", "rtt_ns", "status", "t_send_ns", "intended_ns",
    "latency_ns", "lag_ns", "warmup", "window_wait_ns",
]  # fmt: skip
CLIENT_COLUMNS = [
    "client_id", "connected", "connect_ns", "first_ack_ns", "sent", "acked", "duplicates",
    "errors", "timeouts", "rtt_median_ns", "rtt_p90_ns", "rtt_p99_ns", "rtt_max_ns",
    "t_connect_ns", "t_end_ns", "resends", "source_address",
]  # fmt: skip


class EchoServer:
    """A ROUTER in a thread: `mode` says how it answers each DATA request.

    ok: OK ack; wrong_seq: ack for seq + 1; silent: no answer; duplicate: DUPLICATE ack;
    busy: BUSY ack; garbage: a frame that is not a header; drop_first: no answer to the first
    copy of a (client, seq), OK to later ones; double: two OK acks for each request;
    t_send_off: OK echoing another t_send_ns; two_frames: an OK ack with a second frame.
    Requests with a seq below `from_seq` get an OK ack whatever the mode. With `echo`, each
    request is sent back (ok) or, in the other modes, see `_echo`.
    """

    def __init__(self, mode: str = "ok", from_seq: int = 1, echo: bool = False) -> None:
        self.mode = mode
        self.from_seq = from_seq
        self.echo = echo
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.BACKLOG, 1024)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.received: list[tuple[int, int, bytes]] = []
        self._seen: set[tuple[int, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close(linger=0)
        self.ctx.term()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            while True:
                try:
                    identity, header, payload = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                fields = HEADER.unpack(header)
                client_id, seq, t_send = fields[6], fields[7], fields[8]
                self.received.append((client_id, seq, payload))
                if self.echo:
                    self._echo(identity, payload, fields)
                    continue
                if seq < self.from_seq:
                    self.sock.send_multipart([identity, encode_ack(Status.OK, *fields[6:])])
                    continue
                if self.mode == "silent":
                    continue
                if self.mode == "drop_first" and (client_id, seq) not in self._seen:
                    self._seen.add((client_id, seq))
                    continue
                if self.mode == "garbage":
                    self.sock.send_multipart([identity, b"not a header"])
                    continue
                status, ack_seq = Status.OK, seq
                if self.mode == "wrong_seq":
                    ack_seq = seq + 1
                elif self.mode == "duplicate":
                    status = Status.DUPLICATE
                elif self.mode == "busy":
                    status = Status.BUSY
                elif self.mode == "t_send_off":
                    t_send += 1
                ack = encode_ack(status, client_id, ack_seq, t_send)
                extra = [b"more"] if self.mode == "two_frames" else []
                self.sock.send_multipart([identity, ack, *extra])
                if self.mode == "double":
                    self.sock.send_multipart([identity, ack])

    def _echo(self, identity: bytes, payload: bytes, fields: tuple) -> None:
        """ok: the request back; echo_tail: and a third frame; one_frame: its header alone;
        t_send_off, wrong_seq: a header changed so; ack: an OK ack instead; silent: nothing."""
        mode = self.mode if fields[7] >= self.from_seq else "ok"
        t_send, seq = fields[8] + (mode == "t_send_off"), fields[7] + (mode == "wrong_seq")
        frames = [HEADER.pack(*fields[:7], seq, t_send), payload]
        if mode == "echo_tail":
            frames.append(b"tail")
        elif mode == "one_frame":
            frames.pop()
        elif mode == "ack":
            frames = [encode_ack(Status.OK, *fields[6:])]
        if mode != "silent":
            self.sock.send_multipart([identity, *frames])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read(out: Path) -> tuple:
    rtt = pq.read_table(out / "rtt.parquet").to_pandas()
    clients = pq.read_table(out / "clients.parquet").to_pandas()
    summary = json.loads((out / "client.json").read_text())
    return rtt, clients, summary


def test_echo_outputs(tmp_path: Path) -> None:
    lines: list[dict[str, int]] = []
    with EchoServer() as server:
        config = ClientConfig(server.endpoint, [3, 1, 2], messages=20, payload_bytes=100)
        result = run_clients(config, tmp_path, progress=lines.append)
    rtt, clients, summary = _read(tmp_path)
    assert result == summary
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "client.json", "clients.parquet", "latency.hlog", "rtt.parquet"
    ]  # fmt: skip
    schema = pq.read_schema(tmp_path / "rtt.parquet")
    assert schema.names == RTT_COLUMNS
    assert [str(schema.field(c).type) for c in RTT_COLUMNS] == [
        "uint32", "uint64", "uint32", "int64", "string", "int64", "int64", "int64", "int64",
        "bool", "int64",
    ]  # fmt: skip
    assert list(clients.columns) == CLIENT_COLUMNS
    assert len(rtt) == 60
    assert (rtt.rtt_ns > 0).all() and (rtt.status == "OK").all()
    assert (rtt.payload_bytes == 100).all()
    for cid in (1, 2, 3):
        assert rtt[rtt.client_id == cid].seq.tolist() == list(range(1, 21))
    # The server got exactly the deterministic payloads, in order per client.
    assert sorted(server.received) == sorted(
        (c, s, payload_for(c, s, 100)) for c in (1, 2, 3) for s in range(1, 21)
    )
    assert clients.client_id.tolist() == [3, 1, 2]
    assert clients.connected.all() and (clients.sent == 20).all() and (clients.acked == 20).all()
    assert (clients.errors == 0).all()
    assert (clients.connect_ns > 0).all()
    assert (clients.first_ack_ns >= clients.connect_ns).all()
    # Per-client quantiles follow the project's one rule (inverted_cdf): a measured sample each.
    for _, row in clients.iterrows():
        samples = rtt[rtt.client_id == row.client_id].rtt_ns.to_numpy()
        for column, q in (("rtt_median_ns", 0.5), ("rtt_p90_ns", 0.9), ("rtt_p99_ns", 0.99)):
            assert row[column] == np.quantile(samples, q, method="inverted_cdf")
            assert row[column] in samples
        assert row.rtt_max_ns == samples.max()
    assert summary["clients"] == 3 and summary["connected"] == 3
    assert summary["messages_planned"] == summary["sent"] == summary["acked"] == 60
    assert set(summary["errors"].values()) == {0}
    assert summary["window_start_ns"] < summary["window_end_ns"]
    assert summary["client_ids"] == "3,1-2"
    assert summary["max_sockets"] >= 1024
    assert not summary["deadline_hit"]
    assert lines and lines[-1] == {"connected": 3, "clients": 3, "acked": 60, "planned": 60,
                                   "errors": 0}  # fmt: skip
    assert progress_line(lines[-1]) == "connected 3/3 acked 60/60 errors 0"


def test_silent_server_times_out(tmp_path: Path) -> None:
    with EchoServer("silent") as server:
        config = ClientConfig(server.endpoint, [1, 2], messages=5, timeout_s=0.3)
        start = time.monotonic()
        summary = run_clients(config, tmp_path)
        elapsed = time.monotonic() - start
    assert elapsed < 3
    rtt, clients, _ = _read(tmp_path)
    # A timed-out client stops: one TIMEOUT row each, the rest not sent.
    assert rtt.status.tolist() == ["TIMEOUT", "TIMEOUT"] and (rtt.rtt_ns == -1).all()
    assert clients.connected.all() and (clients.timeouts == 1).all()
    assert (clients.first_ack_ns == -1).all() and (clients.rtt_median_ns == -1).all()
    assert summary["errors"]["TIMEOUT"] == 2 and summary["errors"]["not_sent"] == 8


def test_no_server_not_connected(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    config = ClientConfig(endpoint, range(1, 11), messages=3, connect_timeout_s=0.5,
                          connect_window=4)  # fmt: skip
    start = time.monotonic()
    summary = run_clients(config, tmp_path)
    assert time.monotonic() - start < 3
    rtt, clients, _ = _read(tmp_path)
    assert len(rtt) == 0
    assert not clients.connected.any() and (clients.connect_ns == -1).all()
    assert summary["connected"] == 0 and summary["sent"] == 0
    assert summary["errors"]["not_connected"] == 10 and summary["errors"]["not_sent"] == 30


def test_mismatch_counted(tmp_path: Path) -> None:
    with EchoServer("wrong_seq") as server:
        summary = run_clients(ClientConfig(server.endpoint, [7, 8], messages=4), tmp_path)
    rtt, clients, _ = _read(tmp_path)
    assert rtt.status.tolist() == ["MISMATCH", "MISMATCH"] and (rtt.rtt_ns > 0).all()
    assert (clients.errors == 1).all() and (clients.acked == 0).all()
    assert summary["errors"]["MISMATCH"] == 2 and summary["errors"]["not_sent"] == 6


def test_duplicates_go_on(tmp_path: Path) -> None:
    with EchoServer("duplicate") as server:
        summary = run_clients(ClientConfig(server.endpoint, [1], messages=5), tmp_path)
    rtt, clients, _ = _read(tmp_path)
    assert (rtt.status == "DUPLICATE").all() and rtt.seq.tolist() == [1, 2, 3, 4, 5]
    assert clients.duplicates.tolist() == [5] and clients.errors.tolist() == [0]
    assert clients.rtt_median_ns.iloc[0] > 0
    assert summary["acked"] == 0 and summary["duplicates"] == 5 and summary["sent"] == 5


def test_an_ok_ack_is_judged_by_its_fields_not_only_by_its_bytes(tmp_path: Path) -> None:
    """An OK reply that differs from the expected bytes only in the echoed t_send_ns is still
    OK (the client checks client_id, seq and status, as the full decoding always did)."""
    with EchoServer("t_send_off") as server:
        summary = run_clients(ClientConfig(server.endpoint, [1, 2], messages=5), tmp_path)
    rtt, _, _ = _read(tmp_path)
    assert (rtt.status == "OK").all() and len(rtt) == 10 and summary["acked"] == 10


@pytest.mark.parametrize(
    ("mode", "status"),
    [("busy", "BUSY"), ("garbage", "INVALID_ACK"), ("two_frames", "INVALID_ACK")],
)
def test_error_reply_stops_client(tmp_path: Path, mode: str, status: str) -> None:
    with EchoServer(mode) as server:
        summary = run_clients(ClientConfig(server.endpoint, [1], messages=5), tmp_path)
    rtt, _, _ = _read(tmp_path)
    assert rtt.status.tolist() == [status]
    assert summary["errors"][status] == 1 and summary["errors"]["not_sent"] == 4


def test_deadline_bounds_run(tmp_path: Path) -> None:
    with EchoServer("silent") as server:
        config = ClientConfig(server.endpoint, [1, 2, 3], messages=5, timeout_s=30,
                              deadline_s=0.4)  # fmt: skip
        start = time.monotonic()
        summary = run_clients(config, tmp_path)
        assert time.monotonic() - start < 3
    assert summary["deadline_hit"]
    assert summary["errors"]["TIMEOUT"] == 3 and summary["errors"]["not_sent"] == 12


def test_one_client_waits_in_recv_and_keeps_every_rule(tmp_path, monkeypatch) -> None:
    """A process of one client takes its replies in blocking recvs (msgprof.load.solo): the same
    rows as the event loop, and a silent server still meets the message timeout and the
    deadline."""
    calls: list[int] = []
    receive = msgprof.load.solo.receive
    monkeypatch.setattr(msgprof.load.solo, "receive", lambda *a: calls.append(1) or receive(*a))
    with EchoServer() as server:
        summary = run_clients(ClientConfig(server.endpoint, [4], messages=200), tmp_path / "ok")
    rtt, _, _ = _read(tmp_path / "ok")
    assert calls and summary["acked"] == 200
    assert rtt.seq.tolist() == list(range(1, 201)) and (rtt.status == "OK").all()
    assert (rtt.rtt_ns > 0).all()
    with EchoServer("silent") as server:
        start = time.monotonic()
        timed_out = run_clients(
            ClientConfig(server.endpoint, [4], messages=5, timeout_s=0.3), tmp_path / "timeout"
        )
        cut = run_clients(
            ClientConfig(server.endpoint, [5], messages=5, timeout_s=30, deadline_s=0.4),
            tmp_path / "deadline",
        )
        assert time.monotonic() - start < 5
    assert timed_out["errors"]["TIMEOUT"] == 1 and not timed_out["deadline_hit"]
    assert cut["errors"]["TIMEOUT"] == 1 and cut["deadline_hit"]


@pytest.mark.parametrize(
    "mode", ["ok", "two_frames", "double", "duplicate", "busy", "wrong_seq", "t_send_off",
             "garbage", "silent"],
)  # fmt: skip
def test_one_client_rows_as_the_event_loop(tmp_path: Path, monkeypatch, mode: str) -> None:
    """A process of one client waits in a blocking recv (msgprof.load.solo), compiled where the
    host builds it and in Python otherwise: whatever reply ends a run of OK acks, its rows,
    statuses, counts and the payloads the server got are those of the event loop."""
    _solo_paths_agree(tmp_path, monkeypatch, mode, echo=False)


@pytest.mark.parametrize(
    "mode", ["ok", "echo_tail", "one_frame", "t_send_off", "wrong_seq", "ack", "silent"]
)
def test_one_client_echoes_as_the_event_loop(tmp_path: Path, monkeypatch, mode: str) -> None:
    """The same in echo mode (`msgprof calibrate`): an echo the compiled loop does not take as
    it stands (a third frame, another t_send) goes to the loop, which judges it as ever."""
    _solo_paths_agree(tmp_path, monkeypatch, mode, echo=True)


def _solo_paths_agree(tmp_path: Path, monkeypatch, mode: str, echo: bool) -> None:
    outs = {}
    calls: list[int] = []
    receive = msgprof.load.solo.receive
    monkeypatch.setattr(msgprof.load.solo, "receive", lambda *a: calls.append(1) or receive(*a))
    for path in ("native", "python", "event_loop"):
        if path == "python":
            monkeypatch.setattr(msgprof.load.native, "load", lambda: None)
        if path == "event_loop":
            assert calls  # the first runs took the blocking recv
            monkeypatch.setattr(msgprof.load.solo, "awaiting", lambda loop: False)
        with EchoServer(mode, from_seq=40, echo=echo) as server:
            config = ClientConfig(server.endpoint, [7], messages=60, timeout_s=0.3, deadline_s=5,
                                  echo=echo)  # fmt: skip
            summary = run_clients(config, tmp_path / path)
        assert summary["solo_loop"] == ("python" if path == "event_loop" else path)  # chosen
        assert not summary["deadline_hit"]  # a message's own timeout ends a silent run
        rtt, _, _ = _read(tmp_path / path)
        outs[path] = (rtt[["seq", "status"]].values.tolist(), summary["acked"], summary["errors"])
        assert (rtt.rtt_ns[rtt.status == "OK"] > 0).all()
        assert (np.diff(rtt.t_send_ns) > 0).all()
        assert all(p == payload_for(7, seq, config.payload_bytes) for _, seq, p in server.received)
    assert outs["native"] == outs["python"] == outs["event_loop"]
    seqs, acked, _ = outs["native"]
    assert seqs[:39] == [[s, "OK"] for s in range(1, 40)] and acked >= 39


@pytest.mark.parametrize("payload_bytes", [0, 13, 4096])
def test_native_loop_payloads(tmp_path: Path, payload_bytes: int) -> None:
    """The compiled loop sends msgprof.wire.payload's bytes for every seq and size."""
    assert msgprof.load.native.load() is not None, msgprof.load.native.why_not()
    with EchoServer() as server:
        config = ClientConfig(server.endpoint, [9], messages=30, payload_bytes=payload_bytes)
        summary = run_clients(config, tmp_path)
    assert summary["solo_loop"] == "native" and summary["acked"] == 30
    assert [(c, s) for c, s, _ in server.received] == [(9, s) for s in range(1, 31)]
    assert all(p == payload_for(9, s, payload_bytes) for _, s, p in server.received)


def test_native_loop_built_once_per_source(tmp_path: Path, monkeypatch) -> None:
    """Built into the cache on first use, other sources' builds removed once a day old; with no
    compiler the one-client loop runs in Python and says why."""
    monkeypatch.setenv("MSGPROF_NATIVE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(msgprof.load.native, "_loaded", {})
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("solo-0123456789abcdef.so", "solo-fedcba9876543210.so"):
        (cache / name).write_bytes(b"another source's build")
    old = time.time() - msgprof.load.native.STALE_S - 60
    os.utime(cache / "solo-0123456789abcdef.so", (old, old))
    assert msgprof.load.native.load() is not None, msgprof.load.native.why_not()
    built = msgprof.load.native.library_path(msgprof.load.native.libzmq_path())
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [built.name, "solo-fedcba9876543210.so"]
    )
    assert built.stat().st_mode & 0o777 == 0o755  # a shared cache serves every user
    monkeypatch.setenv("MSGPROF_NATIVE_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(msgprof.load.native, "_loaded", {})
    assert msgprof.load.native.load() is None
    assert "no C compiler" in msgprof.load.native.why_not()
    with EchoServer() as server:
        summary = run_clients(ClientConfig(server.endpoint, [4], messages=20), tmp_path / "out")
    assert summary["solo_loop"] == "python" and summary["acked"] == 20


def test_connect_only(tmp_path: Path) -> None:
    with EchoServer() as server:
        summary = run_clients(ClientConfig(server.endpoint, [1, 2], messages=0), tmp_path)
    _, clients, _ = _read(tmp_path)
    assert clients.connected.all() and (clients.connect_ns > 0).all()
    assert summary["sent"] == 0 and summary["errors"]["not_sent"] == 0


def test_poller_loop(tmp_path: Path) -> None:
    with EchoServer() as server:
        config = ClientConfig(server.endpoint, range(1, 21), messages=10, event_loop="poller")
        summary = run_clients(config, tmp_path)
    assert summary["event_loop"] == "poller" and summary["acked"] == 200


def test_many_clients(tmp_path: Path) -> None:
    with EchoServer() as server:
        config = ClientConfig(server.endpoint, parse_client_ids("1-500"), messages=5,
                              connect_window=64)  # fmt: skip
        summary = run_clients(config, tmp_path)
    rtt, clients, _ = _read(tmp_path)
    assert summary["connected"] == 500 and summary["acked"] == 2500 == len(rtt)
    assert (rtt.groupby("client_id").seq.max() == 5).all()
    assert (clients.sent == 5).all() and (clients.connect_ns > 0).all()


def test_start_all_connected(tmp_path: Path) -> None:
    with EchoServer() as server:
        config = ClientConfig(server.endpoint, range(1, 51), messages=5, start="all_connected",
                              connect_window=8)  # fmt: skip
        summary = run_clients(config, tmp_path)
    rtt, clients, _ = _read(tmp_path)
    assert summary["acked"] == 250 and summary["start"] == "all_connected"
    # No client sent before the last handshake was seen.
    last_handshake = (clients.t_connect_ns + clients.connect_ns).max()
    assert summary["released_ns"] >= last_handshake
    assert rtt.t_send_ns.min() >= summary["released_ns"]
    assert summary["all_active_start_ns"] is not None


def test_parse_client_ids_good() -> None:
    assert parse_client_ids("5") == [5]
    assert parse_client_ids("1-100") == list(range(1, 101))
    assert parse_client_ids("1,2,7-9") == [1, 2, 7, 8, 9]
    assert parse_client_ids(" 9 , 3 - 4 ") == [9, 3, 4]
    assert parse_client_ids(f"{MAX_CLIENT_ID}") == [MAX_CLIENT_ID]
    for text in ("1-100", "1,2,7-9", "9,3-4,100"):
        assert parse_client_ids(format_client_ids(parse_client_ids(text))) == parse_client_ids(text)


@pytest.mark.parametrize(
    "text",
    ["", " ", "0", "0-5", "5-3", str(MAX_CLIENT_ID + 1), "1-2147483648", "1,1", "1-5,3",
     "a", "1-", "-5", "1--3", "1;2", "1,,2", "+3", "1.5", "1-2000000"],
)  # fmt: skip
def test_parse_client_ids_bad(text: str) -> None:
    with pytest.raises(ValueError):
        parse_client_ids(text)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unique"):
        ClientConfig("tcp://127.0.0.1:1", [1, 1], messages=1)
    with pytest.raises(ValueError, match="client ids"):
        ClientConfig("tcp://127.0.0.1:1", [0], messages=1)
    with pytest.raises(ValueError, match="timeout_s"):
        ClientConfig("tcp://127.0.0.1:1", [1], messages=1, timeout_s=0)
    with pytest.raises(ValueError, match="start"):
        ClientConfig("tcp://127.0.0.1:1", [1], messages=1, start="later")


def test_plan_capacity() -> None:
    plan = plan_capacity(5000, 256, None, open_fds=10, rlimit=(20000, 20000), socket_limit=65535)
    assert plan.connect_window == 256 and plan.max_sockets >= 5000 + 2 * 256
    # Too few descriptors for the window: it shrinks; too few for the clients: a clear error.
    plan = plan_capacity(9900, 256, None, open_fds=10, rlimit=(20000, 20000), socket_limit=65535)
    assert 1 <= plan.connect_window < 256 and plan.fds_needed <= 20000
    with pytest.raises(CapacityError, match="RLIMIT_NOFILE is 20000"):
        plan_capacity(10000, 256, None, open_fds=10, rlimit=(20000, 20000), socket_limit=65535)
    with pytest.raises(CapacityError, match="max_sockets"):
        plan_capacity(2000, 256, 1023, open_fds=10, rlimit=(20000, 20000), socket_limit=65535)
    with pytest.raises(CapacityError, match="SOCKET_LIMIT"):
        plan_capacity(100, 8, 70000, open_fds=10, rlimit=(1 << 20, 1 << 20), socket_limit=65535)


def _refusing_context(refusals: int) -> type[zmq.Context]:
    """A Context whose first `refusals` DEALER sockets fail with EMFILE (a full socket table)."""

    class Refusing(zmq.Context):
        left = refusals

        def socket(self, socket_type: int, **kwargs: object) -> zmq.Socket:
            if socket_type == zmq.DEALER and Refusing.left > 0:
                Refusing.left -= 1
                raise zmq.ZMQError(errno.EMFILE)
            return super().socket(socket_type, **kwargs)

    return Refusing


def test_socket_refusal_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(msgprof.load.client.zmq, "Context", _refusing_context(3))
    with EchoServer() as server:
        summary = run_clients(ClientConfig(server.endpoint, [1, 2], messages=3), tmp_path)
    assert summary["socket_retries"] == 3 and summary["acked"] == 6


def test_socket_refusal_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(msgprof.load.client.zmq, "Context", _refusing_context(10**9))
    with EchoServer() as server:
        config = ClientConfig(server.endpoint, [1, 2], messages=3, connect_timeout_s=0.3)
        start = time.monotonic()
        summary = run_clients(config, tmp_path)
        assert time.monotonic() - start < 3
    assert summary["errors"]["not_connected"] == 2 and summary["sent"] == 0


def test_error_during_run_does_not_hang(tmp_path: Path) -> None:
    # connect() fails for a malformed endpoint after sockets exist: they must all be closed.
    config = ClientConfig("tcp://127.0.0.1:not-a-port", [1, 2], messages=1)
    with pytest.raises(zmq.ZMQError):
        run_clients(config, tmp_path)
    assert not (tmp_path / "client.json").exists()


# ---------------------------------------------------------------------------------------------
# Resend mode


def test_resend_on_timeout(tmp_path: Path) -> None:
    # Every first copy is dropped: the default client stops at its first timeout, a resending
    # one sends each message twice and gets all of them acknowledged.
    with EchoServer("drop_first") as server:
        config = ClientConfig(server.endpoint, [1, 2], messages=4, timeout_s=0.1, resend=True)
        summary = run_clients(config, tmp_path)
        received = list(server.received)
    rtt, clients, _ = _read(tmp_path)
    assert summary["acked"] == 8 and set(summary["errors"].values()) == {0}
    assert (rtt.status == "OK").all() and (rtt.rtt_ns >= 100_000_000).all()
    assert clients.resends.tolist() == [4, 4] and summary["resends"] == 8
    assert summary["resend"] and summary["reconnects"] == 0
    # Each resend carried the same seq and payload as the first copy.
    assert sorted(received) == sorted(
        (c, s, payload_for(c, s, 64)) for c in (1, 2) for s in range(1, 5) for _ in range(2)
    )


def test_default_mode_does_not_resend(tmp_path: Path) -> None:
    with EchoServer("drop_first") as server:
        config = ClientConfig(server.endpoint, [1], messages=4, timeout_s=0.1)
        summary = run_clients(config, tmp_path)
    _, clients, _ = _read(tmp_path)
    assert summary["errors"]["TIMEOUT"] == 1 and summary["resends"] == 0
    assert clients.resends.tolist() == [0] and not summary["resend"]


def test_stale_replies_skipped_in_resend_mode(tmp_path: Path) -> None:
    # A second answer to a settled seq is a mismatch by default, a stale reply when resending.
    with EchoServer("double") as server:
        summary = run_clients(ClientConfig(server.endpoint, [1], messages=5), tmp_path / "a")
        assert summary["errors"]["MISMATCH"] == 1
        config = ClientConfig(server.endpoint, [2], messages=5, resend=True)
        summary = run_clients(config, tmp_path / "b")
    assert summary["acked"] == 5 and set(summary["errors"].values()) == {0}
    assert summary["stale_replies"] >= 4 and summary["resends"] == 0


def test_resend_deadline_bounds_run(tmp_path: Path) -> None:
    with EchoServer("silent") as server:
        config = ClientConfig(server.endpoint, [1, 2], messages=3, timeout_s=0.1,
                              deadline_s=0.55, resend=True)  # fmt: skip
        start = time.monotonic()
        summary = run_clients(config, tmp_path)
        assert time.monotonic() - start < 3
    assert summary["deadline_hit"] and summary["errors"]["TIMEOUT"] == 2
    assert summary["errors"]["not_sent"] == 4 and summary["resends"] >= 6


class RestartingServer:
    """A ROUTER in a thread that answers OK/DUPLICATE like the real server, goes away without
    answering after `crash_after` requests (closing its socket), and binds the same port again
    after `down_s`."""

    def __init__(self, crash_after: int, down_s: float) -> None:
        self.ctx = zmq.Context()
        self.port = _free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.crash_after = crash_after
        self.down_s = down_s
        self.last: dict[int, int] = {}
        self.replies: list[str] = []
        self.lives = 0
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._bound.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.ctx.destroy(linger=0)

    def _bind(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        for _ in range(50):  # the port may be held for a moment after the close
            try:
                sock.bind(self.endpoint)
                break
            except zmq.ZMQError:
                time.sleep(0.05)
        self.lives += 1
        self._bound.set()
        return sock

    def _serve(self) -> None:
        sock = self._bind()
        handled = 0
        while not self._stop.is_set():
            if not sock.poll(50):
                continue
            identity, header, _payload = sock.recv_multipart()
            fields = HEADER.unpack(header)
            client_id, seq, t_send = fields[6], fields[7], fields[8]
            handled += 1
            if handled == self.crash_after:  # stored, but the ack dies with the server
                self.last[client_id] = max(self.last.get(client_id, 0), seq)
                sock.close(linger=0)
                time.sleep(self.down_s)
                sock = self._bind()
                continue
            last = self.last.get(client_id, 0)
            status = Status.OK if seq == last + 1 else Status.DUPLICATE
            if status == Status.OK:
                self.last[client_id] = seq
            self.replies.append(status.name)
            sock.send_multipart([identity, encode_ack(status, client_id, seq, t_send)])
        sock.close(linger=0)


@pytest.mark.parametrize("event_loop", ["epoll", "poller"])
def test_resend_after_reconnect(tmp_path: Path, event_loop: str) -> None:
    # The server goes away holding one stored but unacknowledged message; the client's DEALER
    # reconnects to the same port by itself, the message is resent and answered DUPLICATE.
    with RestartingServer(crash_after=7, down_s=0.3) as server:
        config = ClientConfig(server.endpoint, [1], messages=10, timeout_s=5, resend=True,
                              event_loop=event_loop)  # fmt: skip
        start = time.monotonic()
        summary = run_clients(config, tmp_path)
        elapsed = time.monotonic() - start
        lives = server.lives
    rtt, clients, _ = _read(tmp_path)
    assert lives == 2
    assert elapsed < 4  # resent on reconnect, well before the 5 s reply timeout
    assert rtt.seq.tolist() == list(range(1, 11))
    assert rtt.status.tolist() == ["OK"] * 6 + ["DUPLICATE"] + ["OK"] * 3
    assert rtt.rtt_ns.iloc[6] >= 300_000_000  # from the first send, outage included
    assert summary["disconnects"] == 1 and summary["reconnects"] == 1
    assert summary["resends"] == 1 == clients.resends.iloc[0]
    assert set(summary["errors"].values()) == {0}


def test_plan_capacity_keep_monitors() -> None:
    # Resend mode keeps each client's monitor: 4 descriptors and 3 sockets a client.
    plain = plan_capacity(1000, 32, None, open_fds=10, rlimit=(20000, 20000), socket_limit=65535)
    kept = plan_capacity(1000, 32, None, open_fds=10, rlimit=(20000, 20000), socket_limit=65535,
                         keep_monitors=True)  # fmt: skip
    assert kept.fds_needed == plain.fds_needed - 2 * 32 + 2 * 1000
    assert kept.max_sockets >= 3 * 1000 and kept.connect_window == 32
    with pytest.raises(CapacityError, match="RLIMIT_NOFILE is 4000"):
        plan_capacity(1000, 32, None, open_fds=10, rlimit=(4000, 4000), socket_limit=65535,
                      keep_monitors=True)  # fmt: skip
    with pytest.raises(CapacityError, match="3 per client"):
        plan_capacity(1000, 32, 2000, open_fds=10, rlimit=(20000, 20000), socket_limit=65535,
                      keep_monitors=True)  # fmt: skip


def test_clients_go_on_with_an_earlier_processs_sequences(tmp_path: Path) -> None:
    """--first-seq: a client process that reconnects the same ids goes on where the last one
    stopped (closed loop, then paced); a gap is the server's OUT_OF_ORDER."""
    from conftest import running_server

    from msgprof.store.reader import QueueReader

    with running_server(tmp_path / "q") as server:
        endpoint = server.endpoint
        for k, (first, extra) in enumerate([(1, {}), (6, {}), (11, {"rate": 50.0})]):
            config = ClientConfig(endpoint, [1, 2], 5, first_seq=first, **extra)
            summary = run_clients(config, tmp_path / f"c{k}")
            assert summary["acked"] == 10 and not any(summary["errors"].values()), summary
            rtt = pq.read_table(tmp_path / f"c{k}" / "rtt.parquet").to_pandas()
            assert sorted(set(rtt["seq"])) == list(range(first, first + 5))
        gap = run_clients(ClientConfig(endpoint, [1], 5, first_seq=20), tmp_path / "gap")
        assert gap["errors"].get("OUT_OF_ORDER") == 1
    reader = QueueReader(tmp_path / "q")
    for cid in (1, 2):
        records = list(reader.records(cid, after_seq=0))
        assert [r.seq for r in records] == list(range(1, 16))
        assert all(r.payload == payload_for(cid, r.seq, 64) for r in records)
