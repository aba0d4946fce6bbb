"""The file-backed per-client queues: round trips, recovery from damage, handle cap, reader,
group commit and rollback on a real full filesystem."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import fill_disk, small_tmpfs

from msgprof.config import ACK_MODES, SYNC_METHODS
from msgprof.store.queue import (
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    CorruptData,
    QueueReader,
    QueueStore,
    StorageFailure,
    StorageFull,
    StoreError,
    encode_record,
    segment_header,
    segment_name,
)
from msgprof.store.wal import read_wal
from msgprof.wire.protocol import Status


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


# ------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("method", SYNC_METHODS)
@pytest.mark.parametrize("mode", ACK_MODES)
def test_round_trip(tmp_path: Path, mode: str, method: str) -> None:
    with QueueStore(tmp_path, ack_after=mode, flush_interval_ms=1, sync_method=method) as store:
        for seq in range(1, 21):
            for cid in (1, 2, 3):
                store.append(cid, seq, payload(cid, seq))
            assert store.commit() == {}
        assert store.last_seq(2) == 20
        assert store.last_seq(99) == 0
        assert store.stats()["records"] == 60
    assert store.disk_bytes() == segment_bytes_on_disk(tmp_path)
    reader = QueueReader(tmp_path)
    assert reader.client_ids() == [1, 2, 3]
    for cid in (1, 2, 3):
        assert stored(tmp_path, cid) == list(range(1, 21))
    reopen_and_extend(tmp_path, 3, 20, 25, ack_after=mode, sync_method=method)
    assert stored(tmp_path, 3) == list(range(1, 26))


def test_append_checks_sequence_and_ids(tmp_path: Path) -> None:
    with QueueStore(tmp_path) as store:
        with pytest.raises(ValueError):
            store.append(1, 2, b"x")  # must start at 1
        store.append(1, 1, b"x")
        assert store.last_seq(1) == 1  # includes appended, uncommitted records
        with pytest.raises(ValueError):
            store.append(1, 1, b"x")
        for bad in (0, -1, 2**31, "1"):
            with pytest.raises(ValueError):
                store.append(bad, 1, b"x")  # type: ignore[arg-type]
        assert store.commit() == {}
        store.append(1, 2, b"")  # empty payloads are records too
        assert store.commit() == {}
    assert [r.payload for r in QueueReader(tmp_path).records(1)] == [b"x", b""]


def test_uncommitted_records_are_not_stored(tmp_path: Path) -> None:
    store = QueueStore(tmp_path)
    fill(store, 1, 3)
    store.append(1, 4, b"never acknowledged")
    store.append(2, 1, b"never acknowledged")
    store.close()
    store.close()  # idempotent
    assert (store.last_seq(1), store.last_seq(2)) == (3, 0)
    with pytest.raises(StoreError):
        store.append(1, 4, b"after close")
    with pytest.raises(StoreError):
        store.commit()
    assert stored(tmp_path, 1) == [1, 2, 3]
    assert stored(tmp_path, 2) == []


def test_one_store_per_directory(tmp_path: Path) -> None:
    with QueueStore(tmp_path), pytest.raises(StorageFailure):
        QueueStore(tmp_path)
    QueueStore(tmp_path).close()  # free again once closed


def test_segments_roll(tmp_path: Path) -> None:
    record = RECORD_HEADER_SIZE + 40
    with QueueStore(tmp_path, segment_bytes=SEGMENT_HEADER_SIZE + 3 * record) as store:
        for seq in range(1, 11):
            store.append(7, seq, payload(7, seq))
            assert store.commit() == {}
        store.flush()  # from the write-ahead log into segments, split as if one commit each
        assert store.stats()["segments_created"] == 4
    names = [p.name for p in segments(tmp_path, 7)]
    assert names == [segment_name(s) for s in (1, 4, 7, 10)]
    assert stored(tmp_path, 7) == list(range(1, 11))
    assert (tmp_path / "7" / names[0]).read_bytes()[:SEGMENT_HEADER_SIZE] == segment_header(7, 1)
    reopen_and_extend(tmp_path, 7, 10, 12, segment_bytes=SEGMENT_HEADER_SIZE + 3 * record)
    assert stored(tmp_path, 7) == list(range(1, 13))


def test_record_format_is_the_documented_one(tmp_path: Path) -> None:
    with QueueStore(tmp_path) as store:
        store.append(5, 1, b"hello")
        store.append(5, 2, b"")
        assert store.commit() == {}
    data = (tmp_path / "5" / segment_name(1)).read_bytes()
    expected = segment_header(5, 1) + encode_record(1, b"hello") + encode_record(2, b"")
    assert data == expected
    # the example in docs/storage.md
    assert data[:45].hex(" ") == (
        "4d 50 51 53 01 00 18 00 05 00 00 00 01 00 00 00 00 00 00 00 c5 13 4d 1f "
        "05 00 00 00 9c ce d0 22 01 00 00 00 00 00 00 00 68 65 6c 6c 6f"
    )
    QueueReader(tmp_path).commit(5, 42)
    assert (tmp_path / "5" / "committed").read_bytes().hex(" ") == (
        "4d 50 51 43 01 00 00 00 2a 00 00 00 00 00 00 00 bb fe 46 0c"
    )


# ---------------------------------------------------------------------------------- recovery


def test_torn_tail_at_every_offset(tmp_path: Path) -> None:
    """Cut the newest segment at every byte offset, from inside its header to inside its last
    record: recovery keeps every complete record, last_seq follows, appends continue."""
    src = tmp_path / "src"
    record = RECORD_HEADER_SIZE + 10
    with QueueStore(src, segment_bytes=SEGMENT_HEADER_SIZE + 2 * record) as store:
        for seq in range(1, 5):
            store.append(1, seq, payload(1, seq, 10))
            assert store.commit() == {}
    _, newest = segments(src, 1)  # records 1-2 and 3-4
    full = newest.read_bytes()
    assert len(full) == SEGMENT_HEADER_SIZE + 2 * record
    rec4 = SEGMENT_HEADER_SIZE + record
    for size in range(len(full)):
        root = tmp_path / f"cut{size}"
        shutil.copytree(src, root)
        target = root / "1" / newest.name
        target.write_bytes(full[:size])
        expected = 2 if size < rec4 else 3
        with QueueStore(root) as store:
            assert store.last_seq(1) == expected, size
            cuts = store.recovery
            if size < SEGMENT_HEADER_SIZE:
                assert [(c.reason, c.offset, c.bytes_cut) for c in cuts] == [
                    ("torn_header", 0, size)
                ]
                assert target.read_bytes() == segment_header(1, 3)  # rewritten from its name
            elif size in (SEGMENT_HEADER_SIZE, rec4):
                assert cuts == []  # ends on a record boundary: nothing to cut
            else:
                boundary = SEGMENT_HEADER_SIZE if size < rec4 else rec4
                assert [(c.reason, c.offset, c.bytes_cut) for c in cuts] == [
                    ("incomplete_record", boundary, size - boundary)
                ]
                assert (cuts[0].client_id, cuts[0].path) == (1, target)
            assert store.disk_bytes() == segment_bytes_on_disk(root)
            fill(store, 1, 5, size=10)
        with QueueStore(root) as store:
            assert store.recovery == []
        assert stored(root, 1) == [1, 2, 3, 4, 5], size
        shutil.rmtree(root)


@pytest.mark.parametrize("field", ["length", "crc", "seq", "payload"])
def test_flipped_byte_mid_segment(tmp_path: Path, field: str) -> None:
    record = RECORD_HEADER_SIZE + 40
    with QueueStore(tmp_path, segment_bytes=SEGMENT_HEADER_SIZE + 20 * record) as store:
        fill(store, 1, 25)  # segment 1: records 1..20, segment 21: records 21..25
        fill(store, 2, 25)
    seg1, seg21 = segments(tmp_path, 1)
    damaged = SEGMENT_HEADER_SIZE + 9 * record  # record 10
    offset = damaged + {"length": 2, "crc": 5, "seq": 8, "payload": 30}[field]
    data = bytearray(seg1.read_bytes())
    data[offset] ^= 0x40
    seg1.write_bytes(bytes(data))

    with QueueStore(tmp_path) as store:
        assert store.last_seq(1) == 9
        assert store.last_seq(2) == 25  # other clients untouched
        cut, moved = store.recovery
        assert (cut.client_id, cut.path, cut.offset) == (1, seg1, damaged)
        assert cut.bytes_cut == 20 * record - 9 * record
        assert cut.reason in ("bad_checksum", "incomplete_record")
        assert (moved.path, moved.reason, moved.offset) == (seg21, "after_damage", 0)
        assert not seg21.exists()
        assert (tmp_path / ".quarantine" / "1" / seg21.name).exists()
        fill(store, 1, 12)
    assert stored(tmp_path, 1) == list(range(1, 13))
    with QueueStore(tmp_path) as store:
        assert store.recovery == []


def test_damaged_segment_header_is_moved_aside(tmp_path: Path) -> None:
    with QueueStore(tmp_path, segment_bytes=50) as store:
        fill(store, 1, 4)  # one record per segment
    segs = segments(tmp_path, 1)
    data = bytearray(segs[2].read_bytes())
    data[13] ^= 1  # first_seq in the header: its CRC no longer matches
    segs[2].write_bytes(bytes(data))
    with QueueStore(tmp_path) as store:
        assert [(c.path, c.reason) for c in store.recovery] == [
            (segs[2], "bad_header"),
            (segs[3], "after_damage"),
        ]
        assert store.last_seq(1) == 2
    assert stored(tmp_path, 1) == [1, 2]


def test_unsupported_format_version_is_not_touched(tmp_path: Path) -> None:
    import struct
    import zlib

    head = struct.pack("<4sHHIQ", b"MPQS", 2, 24, 1, 1)
    path = tmp_path / "1" / segment_name(1)
    path.parent.mkdir()
    path.write_bytes(head + struct.pack("<I", zlib.crc32(head)) + b"future data")
    with pytest.raises(StorageFailure, match="version 2"):
        QueueStore(tmp_path)
    assert path.stat().st_size == 24 + 11


def test_deleted_middle_segment(tmp_path: Path) -> None:
    with QueueStore(tmp_path, segment_bytes=SEGMENT_HEADER_SIZE + 3 * 56) as store:
        fill(store, 4, 9)  # segments 1-3, 4-6, 7-9
    _, middle, last = segments(tmp_path, 4)
    middle.unlink()
    with QueueStore(tmp_path) as store:
        assert store.last_seq(4) == 9
        (gap,) = store.recovery
        assert (gap.client_id, gap.path, gap.reason, gap.bytes_cut) == (4, last, "seq_gap", 0)
        assert "4..6" in gap.detail
        fill(store, 4, 10)
    assert stored(tmp_path, 4) == [1, 2, 3, 7, 8, 9, 10]


def test_empty_client_dirs_and_stray_files(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()  # a client without segments
    (tmp_path / "8").mkdir()
    (tmp_path / "8" / "notes.txt").write_text("x")
    (tmp_path / "8" / "123.seg").write_text("x")  # not a 20-digit name
    (tmp_path / "junk").mkdir()
    (tmp_path / "007").mkdir()  # not the canonical spelling of an id
    (tmp_path / "README").write_text("x")
    with QueueStore(tmp_path) as store:
        strays = {(c.client_id, c.path.name) for c in store.recovery}
        assert {c.reason for c in store.recovery} == {"stray_file"}
        assert strays == {(8, "notes.txt"), (8, "123.seg"), (None, "junk"), (None, "007"),
                          (None, "README")}  # fmt: skip
        assert store.last_seq(7) == 0 and store.stats()["clients"] == 2
        fill(store, 7, 2)
        fill(store, 8, 1)
    assert (tmp_path / "8" / "notes.txt").read_text() == "x"  # reported, never deleted
    assert QueueReader(tmp_path).client_ids() == [7, 8]
    assert stored(tmp_path, 7) == [1, 2]


def test_write_mode_survives_a_killed_process(tmp_path: Path) -> None:
    code = f"""
