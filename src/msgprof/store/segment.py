"""The on-disk format of the queues (docs/storage.md is the contract): directory layout,
segment files, record framing, the CRC-sealed headers, and the walk that checks records.

Layout: ``root/<client_id>/<first_seq as 20 digits>.seg``. A segment is a 24-byte header followed
by records ``payload_len u32 | crc32 u32 | seq u64 | payload`` (little-endian, CRC over the 8 seq
bytes and the payload), so a torn or damaged tail is found and cut when the store is reopened.
The write-ahead log (`msgprof.store.wal`) carries records in this same framing.

Everything here is shared by the writer, recovery, the log and the reader, so it knows none of
them; the file helpers below hold the store's one short-write policy (`write_all`).
"""

from __future__ import annotations

import errno
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from msgprof.store.checksum import crc32

#: Client ids are 1 .. MAX_CLIENT_ID (docs/storage.md: directory names 1 … 2147483647); the
#: wire protocol has the same bound, and a test keeps the two equal.
MAX_CLIENT_ID = 2**31 - 1

#: Segment file header: magic | version u16 | header_size u16 | client_id u32 | first_seq u64 |
#: crc32 of the preceding 20 bytes u32.
SEGMENT_MAGIC = b"MPQS"
SEGMENT_VERSION = 1
SEGMENT_HEADER = struct.Struct("<4sHHIQI")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 24
#: Record header: payload_len u32 | crc32 u32 | seq u64, then the payload.
RECORD_HEADER = struct.Struct("<IIQ")
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 16
MAX_PAYLOAD = 2**32 - 1
#: Committed-offset file: magic | version u16 | reserved u16 | seq u64 | crc32 of bytes 0..15 u32.
COMMITTED_MAGIC = b"MPQC"
COMMITTED_VERSION = 1
COMMITTED = struct.Struct("<4sHHQI")
COMMITTED_NAME = "committed"
LOCK_NAME = ".lock"
QUARANTINE_NAME = ".quarantine"
WAL_DIR = ".wal"

assert SEGMENT_HEADER_SIZE == 24 and RECORD_HEADER_SIZE == 16 and COMMITTED.size == 20

#: A record's seq as its CRC covers it; also read back from a framed header at offset 8.
SEQ = struct.Struct("<Q")
#: The CRC-32 that seals a header (segment, committed file, log file, log entry).
CRC = struct.Struct("<I")
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_CLIENT_NAME = re.compile(r"^[1-9]\d{0,9}$")
_KNOWN_CLIENT_FILES = frozenset({COMMITTED_NAME, COMMITTED_NAME + ".tmp"})
_KNOWN_ROOT_NAMES = frozenset({LOCK_NAME, QUARANTINE_NAME, WAL_DIR})


class Record(NamedTuple):
    """One stored message as the reader returns it; `offset` is the record's byte offset."""

    seq: int
    payload: bytes
    path: Path
    offset: int


def check_client_id(client_id: int) -> int:
    """`client_id` if it can name a queue directory, else ValueError."""
    if type(client_id) is not int or not 1 <= client_id <= MAX_CLIENT_ID:
        raise ValueError(f"client_id must be an int in 1..{MAX_CLIENT_ID}, got {client_id!r}")
    return client_id


def sealed(head: bytes) -> bytes:
    """`head` followed by its CRC-32 as u32 little-endian (every header of the format)."""
    return head + CRC.pack(crc32(head))


def segment_header(client_id: int, first_seq: int) -> bytes:
    """The 24-byte header that starts every segment file."""
    return sealed(
        SEGMENT_HEADER.pack(
            SEGMENT_MAGIC, SEGMENT_VERSION, SEGMENT_HEADER_SIZE, client_id, first_seq, 0
        )[:20]
    )


def encode_record(seq: int, payload: bytes) -> bytes:
    """One framed record (header and payload), as stored."""
    crc = crc32(payload, crc32(SEQ.pack(seq)))
    return RECORD_HEADER.pack(len(payload), crc, seq) + bytes(payload)


def segment_name(first_seq: int) -> str:
    """A segment's file name: its first seq, so names sort in seq order."""
    return f"{first_seq:020d}.seg"


class UnsupportedVersion(Exception):
    """A segment header with a valid checksum but another format version: never cut, refuse."""


