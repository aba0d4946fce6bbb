"""Fuzzing the wire, the fast variant of the fuzzer tool in tests/tools/fuzz_wire.

The fuzzer's oracle (its own reading of docs/protocol.md) must agree with msgprof.protocol; a
live server must count and answer whatever frames hypothesis draws as the oracle says and keep
serving a legitimate client; raw byte streams must reach the server exactly as the fuzzer's
ZMTP/1.0 decoding predicts; and a small fuzzing run (5,000+ malformed messages, raw
connections, legitimate clients before, during and after) must pass every check of the full one.
The tool itself must start as documented, build its fuzzers' command lines from its own parser,
and hold nothing pytest would collect as tests.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import Peer, running_server
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from msgprof.wire import protocol, security
from msgprof.wire.protocol import Rejected, Status, Unanswerable

TOOLS = Path(__file__).resolve().parent / "tools"
sys.path.insert(0, str(TOOLS))  # the tool is a package of tests/tools, not of the test suite
from fuzz_wire import checks, contract, options, raw, run, streams

MAX_PAYLOAD = 100
LEGIT_ID = 1


def _pack(fields: tuple) -> bytes:
    return contract.HEADER.pack(*fields)


_headers = st.tuples(
    st.sampled_from([b"MP", b"MP", b"MP", b"PM", b"\0\0"]),
    st.sampled_from([1, 1, 1, 0, 2, 255]),
    st.sampled_from([1, 1, 1, 0, 2, 3, 255]),
    st.sampled_from([0, 0, 0, 1, 255]),
    st.sampled_from([0, 0, 0, 1, 128]),
    st.sampled_from([0, 0, 0, 1, 65535]),
    st.sampled_from([2, 3, 2**31 - 1, 0, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1),
    st.sampled_from([0, 1, 2, 3, 2**64 - 1]) | st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
).map(_pack)
#: A first frame: a header as drawn, cut or lengthened, or bytes of any kind.
_first_frames = st.one_of(
    _headers,
    st.tuples(_headers, st.integers(-28, 8)).map(
        lambda t: t[0][: t[1]] if t[1] < 0 else t[0] + b"!" * t[1]
    ),
    st.binary(max_size=40),
)
FRAMES = st.tuples(
    _first_frames,
    st.lists(st.binary(max_size=MAX_PAYLOAD + 1) | st.just(b"x" * (MAX_PAYLOAD + 50)), max_size=3),
).map(lambda t: [t[0], *t[1]])


@settings(max_examples=1000, deadline=None)
@given(frames=FRAMES)
def test_fuzzer_oracle_agrees_with_the_protocol_module(frames):
    try:
        protocol.validate_request(frames, MAX_PAYLOAD)
        kind, status = "valid", None
    except Unanswerable as err:
        kind, status = err.kind, None
    except Rejected as err:
        kind, status = err.kind, err.status
    assert contract.classify(frames, MAX_PAYLOAD)[0] == kind
    assert contract.ANSWERED.get(kind) == status


def test_server_counts_and_answers_hypothesis_frames_and_keeps_serving(tmp_path, zctx):
    model = contract.SequenceModel()
    tally = contract.Tally()
    legit_seq = 0
    probe = _pack((b"MP", 1, 7, 0, 0, 0, 5, 1, 0))  # bad_type: always answered, closes each example
    with running_server(tmp_path / "q", max_payload_bytes=MAX_PAYLOAD) as server:
        fuzz = Peer(zctx, server.endpoint)
        legit = Peer(zctx, server.endpoint)

        @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(frames=FRAMES)
        def check(frames):
            nonlocal legit_seq
            kind, echo = contract.classify(frames, MAX_PAYLOAD)
            assume(kind != "valid" or echo[0] != LEGIT_ID)
            status = contract.ANSWERED.get(kind)
            if kind == "valid":
                kind, status = model.decide(echo[0], echo[1], connection=0)
            fuzz.send(*frames)
            fuzz.send(probe)
            tally.add(kind, status)
            tally.add("bad_type", contract.MALFORMED)
            replies = [
                fuzz.sock.recv_multipart()
                for _ in range(1 + (status is not None))
                if fuzz.sock.poll(5000)
            ]
            expected = [contract.ack_bytes(status, echo)] if status is not None else []
            assert replies == [
                [b] for b in [*expected, contract.ack_bytes(contract.MALFORMED, (5, 1, 0))]
            ]
            legit_seq += 1
            legit.data(LEGIT_ID, legit_seq)
            ack = legit.ack()
            assert (ack.status, ack.seq) == (Status.OK, legit_seq)

        check()
        fuzz.close()
        legit.close()
    stats = server.final_stats
    assert legit_seq >= 100  # hypothesis ran that many examples at least
    assert stats["rejected"] == dict(+tally.rejected)
    assert stats["unanswered"] == tally.unanswered
    assert stats["replies"] == dict(+(tally.replies + Counter(OK=legit_seq)))
    assert stats["stored"] == legit_seq + sum(model.last.values())


def _raw_stream(data: bytes) -> bytes:
    """Bytes libzmq takes for unversioned ZMTP/1.0 (first byte not 0xFF)."""
    return bytes([data[0] % 0xFF]) + data[1:]


_stream_parts = st.one_of(
    st.binary(min_size=1, max_size=300).map(_raw_stream),
    st.lists(FRAMES, min_size=1, max_size=4).map(
        lambda messages: (
            streams.zmtp1_frame(b"", more=False) + streams.framed(messages, streams.zmtp1_frame)
        )
    ),
)


def test_raw_bytes_reach_the_server_as_the_zmtp1_decoding_predicts(tmp_path):
    """Whatever the probe finds (libzmq refuses ZMTP/1.0 when ZAP is on), the counts follow it."""
    tally = contract.Tally()
    endings = Counter()
    with running_server(tmp_path / "q", max_payload_bytes=MAX_PAYLOAD) as server:
        host, port = server.endpoint.removeprefix("tcp://").rsplit(":", 1)
        accepted = raw.probe_zmtp1((host, int(port)))
        if accepted:
            tally.add("bad_type", contract.MALFORMED)

        @settings(max_examples=60, deadline=None)
        @given(stream=_stream_parts)
        def check(stream):
            delivered = streams.zmtp1_delivered(stream) if accepted else []
            assume(all(contract.classify(m, MAX_PAYLOAD)[0] != "valid" for m in delivered))
            endings[raw.raw_exchange((host, int(port)), False, stream)] += 1
            for frames in delivered:
                tally.add(*contract.outcome_of(frames, MAX_PAYLOAD))

        check()
        deadline = time.monotonic() + 10
        while server.counters.received < tally.messages and time.monotonic() < deadline:
            time.sleep(0.01)
    stats = server.final_stats
    assert sum(endings.values()) >= 30
    assert set(endings) <= {"closed", "reset", "reset_while_sending"}, endings
    assert stats["received"] == tally.messages
    assert stats["rejected"] == dict(+tally.rejected)
    assert stats["unanswered"] == tally.unanswered
    assert stats["stored"] == 0


def test_with_curve_raw_bytes_deliver_nothing(tmp_path):
    """With CURVE on, neither ZMTP/1.0 framing nor other raw bytes reach the server."""
    _public, secret = security.keygen(tmp_path / "server", "server")
    client_public, _secret = security.keygen(tmp_path / "clients", "client")
    (tmp_path / "allow").mkdir()
    (tmp_path / "allow" / "client.key").write_bytes(client_public.read_bytes())
    stored_without_curve = streams.zmtp1_frame(b"", more=False) + streams.framed(
        [[protocol.encode_data(5, 1, 0), b"p"]], streams.zmtp1_frame
    )
    sent = [stored_without_curve, b"GET / HTTP/1.1\r\n" + b"x" * 300, streams.GREETING + b"junk"]
    with running_server(
        tmp_path / "q", curve_secret=secret, curve_allow=tmp_path / "allow"
    ) as server:
        host, port = server.endpoint.removeprefix("tcp://").rsplit(":", 1)
        for stream in sent:
            raw.raw_exchange((host, int(port)), False, stream)
    stats = server.final_stats
    assert stats["received"] == 0 and stats["stored"] == 0
    assert stats["connections"]["accepted"] == len(sent)


def test_zmtp1_decoding_of_a_hand_framed_stream():
    header = protocol.encode_header(7, 9, 1)
    stream = streams.zmtp1_frame(b"id", more=True) + streams.framed(
        [[header, b"p"], [b""]], streams.zmtp1_frame
    )
    assert streams.zmtp1_delivered(stream) == [[header, b"p"], [b""]]
    assert streams.zmtp1_delivered(stream[:-1]) == [
        [header, b"p"]
    ]  # a frame cut short is not delivered
    assert streams.zmtp1_delivered(b"\x01\x00\x00" + stream) == []  # size 0: the peer is dropped
    long_frame = streams.zmtp1_frame(b"y" * 300, more=False)
    assert long_frame[:9] == b"\xff" + struct.pack("!Q", 301)
    assert streams.zmtp1_delivered(streams.zmtp1_frame(b"", more=False) + long_frame) == [
        [b"y" * 300]
    ]


@pytest.mark.slow
def test_small_fuzzing_run_passes_every_check(tmp_path):
    config = options.FuzzConfig(
        messages=5000,
        raw_connections=300,
        legit_clients=5,
        legit_messages=200,
        time_limit_s=120,
        seed=11,
    )
    report = run.run_fuzz(config, tmp_path / "fuzz")
    assert checks.check(report) == []
    assert report["server_exit"] == 0
    assert report["dealer"]["malformed"] >= 5000
    assert report["verification"]["lost"] == 0
    counted = report["server"]["rejected"]
    assert all(counted.get(kind, 0) > 0 for kind in contract.KINDS if kind != "no_frames"), counted
    assert report["raw"]["messages"] > 0  # raw bytes did reach the server as ZMTP/1.0 messages
    table = checks.format_report(report, [])
    assert "with fuzzer" in table and "checks: all passed" in table


def test_worker_command_lines_come_from_the_parser_and_parse_back() -> None:
    values = {
        "worker": "dealer",
        "endpoint": "tcp://127.0.0.1:5555",
        "dir": "/tmp/flags",
        "index": 1,
        "seed": 7,
        "quota": 500,
        "batch": 100,
        "time_limit_s": 12.5,
        "max_payload_bytes": 1024,
    }
    argv = options.worker_argv(**values)
    assert argv[:2] == [sys.executable, str(options.PACKAGE_DIR)]
    parsed = vars(options.build_parser().parse_args(argv[2:]))
    assert {name: parsed[name] for name in values} == values
    with pytest.raises(ValueError, match="not options"):
        options.worker_argv(workers=2)
    with pytest.raises(ValueError, match="parse back"):
        options.worker_argv(index="1")  # a value of the wrong type would reach the fuzzer changed


def test_tool_starts_as_documented() -> None:
    root = TOOLS.parents[1]
    done = subprocess.run(
        [sys.executable, "tests/tools/fuzz_wire", "--help"],
        cwd=root,
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "--raw-connections" in done.stdout and "Fuzzing the wire" in done.stdout
    assert "--worker" not in done.stdout  # the fuzzer processes' options stay hidden


def test_tool_modules_are_not_collected_as_tests() -> None:
    names = [p.name for p in TOOLS.rglob("*.py")]
    assert names and not [n for n in names if n.startswith("test_") or n.endswith("_test.py")]