import os, signal
from pathlib import Path
from msgprof.store.queue import QueueStore
store = QueueStore(Path({str(tmp_path)!r}), ack_after="write")
for seq in range(1, 101):
    store.append(1, seq, b"m" * 100)
    assert store.commit() == {{}}
store.append(1, 101, b"never committed")
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == -9, proc.stderr.decode()
    with QueueStore(tmp_path) as store:
        assert store.recovery == [] and store.last_seq(1) == 100


# ------------------------------------------------------------------------------ file handles


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("method", ["fdatasync", "syncfs"])
@pytest.mark.parametrize("mode", ["write", "fsync"])
def test_open_handles_stay_under_the_cap(tmp_path: Path, mode: str, method: str) -> None:
    baseline = open_fds()
    with QueueStore(
        tmp_path, ack_after=mode, max_open_files=8, sync_threads=2, sync_method=method
    ) as store:
        for seq in range(1, 4):
            for cid in range(1, 51):
                store.append(cid, seq, payload(cid, seq))
            assert store.commit() == {}
            if mode == "write":
                store.flush()  # the log's records into the segments
            # the segments, the directory lock, (syncfs) the root directory, (write) the log
            assert open_fds() - baseline <= 8 + 1 + (method == "syncfs") + (mode == "write")
        stats = store.stats()
        assert stats["peak_open_handles"] == 8 and stats["open_handles"] <= 8
        assert stats["handle_evictions"] >= 3 * 50 - 8
        if mode == "fsync" and method == "fdatasync":
            assert stats["fsyncs"] == 3 * 50  # eviction syncs count as the file's one sync
        elif mode == "fsync":  # evicted files are left to the commit's one syncfs
            assert (stats["fsyncs"], stats["syncfs"], stats["dir_fsyncs"]) == (0, 3, 0)
    assert open_fds() == baseline
    for cid in (1, 25, 50):
        assert stored(tmp_path, cid) == [1, 2, 3]


