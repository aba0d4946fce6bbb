"""When the disk fails the store: failed syncs and writes roll back exactly the records they
covered (or poison a client whose file cannot be restored), the write-ahead log keeps what
has not reached a segment, and a real full filesystem (tmpfs) refuses and then recovers."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from conftest import fill_disk, small_tmpfs
from store_helpers import (
    failing_on,
    failing_syncfs,
    fill,
    payload,
    segment_bytes_on_disk,
    segments,
    stored,
)

from msgprof.server.server import store_status
from msgprof.store import modes
from msgprof.store.errors import StorageFailure, StorageFull
from msgprof.store.queue import QueueStore
from msgprof.store.reader import QueueReader
from msgprof.store.segment import RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE, segment_name
from msgprof.store.wal import read_wal
from msgprof.wire.protocol import Status

# --------------------------------------------------------------------- failed syncs and writes


@pytest.mark.parametrize("max_open_files", [256, 4])
def test_failed_syncfs_rolls_back_every_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_open_files: int
) -> None:
    """A failed syncfs does not say which file failed: every client of that commit is rolled
    back (existing segments cut, new ones removed, last_seq restored), none is taken as
    synced, and the store reopens with nothing half-written."""
    record = RECORD_HEADER_SIZE + 40
    options = dict(
        ack_after="fsync",
        sync_method="syncfs",
        max_open_files=max_open_files,
        segment_bytes=SEGMENT_HEADER_SIZE + 3 * record,
    )
    store = QueueStore(tmp_path, **options)
    for cid in range(1, 21):
        fill(store, cid, 2)
    fill(store, 1, 3)  # client 1's segment is full: its next record starts a segment
    sizes = {p: p.stat().st_size for p in tmp_path.glob("*/*.seg")}
    disk = store.disk_bytes()
    monkeypatch.setattr(store._writer, "_syncfs", failing_syncfs)
    for cid in range(1, 51):  # 20 known clients (one rolling a segment) and 30 new ones
        store.append(cid, store.last_seq(cid) + 1, payload(cid, 0, 100))
    failures = store.commit()
    assert sorted(failures) == list(range(1, 51))
    assert all(isinstance(e, StorageFailure) and "syncfs" in str(e) for e in failures.values())
    assert store.stats()["rolled_back_records"] == 50
    assert store.stats()["flush_errors"] == {"storage_error": 1}  # one failed call
    assert store.stats()["poisoned_clients"] == 0
    assert [store.last_seq(cid) for cid in (1, 2, 21)] == [3, 2, 0]
    assert {p: p.stat().st_size for p in tmp_path.glob("*/*.seg")} == sizes
    assert store.disk_bytes() == disk
    monkeypatch.undo()
    fill(store, 2, 3)  # the clients resend: written and synced afresh
    fill(store, 1, 4)  # the new segment again
    store.close()
    with QueueStore(tmp_path, **options) as store:
        assert store.recovery == []
        assert [store.last_seq(cid) for cid in (1, 2, 3, 21)] == [4, 3, 2, 0]
    assert [p.name for p in segments(tmp_path, 1)] == [segment_name(1), segment_name(4)]
    assert stored(tmp_path, 1) == [1, 2, 3, 4]
    assert stored(tmp_path, 2) == [1, 2, 3]


def flush_with_failing_syncfs(store: QueueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commit records of clients 1-3, then flush() with a failing syncfs: all three fail."""
    for cid in (1, 2, 3):
        fill(store, cid, 2)
    monkeypatch.setattr(store._writer, "_syncfs", failing_syncfs)
    with pytest.raises(StorageFailure) as info:
        store.flush()
    assert sorted(info.value.failures) == [1, 2, 3]  # type: ignore[attr-defined]
    monkeypatch.undo()


