"""Wire protocol v1: the 28-byte header every message starts with.

The contract is written for other languages in docs/protocol.md; this module is its Python
implementation and validates at the edge, so nothing past `decode_header` ever sees raw bytes
that were not checked.

Header layout (network byte order, 28 bytes)::

    magic "MP" (2) | version u8 | type u8 | status u8 | flags u8 | reserved u16 |
    client_id u32 | seq u64 | t_send_ns u64
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

MAGIC = b"MP"
VERSION = 1
HEADER = struct.Struct("!2sBBBBHIQQ")
HEADER_SIZE = HEADER.size  # 28

#: Client ids are 1 .. MAX_CLIENT_ID; 0 and ids of 2**31 and above are reserved.
MAX_CLIENT_ID = 2**31 - 1
#: Sequence numbers start at 1; 0 is reserved.
MAX_SEQ = 2**64 - 1

assert HEADER_SIZE == 28


class MsgType(enum.IntEnum):
    """Message types; other values are reserved for later versions."""

    DATA = 1
    ACK = 2


class Status(enum.IntEnum):
    """Status carried by an ACK. Requests always carry OK (0)."""

    OK = 0
    DUPLICATE = 1
    OUT_OF_ORDER = 2
    MALFORMED = 3
    TOO_LARGE = 4
    UNSUPPORTED_VERSION = 5
    STORAGE_FULL = 6
    STORAGE_ERROR = 7
    BUSY = 8


class Header(NamedTuple):
    """A decoded header. Fields keep wire names and units (ns on the sender's clock)."""

    version: int
    type: int
    status: int
    flags: int
    reserved: int
    client_id: int
    seq: int
    t_send_ns: int


class Unanswerable(ValueError):
    """The frame is not a v1 header at all: there is no client_id/seq to answer with.

    `kind` names the defect for counting (e.g. ``short_header``, ``bad_magic``).
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class Rejected(ValueError):
    """The header is readable but the request is invalid: answer with `status`.

    `kind` names the defect for counting (e.g. ``client_id_zero``, ``seq_zero``).
    """

    def __init__(self, kind: str, status: Status, header: Header, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.status = status
        self.header = header


def encode_header(
    msg_type: int,
    client_id: int,
    seq: int,
    t_send_ns: int = 0,
    status: int = Status.OK,
    flags: int = 0,
    version: int = VERSION,
) -> bytes:
    """Pack one header. Raises struct.error for a field out of its wire range."""
    return HEADER.pack(MAGIC, version, msg_type, status, flags, 0, client_id, seq, t_send_ns)


def encode_data(client_id: int, seq: int, t_send_ns: int) -> bytes:
    """Header of a client's DATA request (the payload travels as a second frame): its fixed
    8 bytes and the packed rest, half the time of packing all nine fields (the client packs it
    between its clock read and the send)."""
    return DATA_PREFIX + _pack_echo(client_id, seq, t_send_ns)


def encode_ack(status: int, client_id: int, seq: int, t_send_ns: int) -> bytes:
    """Header of the server's ACK: echoes client_id, seq and t_send_ns of the request."""
    return HEADER.pack(MAGIC, VERSION, MsgType.ACK, status, 0, 0, client_id, seq, t_send_ns)


#: The first 8 bytes of every valid DATA request (magic, version 1, DATA, status, flags and
#: reserved all 0): a server may accept a request whose header starts so without unpacking it.
DATA_PREFIX = HEADER.pack(MAGIC, VERSION, MsgType.DATA, 0, 0, 0, 0, 0, 0)[:8]
#: client_id, seq and t_send_ns: the header's last 20 bytes, which an ACK echoes unchanged.
ECHO = struct.Struct("!IQQ")
_pack_echo = ECHO.pack
ECHO_OFFSET = HEADER_SIZE - ECHO.size  # 8
#: The first 8 bytes of an ACK, by status: an ACK is `ACK_PREFIX[status]` and the echo.
ACK_PREFIX = tuple(encode_ack(s, 0, 0, 0)[:ECHO_OFFSET] for s in range(max(Status) + 1))


def echo_of(header: Header) -> bytes:
    """The echo an ACK to `header` ends with (its client_id, seq and t_send_ns)."""
    return ECHO.pack(header.client_id, header.seq, header.t_send_ns)


def decode_header(frame: bytes) -> Header:
    """Unpack a header without judging its contents beyond magic and size.

    Raises Unanswerable when the frame is not 28 bytes or the magic is wrong.
    """
    if len(frame) != HEADER_SIZE:
        kind = "short_header" if len(frame) < HEADER_SIZE else "long_header"
        raise Unanswerable(kind, f"header frame is {len(frame)} bytes, expected {HEADER_SIZE}")
    fields = HEADER.unpack(frame)
    if fields[0] != MAGIC:
        raise Unanswerable("bad_magic", f"magic {fields[0]!r}, expected {MAGIC!r}")
    return Header._make(fields[1:])


def validate_request(frames: list[bytes], max_payload_bytes: int) -> tuple[Header, bytes]:
    """Check a client's request `[header, payload]` (identity frame already removed).

    Returns the header and payload of a valid DATA request. Raises Unanswerable when no reply
    is possible and Rejected (with the status to answer) when the header is readable.
    The order of checks is part of the contract (docs/protocol.md).
    """
    if not frames:
        raise Unanswerable("no_frames", "empty message")
    header = decode_header(frames[0])
    if header.version != VERSION:
        raise Rejected("unsupported_version", Status.UNSUPPORTED_VERSION, header)
    if header.type != MsgType.DATA:
        raise Rejected("bad_type", Status.MALFORMED, header, f"type {header.type}")
    if header.status != 0 or header.flags != 0 or header.reserved != 0:
        raise Rejected("bad_fields", Status.MALFORMED, header, "status/flags/reserved not 0")
    if header.client_id == 0 or header.client_id > MAX_CLIENT_ID:
        raise Rejected("bad_client_id", Status.MALFORMED, header, f"client_id {header.client_id}")
    if header.seq == 0:
        raise Rejected("seq_zero", Status.MALFORMED, header)
    if len(frames) != 2:
        raise Rejected("frame_count", Status.MALFORMED, header, f"{len(frames)} frames, expected 2")
    payload = frames[1]
    if len(payload) > max_payload_bytes:
        raise Rejected("too_large", Status.TOO_LARGE, header, f"{len(payload)} bytes")
    return header, payload


def decode_ack(frames: list[bytes]) -> Header:
    """Check a server reply (the DEALER sees no identity frame). Raises ValueError if invalid."""
    if len(frames) != 1:
        raise ValueError(f"ack has {len(frames)} frames, expected 1")
    header = decode_header(frames[0])
    if header.version != VERSION or header.type != MsgType.ACK:
        raise ValueError(f"not a v1 ACK: version {header.version}, type {header.type}")
    if header.status not in _STATUS_VALUES:
        raise ValueError(f"unknown status {header.status}")
    return header


_STATUS_VALUES = frozenset(int(s) for s in Status)
