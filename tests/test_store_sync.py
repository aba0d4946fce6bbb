"""How the store makes writes durable: group commit (one sync per file per commit), syncfs once
per commit, the `auto` choice between them, and the fallback where syncfs is unavailable."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_helpers import fill, payload, segments, stored

from msgprof.store import sync
from msgprof.store.queue import QueueStore
from msgprof.store.segment import (
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    encode_record,
    segment_name,
)


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
    for patch in (("load_syncfs", lambda: None), ("kernel_version", lambda: (5, 7))):
        monkeypatch.setattr(sync, *patch)
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