def test_failed_syncfs_in_a_buffer_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flush's clients keep their data buffered; the next flush writes it afresh."""
    store = QueueStore(tmp_path, ack_after="buffer", flush_interval_ms=60_000)
    flush_with_failing_syncfs(store, monkeypatch)
    assert store.stats()["buffered_bytes"] > 0
    assert segment_bytes_on_disk(tmp_path) == 0  # the new segments were removed again
    store.close()
    for cid in (1, 2, 3):
        assert stored(tmp_path, cid) == [1, 2]


def test_failed_syncfs_in_a_write_mode_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flush() cannot know what reached the disk: every client it covered is refused until
    the store is reopened."""
    store = QueueStore(tmp_path, ack_after="write")
    flush_with_failing_syncfs(store, monkeypatch)
    assert store.stats()["poisoned_clients"] == 3
    store.append(1, 3, b"x")
    assert isinstance(store.commit()[1], StorageFailure)
    store.close()
    with QueueStore(tmp_path) as store:
        assert store.recovery == []
        assert store.last_seq(1) == 2


@pytest.mark.parametrize("max_open_files", [256, 1])
def test_failed_fdatasync_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_open_files: int
) -> None:
    """A failed fdatasync is reported, never taken for success: that commit's bytes are cut
    off the file again and last_seq restored. With one handle, client 1's file is synced (and
    fails) when it is evicted for client 2's write."""
    store = QueueStore(tmp_path, ack_after="fsync", sync_threads=1, max_open_files=max_open_files)
    fill(store, 1, 3)
    fill(store, 2, 3)
    path = segments(tmp_path, 1)[0]
    size = path.stat().st_size
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", failing_on(path, real))
    for cid in (1, 2):
        store.append(cid, 4, payload(cid, 4))
    failures = store.commit()
    assert list(failures) == [1]
    assert isinstance(failures[1], StorageFailure)
    assert (store_status(failures[1]), failures[1].kind) == (Status.STORAGE_ERROR, "storage_error")
    assert store.last_seq(1) == 3 and store.last_seq(2) == 4
    assert path.stat().st_size == size
    assert store.stats()["rolled_back_records"] == 1
    monkeypatch.setattr(os, "fdatasync", real)
    fill(store, 1, 4)  # the client resends: written and synced afresh
    store.close()
    assert stored(tmp_path, 1) == [1, 2, 3, 4]


