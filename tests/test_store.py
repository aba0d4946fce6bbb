"""The file-backed per-client queues: round trips, the documented format, the handle cap, the
reader, buffer mode, and what the store shares with the wire (the client-id bound) and does not
(statuses: the server chooses them).

Recovery is in test_store_recovery.py, sync methods in test_store_sync.py, failures (failed
syncs and writes, a real full disk) in test_store_failures.py."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest
from store_helpers import (
    fill,
    open_fds,
    payload,
    reopen_and_extend,
    segment_bytes_on_disk,
    segments,
    stored,
)

from msgprof.config import ACK_MODES, SYNC_METHODS
from msgprof.server.server import store_status
from msgprof.store import segment
from msgprof.store.errors import CorruptData, StorageFailure, StorageFull, StoreError
from msgprof.store.queue import QueueStore
from msgprof.store.reader import QueueReader
from msgprof.store.segment import (
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    encode_record,
    segment_header,
    segment_name,
)
from msgprof.wire import protocol
from msgprof.wire.protocol import Status

# --------------------------------------------------------------------------------- round trips


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


# -------------------------------------------------------------------------------- file handles


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


# -------------------------------------------------------------------------------------- reader


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


# --------------------------------------------------------------------------------- buffer mode


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


# ---------------------------------------------------------------------------- the wire's edge


def test_the_store_bounds_client_ids_as_the_wire_does() -> None:
    """The store keeps its own bound (docs/storage.md: directory names 1 … 2**31 − 1), so it
    imports nothing from the wire; the two must never drift apart."""
    assert segment.MAX_CLIENT_ID == protocol.MAX_CLIENT_ID == 2**31 - 1


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (StorageFull("no room"), Status.STORAGE_FULL),
        (StorageFailure("EIO"), Status.STORAGE_ERROR),
        (CorruptData("bad record"), Status.STORAGE_ERROR),
        (StoreError("other"), Status.STORAGE_ERROR),
    ],
)
def test_the_server_chooses_the_status_of_a_store_error(error: StoreError, status: int) -> None:
    assert store_status(error) == status


def test_no_store_module_imports_the_wire() -> None:
    """The store knows no sockets and no wire statuses (DESIGN.md, "Layout")."""
    for path in Path(segment.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not [n for n in names if n.split(".")[:2] == ["msgprof", "wire"]], path.name
