"""Opening a store: where each client's queue ends, what a crash left torn or damaged, and what
the write-ahead log still holds (docs/storage.md, "Recovery (opening a store)").

A loader, as Kafka's LogLoader is: it fixes the files (cuts torn tails, moves damaged segments
aside) and returns what it found, and the store builds itself from that. Writing the log's
records into their segments needs the store's segment writer, so `read_log` only says which
records continue which queue; the store writes them and then calls `remove_log`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from msgprof.store.errors import StorageFailure
from msgprof.store.segment import (
    MAX_CLIENT_ID,
    QUARANTINE_NAME,
    RECORD_HEADER_SIZE,
    WAL_DIR,
    UnsupportedVersion,
    Walk,
    check_header,
    client_dirs,
    read_file,
    segment_header,
    segments,
    write_synced,
)
from msgprof.store.sync import fsync_dir
from msgprof.store.wal import UnsupportedWal, WalEntry, entry_walk, read_wal, wal_files

_log = logging.getLogger("msgprof.store")


@dataclass(frozen=True)
class RecoveryCut:
    """Something recovery removed, moved aside or found odd when the store was opened.

    `offset`/`bytes_cut` say which bytes of `path` were dropped (0/0 for a report that drops
    nothing, e.g. ``seq_gap`` or ``stray_file``). `client_id` is None for a stray entry in root.
    """

    client_id: int | None
    path: Path
    offset: int
    bytes_cut: int
    reason: str
    detail: str = ""


class SegmentTail(NamedTuple):
    """Where a client's queue ends: its newest intact segment (None: it has none) and size,
    and the last seq stored."""

    seg_path: str | None
    seg_size: int
    last_seq: int


@dataclass
class RecoveredSegments:
    """Every client directory's tail, the findings, and the bytes of the segments kept."""

    tails: dict[int, SegmentTail]
    cuts: list[RecoveryCut]
    disk_bytes: int