# ----------------------------------------------------------------------------- group commit


@pytest.mark.parametrize("max_open_files", [256, 3])
def test_fsync_mode_group_commit(tmp_path: Path, max_open_files: int) -> None:
    with QueueStore(
        tmp_path, ack_after="fsync", max_open_files=max_open_files, sync_method="fdatasync"
    ) as store:
        fill(store, 1, 1)
        for cid in range(2, 11):
            fill(store, cid, 1)  # segment files exist now
        before = store.stats()["fsyncs"]
        for seq in range(2, 7):  # five records for each of ten clients, one commit
            for cid in range(1, 11):
                store.append(cid, seq, payload(cid, seq))
        assert store.commit() == {}
        assert store.stats()["fsyncs"] - before == 10  # one fdatasync per file, not per record
        assert store.commit() == {}
        assert store.stats()["fsyncs"] - before == 10  # nothing pending: no sync


def test_syncfs_mode_recovers_a_torn_tail_and_rolls_segments(tmp_path: Path) -> None:
    """Segments started under syncfs (no fdatasync, no directory fsync of their own) roll,
    a torn tail is cut at reopen, and appends go on in syncfs mode."""
    record = RECORD_HEADER_SIZE + 40
    options = dict(
        ack_after="fsync", sync_method="syncfs", segment_bytes=SEGMENT_HEADER_SIZE + 3 * record
    )
    with QueueStore(tmp_path, **options) as store:
        for seq in range(1, 8):
            for cid in (1, 2):
                store.append(cid, seq, payload(cid, seq))
            assert store.commit() == {}
        stats = store.stats()
        assert (stats["segments_created"], stats["syncfs"]) == (6, 7)
        assert (stats["fsyncs"], stats["dir_fsyncs"]) == (0, 0)
    assert [p.name for p in segments(tmp_path, 1)] == [segment_name(s) for s in (1, 4, 7)]
    newest = segments(tmp_path, 2)[-1]
    with open(newest, "ab") as f:
        f.write(encode_record(8, payload(2, 8))[:-5])  # a record torn by a crash
    with QueueStore(tmp_path, **options) as store:
        assert [(c.client_id, c.reason) for c in store.recovery] == [(2, "incomplete_record")]
        assert store.last_seq(2) == 7
        fill(store, 2, 9)
    with QueueStore(tmp_path, **options) as store:
        assert store.recovery == []
    assert stored(tmp_path, 1) == list(range(1, 8))
    assert stored(tmp_path, 2) == list(range(1, 10))


