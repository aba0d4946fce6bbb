"""Opening a store after a crash or damage: torn tails cut at every offset, damaged segments
moved aside, gaps and strays reported, and the write-ahead log of a killed store replayed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from store_helpers import fill, payload, segment_bytes_on_disk, segments, stored

from msgprof.store.errors import StorageFailure
from msgprof.store.queue import QueueStore
from msgprof.store.reader import QueueReader
from msgprof.store.segment import (
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    segment_header,
    segment_name,
)
from msgprof.store.wal import read_wal

# ------------------------------------------------------------------------------------ segments


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


# ----------------------------------------------------------------------------- write-ahead log


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