def check_header(buf: memoryview, client_id: int, first_seq: int) -> str | None:
    """None if the segment header is valid, else the recovery reason.

    Raises UnsupportedVersion for an intact header of another format version: such a file is
    not ours to cut.
    """
    if len(buf) < SEGMENT_HEADER_SIZE:
        return "torn_header"
    magic, version, size, cid, first, crc = SEGMENT_HEADER.unpack_from(buf)
    if magic != SEGMENT_MAGIC or crc != crc32(buf[:20]):
        return "bad_header"
    if version != SEGMENT_VERSION or size != SEGMENT_HEADER_SIZE:
        raise UnsupportedVersion(f"segment format version {version}, header size {size}")
    if cid != client_id or first != first_seq:
        return "bad_header"
    return None


class Walk:
    """Iterate the intact records of a segment body; afterwards `end` and `reason` say where
    and why the walk stopped (`reason` None: clean end of data)."""

    __slots__ = ("buf", "end", "reason", "seq", "start")

    def __init__(
        self, buf: memoryview, expected_seq: int, start: int = SEGMENT_HEADER_SIZE
    ) -> None:
        self.buf = buf
        self.seq = expected_seq  # seq the next record must carry
        self.end = self.start = start
        self.reason: str | None = None

    def to_end(self) -> Walk:
        """Walk every intact record without keeping them (recovery needs only where it ends)."""
        for _record in self:
            continue
        return self

    def __iter__(self) -> Iterator[tuple[int, int, memoryview]]:
        buf, size, pos, seq = self.buf, len(self.buf), self.start, self.seq
        unpack = RECORD_HEADER.unpack_from
        while pos < size:
            if size - pos < RECORD_HEADER_SIZE:
                self.reason = "incomplete_record"
                break
            length, crc, rseq = unpack(buf, pos)
            body = pos + RECORD_HEADER_SIZE
            if length > size - body:
                self.reason = "incomplete_record"
                break
            payload = buf[body : body + length]
            if crc32(payload, crc32(buf[pos + 8 : body])) != crc:
                self.reason = "bad_checksum"
                break
            if rseq != seq:
                self.reason = "bad_seq"
                break
            yield pos, seq, payload
            pos, seq = body + length, seq + 1
        self.end, self.seq = pos, seq


# ------------------------------------------------------------------------ directory listing


def numbered_files(
    directory: Path, pattern: re.Pattern[str]
) -> tuple[list[tuple[int, Path]], list[str]]:
    """(number, path) of the entries whose name `pattern` matches (group 1 is the number),
    sorted, and the names of the others; nothing if `directory` does not exist. Segments and
    log files are both named by a number that orders them."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return [], []
    found, others = [], []
    for name in names:
        match = pattern.match(name)
        if match:
            found.append((int(match.group(1)), directory / name))
        else:
            others.append(name)
    found.sort()
    return found, others


def segments(client_dir: Path) -> tuple[list[tuple[int, Path]], list[Path]]:
    """(first_seq, path) of every segment sorted by first_seq, and the stray entries."""
    found, others = numbered_files(client_dir, _SEGMENT_NAME)
    strays = [client_dir / name for name in others if name not in _KNOWN_CLIENT_FILES]
    strays += [path for first, path in found if first == 0]  # no record has seq 0
    return [(first, path) for first, path in found if first > 0], sorted(strays)


def client_dirs(root: Path) -> tuple[list[int], list[Path]]:
    """Client ids that have a directory under root (sorted), and the stray root entries."""
    ids, strays = [], []
    for name in os.listdir(root):
        path = root / name
        if _CLIENT_NAME.match(name) and int(name) <= MAX_CLIENT_ID and path.is_dir():
            ids.append(int(name))
        elif name not in _KNOWN_ROOT_NAMES:
            strays.append(path)
    return sorted(ids), sorted(strays)


# ------------------------------------------------------------------------------ file helpers


def read_file(path: Path) -> bytes:
    """A whole file's bytes (segments are read whole: recovery and the reader walk them)."""
    with open(path, "rb") as f:
        return f.read()


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of data is written; a short write is continued, an error raised.

    The one short-write policy of the store: a regular file writes short only when it runs
    out of room or is interrupted, and the next write then either goes on or says why not."""
    written = os.write(fd, data)
    if written != len(data):
        view = memoryview(data)
        while written < len(data):
            n = os.write(fd, view[written:])
            if n == 0:
                raise OSError(errno.EIO, "write() wrote nothing")
            written += n


def write_synced(path: Path, data: bytes) -> None:
    """Replace a file's contents with `data` and fsync it (creating the file if needed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