@pytest.mark.parametrize("max_open_files", [256, 8])
def test_syncfs_once_per_commit(tmp_path: Path, max_open_files: int) -> None:
    """50 clients in one commit: one syncfs, no fdatasync; new clients' segments and
    directories included (no fsync of their own)."""
    with QueueStore(
        tmp_path, ack_after="fsync", sync_method="syncfs", max_open_files=max_open_files
    ) as store:
        for seq in (1, 2, 3):
            before = store.stats()
            for cid in range(1, 51):
                store.append(cid, seq, payload(cid, seq))
            assert store.commit() == {}
            after = store.stats()
            assert after["syncfs"] - before["syncfs"] == 1
            assert after["fsyncs"] == after["dir_fsyncs"] == 0
        assert store.stats()["segments_created"] == 50
    for cid in (1, 25, 50):
        assert stored(tmp_path, cid) == [1, 2, 3]


def test_auto_sync_method_choice(tmp_path: Path) -> None:
    """auto: fdatasync for one or two existing files, one syncfs from three files on or as
    soon as a segment is new."""
    with QueueStore(tmp_path, ack_after="fsync") as store:
        assert store.sync_method == store.stats()["sync_method"] == "auto"
        fill(store, 1, 1)  # a new segment: syncfs
        assert (store.stats()["syncfs"], store.stats()["fsyncs"]) == (1, 0)
        fill(store, 1, 2)  # one file: fdatasync
        assert (store.stats()["syncfs"], store.stats()["fsyncs"]) == (1, 1)
        for cid in (2, 3):
            fill(store, cid, 1)
        assert store.stats()["syncfs"] == 3
        expected = {2: (3, 3), 3: (4, 3)}  # files in the commit: (syncfs, fsyncs) after it
        for files, counts in expected.items():
            for cid in range(1, files + 1):
                store.append(cid, store.last_seq(cid) + 1, b"x")
            assert store.commit() == {}
            assert (store.stats()["syncfs"], store.stats()["fsyncs"]) == counts
        assert store.stats()["dir_fsyncs"] == 0


