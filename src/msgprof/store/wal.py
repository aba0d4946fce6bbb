"""The write-ahead log of `ack_after: write`: one write() per commit for all of its clients.

Appending each client's records to its own segment file costs one write() per client per
commit; in a closed loop of many clients that is one system call, with an inode timestamp
update, per message. In `write` mode the store instead appends a commit's records of every
client to this log with one write(), acknowledges them, and moves them into the segment files
in the background, many records per file at a time. A killed server loses nothing: the
records reached the OS either way, and opening the store replays what the log still holds.

Layout: ``root/.wal/<number as 20 digits>.wal``. A log file is a 20-byte header (magic "MPWL",
version u16, header size u16, number u64, crc32 of the preceding 16 bytes u32) and one entry
per commit: ``count u32 | bodies_len u32 | crc32 u32 | count x (client_id u32, body_len u32) |
bodies``, the crc covering the first 8 bytes and the table, each body being one client's
records in the segment record format (each with its own checksum).
A new file is started (rotated) each time the store moves the logged records into their
segments; files whose records all reached the segments are deleted.

The entries live here with the log: the store builds a commit's entry as `append` frames its
records (`entry_header`, `entry_without`, `first_seqs`), recovery and the reader parse and walk
them (`parse_wal`, `entry_walk`, `client_records`).
"""

from __future__ import annotations

import errno
import functools
import os
import re
import struct
from collections.abc import Container, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from msgprof.store.checksum import crc32
from msgprof.store.descriptors import PLAIN, Files
from msgprof.store.segment import (
    CRC,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    SEQ,
    Record,
    Walk,
    numbered_files,
    read_file,
    sealed,
    write_all,
)
from msgprof.store.sync import make_dir

WAL_MAGIC = b"MPWL"
WAL_VERSION = 1
WAL_HEADER = struct.Struct("<4sHHQI")
WAL_HEADER_SIZE = WAL_HEADER.size  # 20
ENTRY_HEAD = struct.Struct("<II")  # count, bodies_len; then crc32 u32 and the table
ENTRY_FIXED_SIZE = ENTRY_HEAD.size + 4  # 12
_NAME = re.compile(r"^(\d{20})\.wal$")
_OPEN_NEW = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def wal_name(number: int) -> str:
    """A log file's name: its number, so names sort in the order the files were started."""
    return f"{number:020d}.wal"


def wal_header(number: int) -> bytes:
    """The 20-byte header that starts every log file."""
    return sealed(WAL_HEADER.pack(WAL_MAGIC, WAL_VERSION, WAL_HEADER_SIZE, number, 0)[:16])


def entry_header(table: list[int], bodies_len: int) -> bytes:
    """The header of one commit's entry: `table` is client_id, body_len, client_id, ..."""
    size = len(table)
    packed = _table_struct(size).pack(*table)
    head = ENTRY_HEAD.pack(size >> 1, bodies_len)
    return head + CRC.pack(crc32(packed, crc32(head))) + packed


@functools.lru_cache(maxsize=2048)  # commits of up to 1,024 records: the server's largest burst
def _table_struct(ints: int) -> struct.Struct:
    """The Struct of a table of `ints` u32, made once per length: `struct.pack` with a format
    made per commit spent 1-2 us of a lone request's round trip formatting and looking it up."""
    return struct.Struct(f"<{ints}I")


def entry_without(
    table: list[int], parts: list[bytes], refused: Container[int]
) -> tuple[list[int], list[bytes]]:
    """A commit's log entry (table, parts) without the records of the `refused` clients.

    `table` is client_id, record bytes, ... per record; `parts[0]` is left for the entry's
    header, then header, payload, ... of each record."""
    kept_table: list[int] = []
    kept_parts: list[bytes] = [b""]
    for i in range(0, len(table), 2):
        if table[i] not in refused:
            kept_table += table[i : i + 2]
            kept_parts += parts[i + 1 : i + 3]
    return kept_table, kept_parts


def first_seqs(table: list[int], parts: list[bytes]) -> dict[int, int]:
    """Each client's first seq in a commit's log entry (table, parts)."""
    firsts: dict[int, int] = {}
    for i in range(0, len(table), 2):
        if table[i] not in firsts:
            firsts[table[i]] = SEQ.unpack_from(parts[i + 1], 8)[0]
    return firsts


def wal_files(directory: Path) -> list[tuple[int, Path]]:
    """(number, path) of the log files in `directory`, oldest first; [] if there is none."""
    return numbered_files(directory, _NAME)[0]


class WalEntry(NamedTuple):
    """One client's records of one commit."""

    client_id: int
    body: memoryview  # the client's records, segment record format
    offset: int  # of the body in the file


class WalContents(NamedTuple):
    """What `read_wal` found: the intact entries, and where and why reading stopped early
    (`reason` None: the file ends cleanly; `end` is then its size)."""

    entries: list[WalEntry]
    end: int
    size: int
    reason: str | None


class UnsupportedWal(Exception):
    """An intact log header of another format version: never cut or replayed, refused."""


def read_wal(path: Path) -> WalContents:
    """Parse one log file (see `parse_wal`)."""
    return parse_wal(memoryview(read_file(path)), path)