def test_client_is_poisoned_when_a_failed_write_cannot_be_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = QueueStore(tmp_path, ack_after="fsync")  # its commits write the segments themselves
    fill(store, 1, 2)
    fill(store, 2, 2)
    path = segments(tmp_path, 1)[0]

    def failing_truncate(fd: int, size: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", failing_on(path, os.write))
    monkeypatch.setattr(os, "ftruncate", failing_truncate)
    store.append(1, 3, b"x")
    assert isinstance(store.commit()[1], StorageFailure)
    monkeypatch.undo()
    assert store.stats()["poisoned_clients"] == 1
    store.append(1, 3, b"x")
    assert isinstance(store.commit()[1], StorageFailure)  # refused until reopened
    fill(store, 2, 3)  # others go on
    store.close()
    with QueueStore(tmp_path) as store:
        assert store.last_seq(1) == 2
        fill(store, 1, 3)


def test_write_mode_keeps_the_log_until_every_record_is_in_its_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record acknowledged from the write-ahead log whose segment write fails stays in the
    log (the client refuses new records meanwhile) until a later flush writes it."""
    store = QueueStore(tmp_path)
    fill(store, 1, 2)
    fill(store, 2, 2)
    store.flush()
    monkeypatch.setattr(os, "write", failing_on(segments(tmp_path, 1)[0], os.write))
    fill(store, 1, 3)  # logged and acknowledged
    fill(store, 2, 3)
    with pytest.raises(StorageFailure):
        store.flush()
    assert store.stats()["flush_errors"] == {"storage_error": 1}
    store.append(1, 4, payload(1, 4))
    store.append(2, 4, payload(2, 4))
    failures = store.commit()  # client 1 sticky until its records are written; 2 goes on
    assert list(failures) == [1] and isinstance(failures[1], StorageFailure)
    assert (store.last_seq(1), store.last_seq(2)) == (3, 4)
    assert list((tmp_path / ".wal").glob("*.wal"))  # the log still holds seq 3 of client 1
    monkeypatch.undo()
    store.flush()  # the retry writes it, and the log files are released
    fill(store, 1, 4)
    store.close()
    assert not list((tmp_path / ".wal").glob("*.wal"))
    assert stored(tmp_path, 1) == [1, 2, 3, 4]
    assert stored(tmp_path, 2) == [1, 2, 3, 4]


def test_write_mode_goes_on_in_the_same_log_file_when_no_new_one_can_be_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background pass that cannot start a new log file (no descriptor, no inode) keeps the
    current one: commits are still acknowledged, and a later pass retires and deletes it."""
    monkeypatch.setattr(modes, "WAL_FLUSH_INTERVAL_MS", 60_000.0)  # flush() runs passes
    store = QueueStore(tmp_path)
    fill(store, 1, 2)
    real_open = os.open

    def no_new_log_file(path, flags, *args):
        if str(path).endswith(".wal"):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_new_log_file)
    store.flush()  # the records reach their segment; the log stays in its file
    assert store.stats()["flush_errors"] == {"wal_rotate": 1}
    fill(store, 1, 4)  # still acknowledged
    (path,) = (tmp_path / ".wal").glob("*.wal")
    assert [e.client_id for e in read_wal(path).entries] == [1, 1, 1, 1]
    monkeypatch.undo()
    store.flush()
    assert not path.exists()  # retired by this pass and deleted after it
    store.close()
    assert stored(tmp_path, 1) == [1, 2, 3, 4]
    assert not list((tmp_path / ".wal").glob("*.wal"))