def test_syncfs_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto falls back to fdatasync where syncfs is missing or cannot report I/O errors
    (Linux < 5.8); asking for syncfs there is refused."""
    import msgprof.store.queue as store_module

    for patch in (("_load_syncfs", lambda: None), ("_kernel_version", lambda: (5, 7))):
        monkeypatch.setattr(store_module, *patch)
        with QueueStore(tmp_path, ack_after="fsync") as store:
            assert store.sync_method == "fdatasync"
            for cid in (1, 2, 3):
                fill(store, cid, 2)
            assert store.stats()["syncfs"] == 0
        with pytest.raises(ValueError, match="syncfs"):
            QueueStore(tmp_path, sync_method="syncfs")
        monkeypatch.undo()
    with pytest.raises(ValueError):
        QueueStore(tmp_path, sync_method="fsync")
    QueueStore(tmp_path).close()  # a refused store left the directory free


def failing_syncfs(fd: int) -> None:
    raise OSError(errno.EIO, "Input/output error")


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
    monkeypatch.setattr(store, "_syncfs", failing_syncfs)
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
    monkeypatch.setattr(store, "_syncfs", failing_syncfs)
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


@pytest.mark.parametrize(("method", "fsyncs", "syncfs"), [("fdatasync", 5, 0), ("auto", 0, 1)])
def test_write_mode_syncs_only_on_flush(
    tmp_path: Path, method: str, fsyncs: int, syncfs: int
) -> None:
    store = QueueStore(tmp_path, ack_after="write", max_open_files=2, sync_method=method)
    for cid in range(1, 6):
        fill(store, cid, 3)
    assert (store.stats()["fsyncs"], store.stats()["syncfs"]) == (0, 0)
    store.close()  # flush: each written file once, open or evicted, or all with one syncfs
    assert (store.stats()["fsyncs"], store.stats()["syncfs"]) == (fsyncs, syncfs)
    assert store.stats()["dir_fsyncs"] == (6 if method == "fdatasync" else 0)  # root + 5 clients
    for cid in range(1, 6):
        assert stored(tmp_path, cid) == [1, 2, 3]


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
    assert (failures[1].status, failures[1].kind) == (Status.STORAGE_ERROR, "storage_error")
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
    import msgprof.store.queue as store_module

    monkeypatch.setattr(store_module, "WAL_FLUSH_INTERVAL_MS", 60_000.0)  # flush() runs passes
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


def test_write_mode_replays_the_log_of_a_killed_store(tmp_path: Path) -> None:
    """What a killed write-mode store logged but had not yet moved into segments is there
    after the next open; records already in segments are not stored twice."""
    code = f"""