def parse_wal(buf: memoryview, path: Path) -> WalContents:
    """Parse the contents of one log file. A torn or damaged header or entry ends the file
    there: what follows cannot be trusted (the file was being appended to when the server died)."""
    size = len(buf)
    if size == 0:  # created, never written
        return WalContents([], 0, 0, None)
    if size < WAL_HEADER_SIZE:
        return WalContents([], 0, size, "torn_header")
    magic, version, hsize, _number, crc = WAL_HEADER.unpack_from(buf)
    if magic != WAL_MAGIC or crc != crc32(buf[:16]):
        return WalContents([], 0, size, "bad_header")
    if version != WAL_VERSION or hsize != WAL_HEADER_SIZE:
        raise UnsupportedWal(f"{path}: write-ahead log version {version}, header size {hsize}")
    entries: list[WalEntry] = []
    pos = WAL_HEADER_SIZE
    while pos < size:
        if size - pos < ENTRY_FIXED_SIZE:
            return WalContents(entries, pos, size, "incomplete_entry")
        count, bodies_len = ENTRY_HEAD.unpack_from(buf, pos)
        (crc,) = CRC.unpack_from(buf, pos + ENTRY_HEAD.size)
        table_at = pos + ENTRY_FIXED_SIZE
        body = table_at + 8 * count
        if body + bodies_len > size:  # a damaged count or length reads as one, too
            return WalContents(entries, pos, size, "incomplete_entry")
        table = buf[table_at:body]
        if crc != crc32(table, crc32(buf[pos : pos + ENTRY_HEAD.size])):
            return WalContents(entries, pos, size, "bad_entry_header")
        lengths = struct.unpack_from(f"<{2 * count}I", table)
        if sum(lengths[1::2]) != bodies_len:
            return WalContents(entries, pos, size, "bad_entry_header")
        for client_id, length in zip(lengths[0::2], lengths[1::2]):
            entries.append(WalEntry(client_id, buf[body : body + length], body))
            body += length
        pos = body
    return WalContents(entries, pos, size, None)


def entry_walk(body: memoryview) -> Walk | None:
    """A walk over the records of one entry's body, which start at whatever seq the first one
    carries; None if the body cannot hold a record."""
    if len(body) < RECORD_HEADER_SIZE:
        return None
    return Walk(body, RECORD_HEADER.unpack_from(body)[2], start=0)


def client_records(f: BinaryIO, path: Path, client_id: int, last: int) -> Iterator[Record]:
    """The client's records in one open log file that continue the sequence after `last`."""
    buf = memoryview(f.read())
    for entry in parse_wal(buf, path).entries:
        walk = entry_walk(entry.body) if entry.client_id == client_id else None
        if walk is None:
            continue
        for offset, seq, payload in walk:
            if seq > last:
                if seq != last + 1:
                    return
                last = seq
                yield Record(seq, bytes(payload), path, entry.offset + offset)


class WriteAheadLog:
    """Appends to the newest log file; `rotate` starts the next one, `release` deletes the
    older ones. Not thread-safe: the store serialises calls. Errors are raised as OSError."""

    def __init__(self, directory: Path, files: Files = PLAIN) -> None:
        self.dir = Path(directory)
        self._files = files
        make_dir(self.dir, files)
        existing = wal_files(self.dir)
        self._number = existing[-1][0] if existing else 0
        self._fd = -1
        self._path: Path | None = None
        self._size = 0
        self._retired: list[Path] = []
        self._broken: OSError | None = None
        self.bytes_written = 0
        self.files_started = 0
        self._start()

    def _start(self) -> None:
        """Create the next file; its header goes out with the first append."""
        path = self.dir / wal_name(self._number + 1)
        fd = self._files.open(path, _OPEN_NEW, 0o644)
        self._number += 1
        if self._fd >= 0:
            self._files.close(self._fd)
            self._retired.append(self._path)  # type: ignore[arg-type]
        self._fd, self._path, self._size = fd, path, 0
        self.files_started += 1

    def append(self, data: bytes) -> None:
        """Append `data` (whole entries) with one write() (`write_all` goes on after a short
        one, as for segments). On failure the file is cut back to
        where it was, so no torn entry is left for later appends to follow; if even that
        fails the log goes on in a new file, and if that fails too it refuses every append."""
        if self._broken is not None:
            code = self._broken.errno or errno.EIO
            raise OSError(code, f"write-ahead log unusable: {self._broken}")
        if self._size == 0:
            data = wal_header(self._number) + data
        try:
            write_all(self._fd, data)
        except OSError:
            self._cut_back()
            raise
        self._size += len(data)
        self.bytes_written += len(data)

    def _cut_back(self) -> None:
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            try:
                self._start()
            except OSError as exc:
                self._broken = exc

    def rotate(self) -> None:
        """Start a new file (when the current one holds anything): every record logged so far
        is in the retired files, which `release` deletes once the store has them elsewhere.
        Raises OSError if no new file can be started; the log then goes on in the current
        one (it ends with a whole entry), which is retired by a later rotation."""
        if self._size == 0 or self._broken is not None:
            return
        self._start()

    def release(self) -> None:
        """Delete the retired files. A file that cannot be deleted stays for the next call
        (replaying it again is harmless)."""
        kept = []
        for path in self._retired:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                kept.append(path)
        self._retired = kept

    def close(self, *, remove: bool) -> None:
        """Close the current file; with `remove`, delete it and every retired file too (the
        store has every record elsewhere, durably)."""
        if self._fd >= 0:
            self._files.close(self._fd)
            self._fd = -1
            if self._path is not None:
                self._retired.append(self._path)
        if remove:
            self.release()