@dataclass
class LogReplay:
    """What the log files hold beyond the segments: per client the records (parts: header,
    payload, ...) that continue its queue from `first`, every client a valid entry names with
    its last seq once those are written, and the findings."""

    files: list[Path]
    records: dict[int, tuple[list[bytes], int]] = field(default_factory=dict)
    last_seqs: dict[int, int] = field(default_factory=dict)
    cuts: list[RecoveryCut] = field(default_factory=list)

    def record_count(self) -> int:
        return sum(len(parts) // 2 for parts, _first in self.records.values())


# -------------------------------------------------------------------------------- segments


def recover_segments(root: Path) -> RecoveredSegments:
    """Check every client's segments; cut torn tails and move damage aside, durably."""
    cuts: list[RecoveryCut] = []
    ids, strays = client_dirs(root)
    cuts += [RecoveryCut(None, p, 0, 0, "stray_file") for p in strays]
    tails: dict[int, SegmentTail] = {}
    disk_bytes = 0
    touched_dirs = set()
    for cid in ids:
        before = len(cuts)
        tails[cid], kept = _recover_client(root, cid, cuts)
        disk_bytes += kept
        if len(cuts) > before:
            touched_dirs.add(root / str(cid))
    for directory in touched_dirs:
        fsync_dir(directory)
    return RecoveredSegments(tails, cuts, disk_bytes)


def _recover_client(root: Path, cid: int, cuts: list[RecoveryCut]) -> tuple[SegmentTail, int]:
    """Check every segment of one client in seq order; cut at the first damage. Returns the
    client's tail and the bytes of its segments kept."""
    found, strays = segments(root / str(cid))
    cuts += [RecoveryCut(cid, p, 0, 0, "stray_file") for p in strays]
    tail, kept = SegmentTail(None, 0, 0), 0
    prev_last = None  # last seq of the previous intact segment
    for index, (first, path) in enumerate(found):
        data = memoryview(read_file(path))
        try:
            reason = check_header(data, cid, first)
        except UnsupportedVersion as exc:
            raise StorageFailure(f"{path}: {exc}; not opened") from None
        if reason is None and prev_last is not None and first <= prev_last:
            reason = "bad_seq"
        if reason in ("bad_header", "bad_seq"):
            target = _quarantine(root, cid, path)
            cuts.append(RecoveryCut(cid, path, 0, len(data), reason, f"moved to {target}"))
            _move_aside(root, cid, found[index + 1 :], cuts)
            return tail, kept
        if reason == "torn_header":
            # The name and the directory say what the header was: write it again, so the
            # segment still tells which seq comes next (older segments may be deleted).
            cuts.append(RecoveryCut(cid, path, 0, len(data), reason, "header rewritten"))
            data = memoryview(segment_header(cid, first))
            write_synced(path, bytes(data))
        elif prev_last is not None and first != prev_last + 1:
            detail = f"seq {prev_last + 1}..{first - 1} missing"
            cuts.append(RecoveryCut(cid, path, 0, 0, "seq_gap", detail))
        walk = Walk(data, first).to_end()
        if walk.reason is not None:
            _truncate(path, walk.end)
            cuts.append(RecoveryCut(cid, path, walk.end, len(data) - walk.end, walk.reason))
            data = data[: walk.end]
        prev_last = walk.seq - 1
        tail = SegmentTail(str(path), len(data), prev_last)
        kept += len(data)
        if reason is not None or walk.reason is not None:
            _move_aside(root, cid, found[index + 1 :], cuts)
            return tail, kept
    return tail, kept


def _move_aside(
    root: Path, cid: int, later: list[tuple[int, Path]], cuts: list[RecoveryCut]
) -> None:
    """Segments after a damaged one cannot continue the sequence: move them aside."""
    for _, path in later:
        size = path.stat().st_size
        target = _quarantine(root, cid, path)
        cuts.append(RecoveryCut(cid, path, 0, size, "after_damage", f"moved to {target}"))


def _quarantine(root: Path, cid: int, path: Path) -> Path:
    """Move a segment to ``.quarantine/<cid>/`` (never overwriting one moved there before)."""
    directory = root / QUARANTINE_NAME / str(cid)
    directory.mkdir(parents=True, exist_ok=True)
    target, n = directory / path.name, 0
    while target.exists():
        n += 1
        target = directory / f"{path.name}.{n}"
    os.rename(path, target)
    for synced in (directory, directory.parent, root):
        fsync_dir(synced)
    return target


def _truncate(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- the log


def read_log(root: Path, last_seqs: Mapping[int, int]) -> LogReplay:
    """What the log files under `root` hold that continues each client's queue (`last_seqs`:
    the last seq in its segments). Records already in a segment are skipped; a record that
    would leave a gap is not replayed (it is reported as a cut), nor is anything after it."""
    replay = LogReplay([path for _number, path in wal_files(root / WAL_DIR)])
    stopped: set[int] = set()  # clients with a gap: nothing more of theirs is replayed
    for path in replay.files:
        try:
            contents = read_wal(path)
        except UnsupportedWal as exc:
            raise StorageFailure(f"{exc}; not opened") from None
        if contents.reason is not None:
            cut = contents.size - contents.end
            replay.cuts.append(RecoveryCut(None, path, contents.end, cut, contents.reason))
        for entry in contents.entries:
            if entry.client_id not in stopped:
                _replay_entry(replay, path, entry, last_seqs, stopped)
    return replay


def _replay_entry(
    replay: LogReplay,
    path: Path,
    entry: WalEntry,
    known: Mapping[int, int],
    stopped: set[int],
) -> None:
    """Add the records of one log entry that continue their client's sequence to `replay`."""
    cid = entry.client_id
    body = entry.body
    walk = entry_walk(body)
    if walk is None or not 0 < cid <= MAX_CLIENT_ID:
        replay.cuts.append(RecoveryCut(None, path, entry.offset, len(body), "bad_entry"))
        return
    last = replay.last_seqs.setdefault(cid, known.get(cid, 0))
    for offset, seq, payload in walk:
        if seq <= last:
            continue  # in a segment already
        if seq != last + 1:
            detail = f"seq {last + 1}..{seq - 1} missing"
            replay.cuts.append(RecoveryCut(cid, path, entry.offset, len(body), "wal_gap", detail))
            stopped.add(cid)
            return
        if cid not in replay.records:
            replay.records[cid] = ([], seq)
        header = bytes(body[offset : offset + RECORD_HEADER_SIZE])
        replay.records[cid][0].extend((header, bytes(payload)))
        replay.last_seqs[cid] = last = seq
    if walk.reason is not None:
        replay.cuts.append(RecoveryCut(cid, path, entry.offset, len(body), walk.reason))
        stopped.add(cid)


def remove_log(root: Path, replay: LogReplay) -> None:
    """Delete the replayed log files, once the store has every record of them in a segment,
    synced."""
    for path in replay.files:
        os.unlink(path)
    fsync_dir(root / WAL_DIR)
    _log.info(
        "%s: replayed %d records of %d clients from %d write-ahead log file(s)",
        root,
        replay.record_count(),
        len(replay.records),
        len(replay.files),
    )