import os
from msgprof.store.queue import QueueStore
store = QueueStore({str(tmp_path)!r})
for seq in range(1, 8):
    for cid in (1, 2):
        store.append(cid, seq, ("{{}}:{{}}:".format(cid, seq).encode() * 40)[:40])
    store.commit()
    if seq == 3:
        store.flush()  # 1-3 in the segments, 4-7 only in the log
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert list((tmp_path / ".wal").glob("*.wal"))
    suffixes = [r.path.suffix for r in QueueReader(tmp_path).records(1, after_seq=0)]
    assert suffixes == [".seg"] * 3 + [".wal"] * 4  # the reader finds them in the log meanwhile
    with QueueStore(tmp_path) as store:
        assert store.recovery == []
        assert store.stats()["wal_replayed_records"] == 8
        assert store.last_seq(1) == store.last_seq(2) == 7
    for cid in (1, 2):
        assert stored(tmp_path, cid) == list(range(1, 8))
    assert not list((tmp_path / ".wal").glob("*.wal"))


def test_a_commit_with_several_records_of_a_client_keeps_their_order(tmp_path: Path) -> None:
    """A commit's log entry has a row per record, a client's rows interleaved with others':
    the background pass, the reader and the replay of a killed store all keep seq order."""
    order = [(1, 1), (1, 2), (2, 1), (1, 3), (2, 2)]
    with QueueStore(tmp_path / "live") as store:
        for cid, seq in order:
            store.append(cid, seq, payload(cid, seq))
        assert store.commit() == {}
        store.flush()  # the background pass, run now
        assert store.stats()["records"] == 5
    assert stored(tmp_path / "live", 1) == [1, 2, 3]
    assert stored(tmp_path / "live", 2) == [1, 2]

    root = tmp_path / "killed"
    code = f"""
import os
from msgprof.store.queue import QueueStore
store = QueueStore({str(root)!r})
for cid, seq in {order!r}:
    store.append(cid, seq, ("{{}}:{{}}:".format(cid, seq).encode() * 40)[:40])
store.commit()
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    (path,) = (root / ".wal").glob("*.wal")
    assert [entry.client_id for entry in read_wal(path).entries] == [1, 1, 2, 1, 2]
    assert stored(root, 1) == [1, 2, 3]  # read from the log
    with QueueStore(root) as store:
        assert store.recovery == []
        assert store.stats()["wal_replayed_records"] == 5
        assert (store.last_seq(1), store.last_seq(2)) == (3, 2)
    assert stored(root, 1) == [1, 2, 3] and stored(root, 2) == [1, 2]
    assert {r.path.suffix for r in QueueReader(root).records(1, after_seq=0)} == {".seg"}


def test_a_torn_log_entry_is_cut_and_the_rest_replayed(tmp_path: Path) -> None:
    """A commit's log write that was cut short (the server died in it) was never acknowledged:
    recovery reports it and replays the complete entries before it."""
    code = f"""
import os
from msgprof.store.queue import QueueStore
store = QueueStore({str(tmp_path)!r})
for seq in (1, 2):
    store.append(1, seq, b"a" * 40)
    store.append(2, seq, b"b" * 40)
    store.commit()
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    (path,) = (tmp_path / ".wal").glob("*.wal")
    data = path.read_bytes()
    entry = 12 + 2 * 8 + 2 * (RECORD_HEADER_SIZE + 40)  # fixed part, table, two bodies
    assert len(data) == 20 + 2 * entry
    path.write_bytes(data[:-7])  # the second commit's entry torn
    with QueueStore(tmp_path) as store:
        cuts = [(c.client_id, c.path, c.offset, c.bytes_cut, c.reason) for c in store.recovery]
        assert cuts == [(None, path, 20 + entry, entry - 7, "incomplete_entry")]
        assert store.last_seq(1) == store.last_seq(2) == 1
        assert store.stats()["wal_replayed_records"] == 2
    assert [r.payload for r in QueueReader(tmp_path).records(1, after_seq=0)] == [b"a" * 40]
    assert not list((tmp_path / ".wal").glob("*.wal"))


# ------------------------------------------------------------------------------------ reader


