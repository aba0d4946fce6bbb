"""Helpers shared by the store's tests (test_store*.py): records with checkable payloads, a
committing fill, reading a queue back, and failing stand-ins for system calls."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from msgprof.store.queue import QueueStore
from msgprof.store.reader import QueueReader


def payload(cid: int, seq: int, size: int = 40) -> bytes:
    return (f"{cid}:{seq}:".encode() * size)[:size]


def fill(store: QueueStore, cid: int, upto: int, size: int = 40) -> None:
    """Append and commit records last_seq+1 .. upto of one client, one commit each."""
    for seq in range(store.last_seq(cid) + 1, upto + 1):
        store.append(cid, seq, payload(cid, seq, size))
        assert store.commit() == {}


def stored(root: Path, cid: int) -> list[int]:
    records = list(QueueReader(root).records(cid, after_seq=0))
    for rec in records:
        assert rec.payload == payload(cid, rec.seq, len(rec.payload))
    return [rec.seq for rec in records]


def reopen_and_extend(root: Path, cid: int, last: int, upto: int, **options) -> None:
    """Reopen: nothing to recover, last_seq as stored, appends go on up to `upto`."""
    with QueueStore(root, **options) as store:
        assert store.recovery == []
        assert store.last_seq(cid) == last
        assert store.disk_bytes() == segment_bytes_on_disk(root)
        fill(store, cid, upto)
    assert stored(root, cid)[-(upto - last) :] == list(range(last + 1, upto + 1))


def failing_on(path: Path | str, real):
    """A stand-in for `real` (os.write, os.fdatasync) that fails with EIO on descriptors of
    `path` and calls `real` for every other file."""

    def call(fd: int, *args):
        if os.readlink(f"/proc/self/fd/{fd}") == str(path):
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, *args)

    return call


def segments(root: Path, cid: int) -> list[Path]:
    return sorted((root / str(cid)).glob("*.seg"))


def segment_bytes_on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("*/*.seg"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def failing_syncfs(fd: int) -> None:
    raise OSError(errno.EIO, "Input/output error")
