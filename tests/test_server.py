"""The server over real loopback sockets: sequence rules, every kind of bad input, shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest
import zmq
from conftest import Peer, running_server, server_process

from msgprof.server.admission import GATE_GUARD, GATEKEEPER_MARGIN
from msgprof.store.reader import QueueReader
from msgprof.wire import protocol
from msgprof.wire.protocol import MsgType, Status


def test_sequence_rules(tmp_path, zctx):
    with running_server(tmp_path / "q") as server:
        peer = Peer(zctx, server.endpoint)
        expected = [(1, Status.OK), (1, Status.DUPLICATE), (3, Status.OUT_OF_ORDER), (2, Status.OK),
                    (3, Status.OK), (2, Status.DUPLICATE)]  # fmt: skip
        for seq, status in expected:
            peer.data(5, seq, t=seq * 10)
            ack = peer.ack()
            assert (ack.status, ack.client_id, ack.seq, ack.t_send_ns) == (status, 5, seq, seq * 10)
        peer.close()
    stats = server.final_stats
    assert stats["stored"] == 3
    assert stats["replies"] == {"OK": 3, "DUPLICATE": 2, "OUT_OF_ORDER": 1}
    assert [r.seq for r in QueueReader(tmp_path / "q").records(5, after_seq=0)] == [1, 2, 3]


def _header(**fields) -> bytes:
    values = dict(msg_type=MsgType.DATA, client_id=900, seq=1, t_send_ns=1)
    values.update(fields)
    return protocol.encode_header(**values)


ANSWERED = [
    ("unsupported_version", [_header(version=2), b"p"], Status.UNSUPPORTED_VERSION),
    ("bad_type", [_header(msg_type=7), b"p"], Status.MALFORMED),
    ("bad_type", [_header(msg_type=MsgType.ACK), b"p"], Status.MALFORMED),
    ("bad_fields", [_header(flags=3), b"p"], Status.MALFORMED),
    ("bad_client_id", [_header(client_id=0), b"p"], Status.MALFORMED),
    ("bad_client_id", [_header(client_id=2**32 - 1), b"p"], Status.MALFORMED),
    ("seq_zero", [_header(seq=0), b"p"], Status.MALFORMED),
    ("frame_count", [_header()], Status.MALFORMED),
    ("frame_count", [_header(), b"p", b"extra"], Status.MALFORMED),
    ("too_large", [_header(), b"x" * 101], Status.TOO_LARGE),
]
UNANSWERED = [
    ("short_header", [b"garbage"]),
    ("short_header", [b""]),
    ("short_header", [_header()[:27], b"p"]),
    ("long_header", [_header() + b"!", b"p"]),
    ("bad_magic", [b"ZZ" + _header()[2:], b"p"]),
    ("bad_magic", [os.urandom(28), os.urandom(5), os.urandom(3)]),
]


def test_every_bad_input_is_answered_where_possible_counted_and_never_stored(tmp_path, zctx):
    with running_server(tmp_path / "q", max_payload_bytes=100) as server:
        good = Peer(zctx, server.endpoint)
        bad = Peer(zctx, server.endpoint)
        for seq_no, (kind, frames, status) in enumerate(ANSWERED, start=1):
            bad.send(*frames)
            ack = bad.ack()
            assert ack is not None, kind
            assert ack.status == status, kind
            good.data(1, seq_no)  # the good client is served between bad messages
            assert good.ack().status == Status.OK
        for kind, frames in UNANSWERED:
            bad.send(*frames)
        assert bad.ack(timeout_ms=300) is None  # nothing comes back for unreadable headers
        good.data(1, len(ANSWERED) + 1)
        assert good.ack().status == Status.OK
        good.close()
        bad.close()
    stats = server.final_stats
    expected: dict[str, int] = {}
    for kind, *_rest in ANSWERED + UNANSWERED:
        expected[kind] = expected.get(kind, 0) + 1
    assert stats["rejected"] == expected
    assert stats["unanswered"] == len(UNANSWERED)
    assert QueueReader(tmp_path / "q").client_ids() == [1]  # rejected messages wrote nothing


def test_silent_peer_raw_tcp_garbage_and_vanishing_peer_do_not_disturb_others(tmp_path, zctx):
    with running_server(tmp_path / "q") as server:
        silent = Peer(zctx, server.endpoint)  # connects, never sends
        host, port = server.endpoint.removeprefix("tcp://").rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=5)
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(4096))  # not ZMTP at all
        vanishing = Peer(zctx, server.endpoint)
        for seq in range(1, 4):
            vanishing.data(77, seq)
            assert vanishing.ack().status == Status.OK
        vanishing.data(77, 4)
        vanishing.close()  # gone before (or while) its ack is sent
        good = Peer(zctx, server.endpoint)
        for seq in range(1, 51):
            good.data(2, seq)
            assert good.ack().status == Status.OK
        raw.close()
        silent.close()
        good.close()
    stats = server.final_stats
    records = [r.seq for r in QueueReader(tmp_path / "q").records(77, after_seq=0)]
    assert records in ([1, 2, 3], [1, 2, 3, 4])  # seq 4 may die with its sender (linger 0)
    assert stats["stored"] == 50 + len(records)
    assert stats["connections"]["peak"] >= 2  # the raw connection may be gone already


def test_server_process_ready_file_sigterm_and_stats(tmp_path, zctx):
    with server_process(tmp_path, "--ack-after", "fsync") as (proc, endpoint, stats_path):
        assert endpoint.startswith("tcp://127.0.0.1:")
        assert int((tmp_path / "ready").read_text().splitlines()[1]) == proc.pid
        peer = Peer(zctx, endpoint)
        for seq in range(1, 11):
            peer.data(3, seq, b"x" * 32)
            assert peer.ack().status == Status.OK
        peer.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    stats = json.loads(stats_path.read_text())
    assert stats["stored"] == 10 and stats["received"] == 10
    assert stats["service_ns"]["count"] == 10 and stats["service_ns"]["p50"] > 0
    assert stats["config"]["ack_after"] == "fsync"
    assert stats["rlimit_nofile"]["soft"] >= 1024
    assert stats["heap_trim"]["available"] and stats["heap_trim"]["interval_s"] == 10
    for key in ("peak", "accepted", "accept_failed"):
        assert key in stats["connections"]


def test_frames_far_over_the_limit_disconnect_and_unread_acks_are_bounded(tmp_path, zctx):
    import psutil

    from msgprof.server.server import PEER_HWM, max_frame_bytes

    with running_server(tmp_path / "q", max_payload_bytes=1024) as server:
        huge = Peer(zctx, server.endpoint)
        huge.data(1, 1, b"\0" * (max_frame_bytes(1024) + 1))  # never read into memory
        assert huge.ack(timeout_ms=500) is None
        greedy = zctx.socket(zmq.DEALER)
        greedy.setsockopt(zmq.RCVHWM, 1)
        greedy.linger = 0
        greedy.connect(server.endpoint)
        rss = psutil.Process().memory_info().rss
        for _ in range(20 * PEER_HWM):  # requests whose acks are never read
            greedy.send(protocol.encode_header(MsgType.DATA, 5, 1))
        good = Peer(zctx, server.endpoint)
        good.data(2, 1, b"x" * 1024)
        assert good.ack().status == Status.OK
        assert psutil.Process().memory_info().rss - rss < 100 << 20
        for sock in (huge, good):
            sock.close()
        greedy.close(linger=0)
    stats = server.final_stats
    assert stats["stored"] == 1
    assert stats["rejected"]["frame_count"] > PEER_HWM  # more requests than acks it may queue


def test_restart_recovers_last_seq(tmp_path, zctx):
    with running_server(tmp_path / "q") as server:
        peer = Peer(zctx, server.endpoint)
        for seq in (1, 2, 3):
            peer.data(9, seq)
            peer.ack()
        peer.close()
    with running_server(tmp_path / "q") as server:
        peer = Peer(zctx, server.endpoint)
        peer.data(9, 3)
        assert peer.ack().status == Status.DUPLICATE
        peer.data(9, 4)
        assert peer.ack().status == Status.OK
        peer.close()


@pytest.mark.parametrize("bad", [dict(store="disk"), dict(ack_after="never"), dict(backlog=0),
                                 dict(bind="127.0.0.1:5555"), dict(flush_interval_ms=0)])  # fmt: skip
def test_bad_configuration_is_a_clear_error(tmp_path, bad):
    from msgprof.config import ServerConfig

    with pytest.raises(ValueError):
        ServerConfig(data_dir=tmp_path, **bad).check()


def test_store_none_needs_no_data_dir(zctx):
    with running_server(None, store="none") as server:
        peer = Peer(zctx, server.endpoint)
        peer.data(1, 1)
        assert peer.ack().status == Status.OK
        peer.data(1, 1)
        assert peer.ack().status == Status.DUPLICATE
        peer.close()


def test_cli_help_names_units(capsys):
    from msgprof.cli import main

    for command in ("server", "client", "point"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
    text = capsys.readouterr().out
    assert "milliseconds" in text and "bytes" in text and "seconds" in text


def test_cli_bad_input_exits_2_with_one_line(capsys):
    from msgprof.cli import main

    with pytest.raises(SystemExit) as info:
        main(["point", "--clients", "0", "--messages", "1", "--out", "x"])
    assert info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["server", "--store", "file"])  # no --data-dir
    assert info.value.code == 2
    assert "--data-dir is required" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["flip_middle", "truncate_last", "delete_segment"])
def test_server_starts_on_damaged_queues_and_reports_the_cut(tmp_path, zctx, damage):
    from msgprof.store.queue import QueueStore

    root = tmp_path / "q"
    with QueueStore(root, segment_bytes=1024) as store:
        for seq in range(1, 41):
            store.append(4, seq, b"p" * 64)
            store.commit()
    segments = sorted((root / "4").glob("*.seg"))
    assert len(segments) >= 3
    if damage == "flip_middle":
        data = bytearray(segments[-1].read_bytes())
        data[len(data) // 2] ^= 0xFF
        segments[-1].write_bytes(bytes(data))
    elif damage == "truncate_last":
        with open(segments[-1], "r+b") as f:
            f.truncate(segments[-1].stat().st_size - 7)
    else:
        segments[1].unlink()
    with running_server(root) as server:
        kept = server.store.last_seq(4)
        assert 0 < kept < 40 or damage == "delete_segment"
        peer = Peer(zctx, server.endpoint)
        peer.data(4, kept + 1, b"p" * 64)
        assert peer.ack().status == Status.OK  # the client resumes right after what survived
        peer.close()
    stats = server.final_stats
    assert stats["recovery_cuts"], "recovery must report what it cut"
    seqs = [r.seq for r in QueueReader(root).records(4, after_seq=0)]
    assert seqs == sorted(seqs) and seqs[-1] == kept + 1


def test_below_its_budget_no_handshake_asks_the_gatekeeper(tmp_path, zctx):
    """A ZAP handler that listens costs every connection it is asked for a pipe to it (about
    10 KB each, benchmarks/connection_memory.py); far below the budget none is needed."""
    with running_server(tmp_path / "q") as server:
        peers = [Peer(zctx, server.endpoint) for _ in range(5)]
        try:
            for i, peer in enumerate(peers, start=1):
                peer.data(i, 1)
                assert peer.ack().status == protocol.Status.OK
        finally:
            for peer in peers:
                peer.close()
        connections = server.admission.stats()
        assert server.gatekeeper.listening is False
        margin = max(GATEKEEPER_MARGIN * (server.admission.queue + GATE_GUARD),
                     connections["max_connections"] // 4)  # fmt: skip
    assert connections["gatekeeper"] == {
        "listens_from": connections["max_connections"] - margin,
        "listening_at": None,
    }
    assert connections["admitted"] == 5 and connections["peak_admitted"] == 5


def test_service_times_keep_the_last_samples_in_bounded_memory() -> None:
    """A ring: every sample until it is full, then the last `size`; `since(mark)` the samples
    recorded after a snapshot (a master step's), in any order of bursts and sizes."""
    import random

    from msgprof.server.samples import ServiceTimes

    rng = random.Random(5)
    for size in (1, 7, 100):
        times, every = ServiceTimes(size), []
        for _ in range(300):
            burst = [rng.randrange(10**6) for _ in range(rng.randrange(0, 2 * size + 3))]
            mark = times.count
            times.extend(burst)
            every += burst
            assert times.count == len(every) and len(times.all()) == min(size, len(every))
            assert sorted(times.all()) == sorted(every[-size:])
            assert sorted(times.since(mark)) == sorted(burst[-size:])
            earlier = rng.randrange(times.count + 1)
            assert sorted(times.since(earlier)) == sorted(every[earlier:][-size:])