def test_reader_commit_and_delete_consumed(tmp_path: Path) -> None:
    with QueueStore(tmp_path, segment_bytes=SEGMENT_HEADER_SIZE + 3 * 56) as store:
        fill(store, 3, 10)  # segments 1-3, 4-6, 7-9, 10
    reader = QueueReader(tmp_path)
    assert reader.committed(3) == 0
    assert [r.seq for r in reader.records(3)] == list(range(1, 11))
    assert [r.seq for r in reader.records(3, after_seq=5)] == list(range(6, 11))
    rec = next(reader.records(3, after_seq=4))
    assert rec.path.name == segment_name(4) and rec.offset == SEGMENT_HEADER_SIZE + 56
    reader.commit(3, 5)
    assert QueueReader(tmp_path).committed(3) == 5
    assert [r.seq for r in reader.records(3)] == list(range(6, 11))
    assert not (tmp_path / "3" / "committed.tmp").exists()
    assert reader.delete_consumed(3) == 1  # only 1-3 is fully consumed
    reader.commit(3, 10)
    assert reader.delete_consumed(3) == 2  # never the newest segment
    assert [p.name for p in segments(tmp_path, 3)] == [segment_name(10)]
    assert list(reader.records(3)) == []
    with QueueStore(tmp_path) as store:  # the store continues after deleted segments
        assert store.recovery == [] and store.last_seq(3) == 10
        fill(store, 3, 11)
    assert [r.seq for r in reader.records(3)] == [11]
    with pytest.raises(ValueError):
        reader.commit(99, 1)


def test_reader_stops_at_a_torn_tail_and_reports_damage(tmp_path: Path) -> None:
    with QueueStore(tmp_path, segment_bytes=SEGMENT_HEADER_SIZE + 3 * 56) as store:
        fill(store, 1, 5)
    first, newest = segments(tmp_path, 1)
    with open(newest, "ab") as f:
        f.write(encode_record(6, payload(1, 6))[:30])  # a write in progress
    assert stored(tmp_path, 1) == [1, 2, 3, 4, 5]
    data = bytearray(first.read_bytes())
    data[-1] ^= 1
    first.write_bytes(bytes(data))
    with pytest.raises(CorruptData):
        stored(tmp_path, 1)


# ------------------------------------------------------------------------------- buffer mode


def test_buffer_mode_flushes_in_the_background(tmp_path: Path) -> None:
    with QueueStore(tmp_path, ack_after="buffer", flush_interval_ms=5) as store:
        fill(store, 1, 10)
        deadline = time.monotonic() + 5
        while store.stats()["buffered_bytes"] and time.monotonic() < deadline:
            time.sleep(0.005)
        assert store.stats()["buffered_bytes"] == 0
        assert stored(tmp_path, 1) == list(range(1, 11))
        # the first flush started a segment (syncfs), later ones fdatasync the one file
        assert store.stats()["syncfs"] == 1


def test_buffer_mode_backpressure_writes_synchronously(tmp_path: Path) -> None:
    with QueueStore(
        tmp_path, ack_after="buffer", flush_interval_ms=60_000, max_buffer_bytes=1000
    ) as store:
        for seq in range(1, 40):
            fill(store, 1, seq)
            assert store.stats()["buffered_bytes"] <= 1000
        assert store.disk_bytes() > 0  # written by commit, not by the (idle) flusher


# ------------------------------------------------------------------- full disk (real tmpfs)


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
    assert (err.status, err.kind) == (Status.STORAGE_FULL, "storage_full")
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
    import msgprof.store.queue as store_module

    monkeypatch.setattr(store_module, "WAL_FLUSH_INTERVAL_MS", 60_000.0)  # flush() moves them
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
        assert (err.status, err.kind) == (Status.STORAGE_FULL, "storage_full")
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


def test_torn_header_keeps_the_sequence_after_consumed_segments_are_deleted(
    tmp_path: Path,
) -> None:
    """A crash while starting a segment, after the reader deleted every older one: the name
    still says which seq comes next."""
    with QueueStore(tmp_path, segment_bytes=SEGMENT_HEADER_SIZE + 2 * 56) as store:
        fill(store, 1, 4)  # segments 1-2, 3-4
    reader = QueueReader(tmp_path)
    reader.commit(1, 4)
    newest = tmp_path / "1" / segment_name(5)
    newest.write_bytes(segment_header(1, 5)[:10])  # the start of segment 5, torn
    assert reader.delete_consumed(1) == 2
    with QueueStore(tmp_path) as store:
        assert [(c.path, c.reason) for c in store.recovery] == [(newest, "torn_header")]
        assert store.last_seq(1) == 4
        fill(store, 1, 5)
    assert [r.seq for r in reader.records(1)] == [5]
