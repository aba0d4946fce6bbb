"""Reading a store's directory from outside the store: verify what was stored, consume it, and
free the consumed segments (docs/storage.md, "Reading and consuming").

The reader needs no store: it works on the files alone, beside a running store or after it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

from msgprof.store.checksum import crc32
from msgprof.store.errors import CorruptData
from msgprof.store.segment import (
    COMMITTED,
    COMMITTED_MAGIC,
    COMMITTED_NAME,
    COMMITTED_VERSION,
    WAL_DIR,
    Record,
    UnsupportedVersion,
    Walk,
    check_client_id,
    check_header,
    client_dirs,
    read_file,
    sealed,
    segments,
    write_synced,
)
from msgprof.store.sync import fsync_dir
from msgprof.store.wal import client_records, read_wal, wal_files


class QueueReader:
    """Read a store's directory: verify what was stored, consume it, free consumed segments.

    Safe beside a running store (one writer): a record the store is still writing at the end
    of a client's newest segment is not returned yet. Damage anywhere else raises CorruptData.
    Records still in the write-ahead log (write mode: not yet moved into their segment, or a
    store that was killed or could not finish its last flush) are returned after the
    segments' ones: they are stored, and the next open of the store moves them.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def client_ids(self) -> list[int]:
        """Clients with a queue directory or records in the write-ahead log, sorted."""
        ids = set(client_dirs(self.root)[0])
        for _number, path in wal_files(self.root / WAL_DIR):
            try:
                ids.update(entry.client_id for entry in read_wal(path).entries)
            except FileNotFoundError:
                continue  # moved into the segments meanwhile
        return sorted(ids)

    def _dir(self, client_id: int) -> Path:
        return self.root / str(check_client_id(client_id))

    def records(self, client_id: int, after_seq: int | None = None) -> Iterator[Record]:
        """The client's records with seq > after_seq (default: the committed offset), in order."""
        if after_seq is None:
            after_seq = self.committed(client_id)
        # The log files are opened first: one the store deletes meanwhile (its records moved
        # into a segment after that segment was read here) can still be read.
        logs = []
        try:
            for _number, path in wal_files(self.root / WAL_DIR):
                try:
                    logs.append((path, open(path, "rb")))  # noqa: SIM115 - closed below
                except FileNotFoundError:
                    continue
            last = after_seq
            for record in self._segment_records(client_id, after_seq):
                last = record.seq
                yield record
            for path, f in logs:
                for record in client_records(f, path, client_id, last):
                    last = record.seq
                    yield record
        finally:
            for _path, f in logs:
                f.close()

    def _segment_records(self, client_id: int, after_seq: int) -> Iterator[Record]:
        found, _ = segments(self._dir(client_id))
        for index, (first, path) in enumerate(found):
            newest = index == len(found) - 1
            if not newest and found[index + 1][0] - 1 <= after_seq:
                continue  # every record of this segment is <= after_seq
            data = memoryview(read_file(path))
            try:
                reason = check_header(data, client_id, first)
            except UnsupportedVersion as exc:
                raise CorruptData(f"{path}: {exc}") from None
            if reason is not None:
                if newest and reason == "torn_header":
                    return
                raise CorruptData(f"{path}: {reason}")
            walk = Walk(data, first)
            for offset, seq, payload in walk:
                if seq > after_seq:
                    yield Record(seq, bytes(payload), path, offset)
            if walk.reason is not None and not newest:
                raise CorruptData(f"{path}: {walk.reason} at offset {walk.end}")

    def committed(self, client_id: int) -> int:
        """The consumed offset persisted by `commit`; 0 if never committed."""
        path = self._dir(client_id) / COMMITTED_NAME
        try:
            data = read_file(path)
        except FileNotFoundError:
            return 0
        if len(data) != COMMITTED.size:
            raise CorruptData(f"{path}: {len(data)} bytes, expected {COMMITTED.size}")
        magic, version, _, seq, crc = COMMITTED.unpack(data)
        if magic != COMMITTED_MAGIC or crc != crc32(data[:16]):
            raise CorruptData(f"{path}: bad magic or checksum")
        if version != COMMITTED_VERSION:
            raise CorruptData(f"{path}: unsupported version {version}")
        return seq

    def commit(self, client_id: int, seq: int) -> None:
        """Persist the consumed offset atomically: write a temporary file, fsync, rename, fsync
        the directory."""
        if type(seq) is not int or not 0 <= seq < 2**64:
            raise ValueError(f"seq must be an int in 0..2**64-1, got {seq!r}")
        directory = self._dir(client_id)
        if not directory.is_dir():
            raise ValueError(f"client {client_id} has no queue under {self.root}")
        data = sealed(COMMITTED.pack(COMMITTED_MAGIC, COMMITTED_VERSION, 0, seq, 0)[:16])
        tmp = directory / (COMMITTED_NAME + ".tmp")
        write_synced(tmp, data)
        os.rename(tmp, directory / COMMITTED_NAME)
        fsync_dir(directory)

    def delete_consumed(self, client_id: int) -> int:
        """Delete the segments whose records are all <= the committed offset, never the newest
        one (the store appends to it). Returns how many were deleted."""
        committed = self.committed(client_id)
        directory = self._dir(client_id)
        found, _ = segments(directory)
        deleted = 0
        for (_, path), (next_first, _) in itertools.pairwise(found):
            if next_first - 1 > committed:
                break
            path.unlink()
            deleted += 1
        if deleted:
            fsync_dir(directory)
        return deleted