# ---------------------------------------------------------------------- full disk (real tmpfs)


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A 256 KiB tmpfs, so ENOSPC is real. Needs root."""
    with small_tmpfs(tmp_path / "mnt", "256k") as mount:
        yield mount


@pytest.mark.root
def test_disk_full_rolls_back_and_recovers(tiny_fs: Path) -> None:
    """fsync mode: each client's commit is its own segment write, so a full disk fails only
    the clients whose records do not fit."""
    mode = "fsync"
    root = tiny_fs / "queues"
    store = QueueStore(root, ack_after=mode)
    fill(store, 1, 5)
    fill(store, 2, 5)
    seg1 = segments(root, 1)[0]
    size1 = seg1.stat().st_size
    fill_disk(tiny_fs / "filler")

    # 20 KB does not fit: the write stops short (slack of the file's last page) or fails at
    # once, and either way nothing of it may stay. Client 2's small record fits in its slack.
    store.append(1, 6, payload(1, 6, 20_000))
    store.append(2, 6, payload(2, 6))
    store.append(3, 1, payload(3, 1))  # a new client needs a new file: no room for it either
    failures = store.commit()
    assert sorted(failures) == [1, 3]
    assert segments(root, 3) == []
    err = failures[1]
    assert isinstance(err, StorageFull)
    assert (store_status(err), err.kind) == (Status.STORAGE_FULL, "storage_full")
    assert store.last_seq(1) == 5 and store.last_seq(2) == 6 and store.last_seq(3) == 0
    assert seg1.stat().st_size == size1
    assert store.stats()["flush_errors"] == {"storage_full": 2}
    assert store.stats()["rolled_back_records"] == 2
    store.close()

    with QueueStore(root, ack_after=mode) as store:
        assert store.recovery == []  # no partial record was left behind
        assert store.last_seq(1) == 5
        (tiny_fs / "filler").unlink()
        store.append(1, 6, payload(1, 6, 20_000))
        assert store.commit() == {}
    assert stored(root, 1) == [1, 2, 3, 4, 5, 6]
    assert stored(root, 2) == [1, 2, 3, 4, 5, 6]


@pytest.mark.root
def test_disk_full_in_write_mode(tiny_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write mode: a commit is one write to the log, so a full disk refuses all of its clients
    (STORAGE_FULL) and leaves nothing of it in the log. Records logged before the disk filled
    stay in the log when they cannot reach their segments, and the next open writes them."""
    monkeypatch.setattr(modes, "WAL_FLUSH_INTERVAL_MS", 60_000.0)  # flush() moves them
    root = tiny_fs / "queues"
    store = QueueStore(root)
    fill(store, 1, 5)
    fill(store, 2, 5)
    store.flush()
    fill_disk(tiny_fs / "filler")
    store.append(1, 6, payload(1, 6, 20_000))
    store.append(2, 6, payload(2, 6))
    failures = store.commit()
    assert sorted(failures) == [1, 2]
    for err in failures.values():
        assert isinstance(err, StorageFull)
        assert (store_status(err), err.kind) == (Status.STORAGE_FULL, "storage_full")
    assert store.last_seq(1) == 5 and store.last_seq(2) == 5
    assert store.stats()["flush_errors"] == {"storage_full": 1}  # one write for both
    assert store.stats()["rolled_back_records"] == 2
    store.close()

    store = QueueStore(root)
    assert store.recovery == []  # no partial entry was left in the log
    assert store.last_seq(1) == 5
    (tiny_fs / "filler").unlink()
    store.append(1, 6, payload(1, 6, 20_000))
    assert store.commit() == {}
    store.flush()
    store.append(1, 7, payload(1, 7, 20_000))
    assert store.commit() == {}  # logged and acknowledged
    fill_disk(tiny_fs / "filler")
    with pytest.raises(StorageFull):
        store.close()  # no room in the segment: the record stays in the log
    where = [r.path.parent.name for r in QueueReader(root).records(1, after_seq=0)]
    assert where[-2:] == ["1", ".wal"]  # seq 6 in its segment, seq 7 in the log
    (tiny_fs / "filler").unlink()
    with QueueStore(root) as store:
        assert store.stats()["wal_replayed_records"] == 1
        assert store.last_seq(1) == 7
    assert stored(root, 1) == [1, 2, 3, 4, 5, 6, 7]
    assert stored(root, 2) == [1, 2, 3, 4, 5]


@pytest.mark.root
def test_disk_full_in_buffer_mode(tiny_fs: Path) -> None:
    root = tiny_fs / "queues"
    store = QueueStore(root, ack_after="buffer", flush_interval_ms=2)

    def wait_for(condition) -> None:
        deadline = time.monotonic() + 10
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.002)
        assert condition()

    fill(store, 1, 3)
    fill(store, 2, 3)
    wait_for(lambda: store.stats()["buffered_bytes"] == 0)
    fill_disk(tiny_fs / "filler")

    fill(store, 1, 4, size=20_000)  # acknowledged: it is in the buffer
    wait_for(lambda: store.stats()["flush_errors"].get("storage_full", 0) >= 1)  # background
    with pytest.raises(StorageFull):
        store.flush()  # also waits for the background round to finish
    assert store.stats()["buffered_bytes"] > 0  # kept, retried every interval
    store.append(1, 5, b"more")
    failures = store.commit()
    assert isinstance(failures.get(1), StorageFull)  # refused while its buffer cannot be written
    assert store.last_seq(1) == 4
    fill(store, 2, 4)  # other clients go on

    (tiny_fs / "filler").unlink()
    wait_for(lambda: store.stats()["buffered_bytes"] == 0)  # the flusher's retry succeeds
    fill(store, 1, 5)  # accepted again
    store.close()
    assert stored(root, 1) == [1, 2, 3, 4, 5]
    assert stored(root, 2) == [1, 2, 3, 4]
    with QueueStore(root) as store:
        assert store.recovery == []
