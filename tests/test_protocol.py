"""Wire protocol v1: the byte layout in docs/protocol.md, round trips and validation order."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgprof.wire import protocol
from msgprof.wire.protocol import MsgType, Rejected, Status, Unanswerable

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)


def test_header_is_28_bytes_big_endian_as_documented():
    frame = protocol.encode_header(
        MsgType.ACK, 0x01020304, 0x05060708090A0B0C, 0x0D0E0F1011121314, status=6
    )
    assert frame == (
        b"MP" + bytes([1, 2, 6, 0]) + b"\x00\x00"
        + bytes.fromhex("01020304") + bytes.fromhex("05060708090a0b0c") + bytes.fromhex("0d0e0f1011121314")
    )  # fmt: skip
    assert len(frame) == protocol.HEADER_SIZE == 28


@given(cid=U32, seq=U64, t=U64, status=st.sampled_from(list(Status)))
def test_ack_round_trip(cid, seq, t, status):
    header = protocol.decode_ack([protocol.encode_ack(status, cid, seq, t)])
    assert (header.client_id, header.seq, header.t_send_ns, header.status) == (cid, seq, t, status)
    assert header.type == MsgType.ACK and header.version == 1


@given(cid=U32, seq=U64, t=U64)
def test_a_request_header_is_the_nine_fields_packed(cid, seq, t):
    fields = (protocol.MAGIC, protocol.VERSION, MsgType.DATA, 0, 0, 0, cid, seq, t)
    assert protocol.encode_data(cid, seq, t) == protocol.HEADER.pack(*fields)


@given(cid=U32, seq=U64, t=U64, status=st.sampled_from(list(Status)))
def test_an_ack_is_its_status_prefix_and_the_requests_echo(cid, seq, t, status):
    request = protocol.encode_data(cid, seq, t)
    echo = request[protocol.ECHO_OFFSET :]
    assert protocol.ACK_PREFIX[status] + echo == protocol.encode_ack(status, cid, seq, t)
    assert protocol.ECHO.unpack(echo) == (cid, seq, t)


@given(head=st.one_of(
    st.binary(min_size=28, max_size=28),
    st.tuples(st.binary(min_size=8, max_size=8), U32, U64, U64).map(
        lambda f: f[0] + protocol.ECHO.pack(*f[1:])),
    st.tuples(U32, U64, U64).map(lambda f: protocol.DATA_PREFIX + protocol.ECHO.pack(*f)),
))  # fmt: skip
def test_the_data_prefix_and_echo_fields_decide_validity_as_validate_does(head):
    """The server accepts a 2-frame request on these checks alone and asks validate_request
    about any other: the two must agree."""
    cid, seq, _t = protocol.ECHO.unpack_from(head, protocol.ECHO_OFFSET)
    quick = (
        head.startswith(protocol.DATA_PREFIX) and 1 <= cid <= protocol.MAX_CLIENT_ID and seq >= 1
    )
    try:
        protocol.validate_request([head, b""], 0)
    except (Rejected, Unanswerable):
        assert not quick
    else:
        assert quick


@given(cid=st.integers(1, protocol.MAX_CLIENT_ID), seq=st.integers(1, 2**64 - 1), t=U64,
       payload=st.binary(max_size=64))  # fmt: skip
def test_data_round_trip(cid, seq, t, payload):
    header, body = protocol.validate_request([protocol.encode_data(cid, seq, t), payload], 64)
    assert (header.client_id, header.seq, header.t_send_ns) == (cid, seq, t)
    assert body == payload


def _data(**fields):
    values = dict(msg_type=MsgType.DATA, client_id=7, seq=3, t_send_ns=99)
    values.update(fields)
    return protocol.encode_header(**values)


@pytest.mark.parametrize(
    "frame, kind",
    [
        (b"", "short_header"),
        (b"MP\x01", "short_header"),
        (_data()[:27], "short_header"),
        (_data() + b"\x00", "long_header"),
        (b"XX" + _data()[2:], "bad_magic"),
        (b"\x00" * 28, "bad_magic"),
    ],
)
def test_unanswerable_headers(frame, kind):
    with pytest.raises(Unanswerable) as info:
        protocol.validate_request([frame, b"x"], 1024)
    assert info.value.kind == kind


def _reserved(value):
    frame = bytearray(_data())
    struct.pack_into("!H", frame, 6, value)
    return bytes(frame)


@pytest.mark.parametrize(
    "frames, kind, status",
    [
        ([_data(version=2), b""], "unsupported_version", Status.UNSUPPORTED_VERSION),
        ([_data(version=0), b""], "unsupported_version", Status.UNSUPPORTED_VERSION),
        ([_data(msg_type=MsgType.ACK), b""], "bad_type", Status.MALFORMED),
        ([_data(msg_type=3), b""], "bad_type", Status.MALFORMED),
        ([_data(status=1), b""], "bad_fields", Status.MALFORMED),
        ([_data(flags=1), b""], "bad_fields", Status.MALFORMED),
        ([_reserved(1), b""], "bad_fields", Status.MALFORMED),
        ([_data(client_id=0), b""], "bad_client_id", Status.MALFORMED),
        ([_data(client_id=2**31), b""], "bad_client_id", Status.MALFORMED),
        ([_data(client_id=2**32 - 1), b""], "bad_client_id", Status.MALFORMED),
        ([_data(seq=0), b""], "seq_zero", Status.MALFORMED),
        ([_data()], "frame_count", Status.MALFORMED),
        ([_data(), b"a", b"b"], "frame_count", Status.MALFORMED),
        ([_data(), b"x" * 11], "too_large", Status.TOO_LARGE),
    ],
)
def test_rejected_requests_carry_status_and_echo_header(frames, kind, status):
    with pytest.raises(Rejected) as info:
        protocol.validate_request(frames, 10)
    assert info.value.kind == kind
    assert info.value.status == status
    assert info.value.header.t_send_ns == 99


def test_payload_at_the_limit_and_empty_payload_are_valid():
    assert protocol.validate_request([_data(), b"x" * 10], 10)[1] == b"x" * 10
    assert protocol.validate_request([_data(), b""], 10)[1] == b""


def test_no_frames_is_unanswerable():
    with pytest.raises(Unanswerable) as info:
        protocol.validate_request([], 10)
    assert info.value.kind == "no_frames"


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [protocol.encode_ack(0, 1, 1, 1), b""],
        [_data()],
        [protocol.encode_ack(0, 1, 1, 1)[:20]],
        [protocol.encode_header(MsgType.ACK, 1, 1, 1, status=200)],
        [protocol.encode_header(MsgType.ACK, 1, 1, 1, version=2)],
    ],
)
def test_decode_ack_rejects_invalid_replies(frames):
    with pytest.raises(ValueError):
        protocol.decode_ack(frames)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise_anything_but_protocol_errors(blob):
    try:
        protocol.validate_request([blob, b""], 16)
    except (Unanswerable, Rejected):
        pass
