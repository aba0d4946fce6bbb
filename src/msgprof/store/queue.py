"""File-backed per-client queues ("the accumulator"): append-only segment files per client.

The server appends every accepted message here and acknowledges it once it has reached the
configured acknowledgement point (`ack_after`): in the process buffer, written to the OS, or
made durable (`sync_method`: fdatasync of each file, or one syncfs of the filesystem per commit).
docs/storage.md is the on-disk contract; this module implements it.

Layout: ``root/<client_id>/<first_seq as 20 digits>.seg``. A segment is a 24-byte header followed by
records ``payload_len u32 | crc32 u32 | seq u64 | payload`` (little-endian, CRC over the 8 seq
bytes and the payload), so a torn or damaged tail is found and cut when the store is reopened.

In ``write`` mode a commit goes to the write-ahead log (`msgprof.wal`) with one write() for all
its clients, and a background flusher moves the records into the segment files every
WAL_FLUSH_INTERVAL_MS; opening a store replays whatever the log still holds.

Threading: `append`, `commit` and `last_seq` belong to one thread (the server loop). `flush`,
`close`, `stats` and `disk_bytes` may be called from any thread. In ``buffer`` mode a daemon
flusher thread writes and syncs the buffered records every `flush_interval_ms`; in ``write``
mode it writes the logged records to their segments.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import functools
import itertools
import logging
import os
import platform
import re
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Self

from msgprof.config import ACK_MODES, SYNC_METHODS
from msgprof.store.checksum import crc32
from msgprof.store.wal import (
    WAL_DIR,
    UnsupportedWal,
    WalEntry,
    WriteAheadLog,
    entry_header,
    parse_wal,
    read_wal,
    wal_files,
)
from msgprof.wire.protocol import MAX_CLIENT_ID, Status

__all__ = [
    "ACK_MODES",
    "SYNC_METHODS",
    "CorruptData",
    "QueueReader",
    "QueueStore",
    "Record",
    "RecoveryCut",
    "StorageFailure",
    "StorageFull",
    "StoreError",
    "encode_record",
    "segment_header",
    "segment_name",
]

#: "auto" takes one syncfs instead of fdatasyncs from this many files written in one batch on.
SYNCFS_MIN_FILES = 3
#: syncfs(2) reports write-back errors (errseq on the superblock) only from Linux 5.8 on.
SYNCFS_MIN_KERNEL = (5, 8)
#: write mode: how often logged records move into the segment files. Longer batches more
#: records per segment write() (the point of the log); the log holds this much traffic.
WAL_FLUSH_INTERVAL_MS = 100.0
_log = logging.getLogger(__name__)

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

assert SEGMENT_HEADER_SIZE == 24 and RECORD_HEADER_SIZE == 16 and COMMITTED.size == 20

_SEQ = struct.Struct("<Q")
_pack_seq, _pack_record = _SEQ.pack, RECORD_HEADER.pack  # bound once: append runs per message
_CRC = struct.Struct("<I")
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_CLIENT_NAME = re.compile(r"^[1-9]\d{0,9}$")
_KNOWN_CLIENT_FILES = frozenset({COMMITTED_NAME, COMMITTED_NAME + ".tmp"})
_KNOWN_ROOT_NAMES = frozenset({LOCK_NAME, QUARANTINE_NAME, WAL_DIR})
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_OPEN_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
_OPEN_NEW = _OPEN_APPEND | os.O_CREAT | os.O_EXCL


# --------------------------------------------------------------------------------------- errors


class StoreError(Exception):
    """A storage failure to answer with `status`; `kind` names it for counting."""

    status: Status = Status.STORAGE_ERROR
    kind: str = "storage_error"

    def __init__(self, message: str, *, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_

    @staticmethod
    def from_oserror(exc: OSError, what: str) -> StoreError:
        """StorageFull for ENOSPC/EDQUOT, StorageFailure for everything else."""
        cls = StorageFull if exc.errno in _FULL_ERRNOS else StorageFailure
        err = cls(f"{what}: {exc.strerror or exc}", errno_=exc.errno)
        err.__cause__ = exc
        return err


class StorageFull(StoreError):
    """No space left (ENOSPC) or quota exceeded (EDQUOT)."""

    status = Status.STORAGE_FULL
    kind = "storage_full"


class StorageFailure(StoreError):
    """EIO or any other I/O failure; also a file whose state can no longer be trusted."""

    status = Status.STORAGE_ERROR
    kind = "storage_error"


class CorruptData(StorageFailure):
    """The reader found a damaged record or file where damage cannot be a tail in progress."""

    kind = "corrupt"


# ------------------------------------------------------------------------------ format helpers


class Record(NamedTuple):
    """One stored message as the reader returns it; `offset` is the record's byte offset."""

    seq: int
    payload: bytes
    path: Path
    offset: int


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


def segment_header(client_id: int, first_seq: int) -> bytes:
    """The 24-byte header that starts every segment file."""
    return _sealed(
        SEGMENT_HEADER.pack(
            SEGMENT_MAGIC, SEGMENT_VERSION, SEGMENT_HEADER_SIZE, client_id, first_seq, 0
        )[:20]
    )


def _sealed(head: bytes) -> bytes:
    """`head` followed by its CRC-32 as u32 little-endian (segment header, committed file)."""
    return head + _CRC.pack(crc32(head))


def encode_record(seq: int, payload: bytes) -> bytes:
    """One framed record (header and payload), as stored."""
    crc = crc32(payload, crc32(_SEQ.pack(seq)))
    return RECORD_HEADER.pack(len(payload), crc, seq) + bytes(payload)


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


class _UnsupportedVersion(Exception):
    """A segment header with a valid checksum but another format version: never cut, refuse."""


def _check_header(buf: memoryview, client_id: int, first_seq: int) -> str | None:
    """None if the segment header is valid, else the recovery reason.

    Raises _UnsupportedVersion for an intact header of another format version: such a file is
    not ours to cut.
    """
    if len(buf) < SEGMENT_HEADER_SIZE:
        return "torn_header"
    magic, version, size, cid, first, crc = SEGMENT_HEADER.unpack_from(buf)
    if magic != SEGMENT_MAGIC or crc != crc32(buf[:20]):
        return "bad_header"
    if version != SEGMENT_VERSION or size != SEGMENT_HEADER_SIZE:
        raise _UnsupportedVersion(f"segment format version {version}, header size {size}")
    if cid != client_id or first != first_seq:
        return "bad_header"
    return None


class _Walk:
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

    def to_end(self) -> "_Walk":
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


def _segments(client_dir: Path) -> tuple[list[tuple[int, Path]], list[Path]]:
    """(first_seq, path) of every segment sorted by first_seq, and the stray entries."""
    segments, strays = [], []
    try:
        names = os.listdir(client_dir)
    except FileNotFoundError:
        return [], []
    for name in names:
        match = _SEGMENT_NAME.match(name)
        if match and int(match.group(1)) > 0:
            segments.append((int(match.group(1)), client_dir / name))
        elif name not in _KNOWN_CLIENT_FILES:
            strays.append(client_dir / name)
    segments.sort()
    return segments, sorted(strays)


def _client_dirs(root: Path) -> tuple[list[int], list[Path]]:
    """Client ids that have a directory under root (sorted), and the stray root entries."""
    ids, strays = [], []
    for name in os.listdir(root):
        path = root / name
        if _CLIENT_NAME.match(name) and int(name) <= MAX_CLIENT_ID and path.is_dir():
            ids.append(int(name))
        elif name not in _KNOWN_ROOT_NAMES:
            strays.append(path)
    return sorted(ids), sorted(strays)


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of data is written; a short write is continued, an error raised."""
    written = os.write(fd, data)
    if written != len(data):
        view = memoryview(data)
        while written < len(data):
            n = os.write(fd, view[written:])
            if n == 0:
                raise OSError(errno.EIO, "write() wrote nothing")
            written += n


def _write_synced(path: Path, data: bytes) -> None:
    """Replace a file's contents with `data` and fsync it (creating the file if needed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fdatasync_result(fd: int) -> OSError | None:
    try:
        os.fdatasync(fd)
    except OSError as exc:
        return exc
    return None


@functools.cache
def _load_syncfs() -> Callable[[int], None] | None:
    """syncfs(2) through libc as `f(fd)` raising OSError, or None where libc has none."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int

    def syncfs(fd: int) -> None:
        if fn(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return syncfs


def _kernel_version() -> tuple[int, int]:
    """(major, minor) of the running Linux kernel; (0, 0) elsewhere or when unreadable."""
    if platform.system() != "Linux":
        return (0, 0)
    match = re.match(r"(\d+)\.(\d+)", platform.release())
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _fdatasync_path(path: str) -> OSError | None:
    """Open a closed file again and fdatasync it; the error, if any."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        return exc
    try:
        return _fdatasync_result(fd)
    finally:
        os.close(fd)


def _check_client_id(client_id: int) -> int:
    if type(client_id) is not int or not 1 <= client_id <= MAX_CLIENT_ID:
        raise ValueError(f"client_id must be an int in 1..{MAX_CLIENT_ID}, got {client_id!r}")
    return client_id


# ---------------------------------------------------------------------------------------- store


class _Client:
    """Per-client state. `last_seq`, `pending*` belong to the server thread (`pending` and
    `pending_bytes` stay empty in write mode, where records go straight into the commit's log
    entry); `buffered*` and `error` are shared with the flusher (QueueStore._lock); file
    fields need QueueStore._io_lock."""

    __slots__ = (
        "buffered",
        "buffered_bytes",
        "buffered_first",
        "cid",
        "dir",
        "error",
        "has_dir",
        "last_seq",
        "new_seg",
        "pending",
        "pending_bytes",
        "pending_first",
        "poisoned",
        "seg_path",
        "seg_size",
        "sync_before",
        "sync_error",
        "unsynced",
    )

    def __init__(self, cid: int, directory: Path) -> None:
        self.cid = cid
        self.dir = directory
        self.has_dir = False
        self.last_seq = 0
        self.pending: list[bytes] = []  # header, payload, header, payload, ... since last commit
        self.pending_first = 0  # seq of the first record since the last commit
        self.pending_bytes = 0
        self.buffered: list[bytes] = []  # buffer/write mode: acknowledged, not yet in a segment
        self.buffered_first = 0
        self.buffered_bytes = 0
        self.error: StoreError | None = None  # sticky: new appends are refused while set
        self.poisoned = False  # the file could not be restored after a failure: never write again
        self.seg_path: str | None = None  # the segment appends go to (the newest)
        self.seg_size = 0
        self.unsynced = False  # written since the last sync
        self.sync_before = 0  # segment size before the write awaiting its sync
        # (path, size) of the previous newest segment while a segment started in this batch
        # awaits the batch's syncfs: a failed syncfs removes the new one and restores these.
        self.new_seg: tuple[str | None, int] | None = None
        self.sync_error: StoreError | None = None  # that fdatasync failed when evicted


class QueueStore:
    """Append-only per-client queues with a configurable acknowledgement point.

    Opening the store recovers it (see `recovery`); `append` buffers a record in memory and
    `commit` brings everything appended since the last commit to the `ack_after` point.

    `sync_method` says how written files are made durable (``fsync`` commits, ``buffer``
    flushes, `flush`): ``fdatasync`` each file; ``syncfs`` once for the store's filesystem
    after all files of the batch are written; ``auto`` syncfs for batches of
    SYNCFS_MIN_FILES files or more or with a new segment, else fdatasync. `sync_method` is
    the effective one: ``auto`` becomes ``fdatasync`` where syncfs is unavailable.
    """

    def __init__(
        self,
        root: Path,
        *,
        ack_after: str = "write",
        flush_interval_ms: float = 10.0,
        max_open_files: int = 256,
        segment_bytes: int = 64 << 20,
        max_buffer_bytes: int = 64 << 20,
        sync_threads: int = 4,
        sync_method: str = "auto",
    ) -> None:
        if ack_after not in ACK_MODES:
            raise ValueError(f"ack_after must be one of {ACK_MODES}, got {ack_after!r}")
        if sync_method not in SYNC_METHODS:
            raise ValueError(f"sync_method must be one of {SYNC_METHODS}, got {sync_method!r}")
        if max_open_files < 1:
            raise ValueError("max_open_files must be at least 1")
        if segment_bytes <= SEGMENT_HEADER_SIZE:
            raise ValueError(f"segment_bytes must exceed the {SEGMENT_HEADER_SIZE}-byte header")
        if max_buffer_bytes < 0 or flush_interval_ms <= 0 or sync_threads < 1:
            raise ValueError("max_buffer_bytes, flush_interval_ms and sync_threads must be > 0")
        self.root = Path(root)
        self.ack_after = ack_after
        self._durable = ack_after != "write"  # every write is followed by a sync
        self.sync_method = sync_method
        self._syncfs: Callable[[int], None] | None = None  # the hook; None: fdatasync only
        self._root_fd = -1  # syncfs is called on it (its errseq sample tracks what we saw)
        self._batch_syncfs = False  # the batch being written ends in one syncfs
        # the flusher's period: buffer mode's option; write mode moves its log at a fixed pace
        interval_ms = WAL_FLUSH_INTERVAL_MS if ack_after == "write" else flush_interval_ms
        self._flush_interval = interval_ms / 1000.0
        self._max_open = max_open_files
        self._segment_bytes = segment_bytes
        self._max_buffer = max_buffer_bytes

        self._lock = threading.Lock()  # buffered data and sticky errors (shared with flusher)
        self._io_lock = threading.Lock()  # file handles and writes; taken before _lock
        self._clients: dict[int, _Client] = {}
        self._dirty: list[_Client] = []  # buffer/fsync: clients with appends since the commit
        # write mode: the commit's log entry as append builds it (parts[0] is left for the
        # entry's header; then header, payload, ... of each record) and its table (client_id,
        # record bytes, ... per record); the logged commits the flusher has yet to take
        self._entry: list[bytes] | None = [b""] if ack_after == "write" else None
        self._table: list[int] = []
        self._logged: list[tuple[list[int], list[bytes]]] = []
        self._buffered: dict[int, _Client] = {}  # buffer/write mode: clients with buffered data
        self._buffered_bytes = 0
        self._retry_refused = False  # a flush failed for a client that may succeed later
        # some client may have a sticky error: set with every error, recomputed after each
        # background pass; spares write mode's commit a look at each of its clients
        self._refusing = False
        self._fds: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._unsynced_paths: set[str] = set()  # write mode: closed files not yet synced
        self._unsynced_dirs: set[str] = set()  # directories with entries not yet synced
        self._disk_bytes = 0
        self._closed = False
        self._counts = dict.fromkeys(
            (
                "records",
                "bytes_written",
                "commits",
                "fsyncs",
                "syncfs",
                "dir_fsyncs",
                "peak_open_handles",
                "handle_evictions",
                "rolled_back_records",
                "segments_created",
                "wal_replayed_records",
            ),
            0,
        )
        self._flush_errors: collections.Counter[str] = collections.Counter()

        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise StorageFailure(f"{self.root} is already open by another store") from exc
        try:
            self.recovery: list[RecoveryCut] = self._recover()
        except OSError as exc:
            os.close(self._lock_fd)
            raise StoreError.from_oserror(exc, f"recovering {self.root}") from exc
        except BaseException:
            os.close(self._lock_fd)
            raise
        if sync_method != "fdatasync":
            try:
                self._setup_syncfs()
            except BaseException:
                os.close(self._lock_fd)
                raise
        self._sync_pool: ThreadPoolExecutor | None = None
        if self._durable and sync_threads > 1:
            self._sync_pool = ThreadPoolExecutor(sync_threads, "msgprof-store-sync")
        self._wal: WriteAheadLog | None = None
        self._flusher: threading.Thread | None = None
        try:
            self._replay_wal()
            if ack_after == "write":
                self._wal = WriteAheadLog(self.root / WAL_DIR)
        except OSError as exc:
            self._release_all()
            what = f"opening the write-ahead log of {self.root}"
            raise StoreError.from_oserror(exc, what) from exc
        except BaseException:
            self._release_all()
            raise
        self._stop = threading.Event()
        if ack_after in ("buffer", "write"):
            self._flusher = threading.Thread(
                target=self._flusher_loop, name="msgprof-store-flusher", daemon=True
            )
            self._flusher.start()

    def _setup_syncfs(self) -> None:
        """Enable syncfs if libc has it, the kernel reports write-back errors through it and a
        first call on the root directory works. That call also takes in any write-back error
        the filesystem had before this store opened, so no commit is blamed for it. Otherwise
        ``auto`` falls back to fdatasync and ``syncfs`` raises ValueError."""
        fn = _load_syncfs()
        if fn is None:
            problem = "libc has no syncfs()"
        elif _kernel_version() < SYNCFS_MIN_KERNEL:
            problem = f"Linux {platform.release()} < 5.8: syncfs() does not report I/O errors"
        else:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fn(fd)
            except OSError as exc:
                if exc.errno not in (errno.EIO, *_FULL_ERRNOS):
                    os.close(fd)
                    fn, problem = None, f"syncfs() failed: {exc.strerror or exc}"
                else:
                    _log.warning("%s: an earlier write-back error: %s", self.root, exc)
            if fn is not None:
                self._syncfs, self._root_fd = fn, fd
                return
        if self.sync_method == "syncfs":
            raise ValueError(f"sync_method 'syncfs' is not available: {problem}")
        _log.info("%s: fdatasync only (%s)", self.root, problem)
        self.sync_method = "fdatasync"

    # ------------------------------------------------------------------------------ recovery

    def _recover(self) -> list[RecoveryCut]:
        cuts: list[RecoveryCut] = []
        ids, strays = _client_dirs(self.root)
        cuts += [RecoveryCut(None, p, 0, 0, "stray_file") for p in strays]
        touched_dirs = set()
        for cid in ids:
            st = _Client(cid, self.root / str(cid))
            st.has_dir = True
            self._clients[cid] = st
            before = len(cuts)
            self._recover_client(st, cuts)
            if len(cuts) > before:
                touched_dirs.add(st.dir)
        for directory in touched_dirs:
            _fsync_dir(directory)
        return cuts

    def _recover_client(self, st: _Client, cuts: list[RecoveryCut]) -> None:
        """Check every segment of one client in seq order; cut at the first damage."""
        segments, strays = _segments(st.dir)
        cuts += [RecoveryCut(st.cid, p, 0, 0, "stray_file") for p in strays]
        prev_last = None  # last seq of the previous intact segment
        for index, (first, path) in enumerate(segments):
            data = memoryview(_read(path))
            try:
                reason = _check_header(data, st.cid, first)
            except _UnsupportedVersion as exc:
                raise StorageFailure(f"{path}: {exc}; not opened") from None
            if reason is None and prev_last is not None and first <= prev_last:
                reason = "bad_seq"
            if reason in ("bad_header", "bad_seq"):
                target = self._quarantine(st, path)
                cuts.append(RecoveryCut(st.cid, path, 0, len(data), reason, f"moved to {target}"))
                self._move_aside(st, segments[index + 1 :], cuts)
                return
            if reason == "torn_header":
                # The name and the directory say what the header was: write it again, so the
                # segment still tells which seq comes next (older segments may be deleted).
                cuts.append(RecoveryCut(st.cid, path, 0, len(data), reason, "header rewritten"))
                data = memoryview(segment_header(st.cid, first))
                _write_synced(path, bytes(data))
            elif prev_last is not None and first != prev_last + 1:
                detail = f"seq {prev_last + 1}..{first - 1} missing"
                cuts.append(RecoveryCut(st.cid, path, 0, 0, "seq_gap", detail))
            walk = _Walk(data, first).to_end()
            if walk.reason is not None:
                self._truncate(path, walk.end)
                cuts.append(RecoveryCut(st.cid, path, walk.end, len(data) - walk.end, walk.reason))
                data = data[: walk.end]
            st.seg_path, st.seg_size = str(path), len(data)
            st.last_seq = prev_last = walk.seq - 1
            self._disk_bytes += len(data)
            if reason is not None or walk.reason is not None:
                self._move_aside(st, segments[index + 1 :], cuts)
                return

    def _replay_wal(self) -> None:
        """Move what the write-ahead log still holds (a server killed in write mode) into the
        segment files, sync them, then delete the log. Records already in a segment are
        skipped; a record that would leave a gap is not replayed (it is reported as a cut).
        Raises StoreError if the records cannot be written: the log stays for the next try."""
        files = wal_files(self.root / WAL_DIR)
        if not files:
            return
        batch: dict[int, tuple[_Client, list[bytes], int]] = {}  # parts: header, payload, ...
        stopped: set[int] = set()  # clients with a gap: nothing more of theirs is replayed
        for _number, path in files:
            try:
                contents = read_wal(path)
            except UnsupportedWal as exc:
                raise StorageFailure(f"{exc}; not opened") from None
            if contents.reason is not None:
                cut = contents.size - contents.end
                self.recovery.append(RecoveryCut(None, path, contents.end, cut, contents.reason))
            for entry in contents.entries:
                self._replay_entry(path, entry, batch, stopped)
        replayed = list(batch.values())
        failures, _ = self._persist_in_segments(
            [(st, parts, first, sum(map(len, parts))) for st, parts, first in replayed]
        )
        if failures:
            first = next(iter(failures.values()))
            raise type(first)(f"replaying the write-ahead log: {first}", errno_=first.errno)
        self.flush()
        replayed_records = sum(st.last_seq - first + 1 for st, _, first in replayed)
        self._counts["wal_replayed_records"] = replayed_records
        for _number, path in files:
            os.unlink(path)
        _fsync_dir(self.root / WAL_DIR)
        _log.info(
            "%s: replayed %d records of %d clients from %d write-ahead log file(s)",
            self.root,
            replayed_records,
            len(replayed),
            len(files),
        )

    def _replay_entry(
        self,
        path: Path,
        entry: WalEntry,
        batch: dict[int, tuple[_Client, list[bytes], int]],
        stopped: set[int],
    ) -> None:
        """Add the records of one log entry that continue their client's sequence to `batch`."""
        cid = entry.client_id
        if cid in stopped:
            return
        body = entry.body
        walk = _entry_walk(body)
        if walk is None or not 0 < cid <= MAX_CLIENT_ID:
            self.recovery.append(RecoveryCut(None, path, entry.offset, len(body), "bad_entry"))
            return
        st = self._clients.get(cid)
        if st is None:  # no segment yet (a directory may exist)
            st = self._new_client(cid)
            st.has_dir = st.dir.is_dir()
        for offset, seq, payload in walk:
            if seq <= st.last_seq:
                continue  # in a segment already
            if seq != st.last_seq + 1:
                detail = f"seq {st.last_seq + 1}..{seq - 1} missing"
                cut = RecoveryCut(cid, path, entry.offset, len(body), "wal_gap", detail)
                self.recovery.append(cut)
                stopped.add(cid)
                return
            if cid not in batch:
                batch[cid] = (st, [], seq)
            header = bytes(body[offset : offset + RECORD_HEADER_SIZE])
            batch[cid][1].extend((header, bytes(payload)))
            st.last_seq = seq
        if walk.reason is not None:
            self.recovery.append(RecoveryCut(cid, path, entry.offset, len(body), walk.reason))
            stopped.add(cid)

    def _move_aside(
        self, st: _Client, later: list[tuple[int, Path]], cuts: list[RecoveryCut]
    ) -> None:
        """Segments after a damaged one cannot continue the sequence: move them aside."""
        for _, path in later:
            size = path.stat().st_size
            target = self._quarantine(st, path)
            cuts.append(RecoveryCut(st.cid, path, 0, size, "after_damage", f"moved to {target}"))

    def _quarantine(self, st: _Client, path: Path) -> Path:
        directory = self.root / QUARANTINE_NAME / str(st.cid)
        directory.mkdir(parents=True, exist_ok=True)
        target, n = directory / path.name, 0
        while target.exists():
            n += 1
            target = directory / f"{path.name}.{n}"
        os.rename(path, target)
        for synced in (directory, directory.parent, self.root):
            _fsync_dir(synced)
        return target

    @staticmethod
    def _truncate(path: Path, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    # ----------------------------------------------------------------------------- hot path

    def last_seq(self, client_id: int) -> int:
        """Highest seq stored or appended for the client; 0 when there is none."""
        st = self._clients.get(client_id)
        return 0 if st is None else st.last_seq

    def append(self, client_id: int, seq: int, payload: bytes) -> None:
        """Frame one record in memory; `commit` makes it count. No system calls."""
        st = self._clients.get(client_id)
        if st is None:
            st = self._new_client(client_id)
        if seq != st.last_seq + 1:
            raise ValueError(f"client {client_id}: seq {seq} does not follow {st.last_seq}")
        size = len(payload)
        if size > MAX_PAYLOAD:
            raise ValueError(f"payload of {size} bytes exceeds {MAX_PAYLOAD}")
        header = _pack_record(size, crc32(payload, crc32(_pack_seq(seq))), seq)
        entry = self._entry
        if entry is not None:  # write mode: straight into the commit's log entry
            entry.append(header)
            entry.append(payload)
            table = self._table
            table.append(client_id)
            table.append(RECORD_HEADER_SIZE + size)
        else:  # (also write mode once closed: `_entry` is None then)
            if not st.pending:
                if self._closed:
                    raise StorageFailure("store is closed")
                st.pending_first = seq
                self._dirty.append(st)
            st.pending += (header, payload)
            st.pending_bytes += RECORD_HEADER_SIZE + size
        st.last_seq = seq

    def _new_client(self, client_id: int) -> _Client:
        st = _Client(_check_client_id(client_id), self.root / str(client_id))
        self._clients[client_id] = st
        return st

    def commit(self) -> dict[int, StoreError]:
        """Bring every record appended since the last commit to the acknowledgement point.

        Returns the failed clients; their records of this commit are rolled back completely
        (nothing of them stays in a file, `last_seq` is restored).
        """
        if self._closed:
            raise StorageFailure("store is closed")
        self._counts["commits"] += 1
        if self._wal is not None:
            return self._commit_logged()
        dirty, self._dirty = self._dirty, []
        if not dirty:
            return {}
        if self._flusher is not None:
            return self._commit_buffer(dirty)
        with self._io_lock:
            failures = self._persist_batch([(st, st.pending, st.pending_first) for st in dirty])
        return self._settle(dirty, failures)

    def _settle(
        self, dirty: list[_Client], failures: dict[int, StoreError]
    ) -> dict[int, StoreError]:
        """End a commit: count the records that made it, roll back the failed clients' ones."""
        records = rolled_back = 0
        for st in dirty:
            n = (st.last_seq - st.pending_first) + 1
            if st.cid in failures:
                st.last_seq = st.pending_first - 1
                rolled_back += n
            else:
                records += n
            st.pending = []
            st.pending_bytes = 0
        self._counts["records"] += records
        self._counts["rolled_back_records"] += rolled_back
        return failures

    def _commit_buffer(self, dirty: list[_Client]) -> dict[int, StoreError]:
        """buffer mode: hand the records to the flusher."""
        incoming = sum(st.pending_bytes for st in dirty)
        if self._buffered_bytes + incoming > self._max_buffer or self._retry_refused:
            self._flush_buffered()  # backpressure, or a retry: the disk may have room again
        failures: dict[int, StoreError] = {}
        with self._lock:
            for st in dirty:
                if st.error is not None:
                    failures[st.cid] = st.error
                    continue
                self._hand_over(st)
        return self._settle(dirty, failures)

    def _hand_over(self, st: _Client) -> None:
        """Move a client's pending records to the flusher's buffer. Caller holds _lock."""
        if not st.buffered:
            st.buffered_first = st.pending_first
            self._buffered[st.cid] = st
        st.buffered += st.pending
        st.buffered_bytes += st.pending_bytes
        self._buffered_bytes += st.pending_bytes

    def _commit_logged(self) -> dict[int, StoreError]:
        """write mode: log the commit's entry, which `append` built, with one write(), and
        leave it to the flusher, which sorts the records into their clients' segments. Per
        record this costs nothing beyond what `append` did: the hot path of the server."""
        table, parts = self._table, self._entry
        if not table or parts is None:
            return {}
        self._table, self._entry = [], [b""]
        if self._buffered_bytes > self._max_buffer or self._retry_refused:
            self._flush_buffered()  # backpressure, or a retry: the disk may have room again
        failures: dict[int, StoreError] = {}
        logged_table, logged_parts = table, parts
        with self._lock:
            if self._refusing:
                clients = self._clients
                for cid in dict.fromkeys(table[0::2]):
                    error = clients[cid].error
                    if error is not None:
                        failures[cid] = error
                if failures:
                    logged_table, logged_parts = _entry_without(table, parts, failures)
            if logged_table:
                nbytes = sum(logged_table[1::2])
                logged_parts[0] = entry_header(logged_table, nbytes)
                try:
                    self._wal.append(b"".join(logged_parts))  # type: ignore[union-attr]
                except OSError as exc:
                    err = self._failed(exc, "writing the write-ahead log")
                    failures.update(
                        (cid, _client_error(err, cid))
                        for cid in dict.fromkeys(table[0::2])
                        if cid not in failures
                    )
                else:
                    self._logged.append((logged_table, logged_parts))
                    self._buffered_bytes += nbytes
                    self._counts["records"] += len(logged_table) // 2
        if failures:
            firsts = _first_seqs(table, parts)
            failed = []
            for cid in failures:
                st = self._clients[cid]
                st.pending_first = firsts[cid]
                failed.append(st)
            self._settle(failed, failures)
        return failures

    def _take_logged(self) -> None:
        """write mode: sort the records of the logged commits into their clients' buffers,
        in order. Caller holds _lock."""
        logged, self._logged = self._logged, []
        clients, buffered = self._clients, self._buffered
        for table, parts in logged:
            records = iter(parts)
            next(records)  # the entry's header
            for cid, size, header, payload in zip(table[0::2], table[1::2], records, records):
                st = clients[cid]
                if not st.buffered:
                    st.buffered_first = _SEQ.unpack_from(header, 8)[0]
                    buffered[cid] = st
                st.buffered += (header, payload)
                st.buffered_bytes += size

    # -------------------------------------------------------------------------------- files

    def _persist_batch(
        self, batch: list[tuple[_Client, list[bytes], int]]
    ) -> dict[int, StoreError]:
        """Write each client's records (one os.write per client) and, in buffer/fsync mode,
        sync every file written (group commit: one fdatasync per file, or one syncfs, per
        batch; the method is chosen before writing, see _wants_syncfs).

        Returns the failed clients. A failed client's file is restored to its size before the
        batch (no torn record stays behind); if even that fails the client is poisoned.
        Caller holds _io_lock.
        """
        failures: dict[int, StoreError] = {}
        to_sync: list[_Client] = []
        self._batch_syncfs = self._durable and self._wants_syncfs(
            sum(not st.poisoned for st, _, _ in batch),
            any(self._starts_segment(st) for st, _, _ in batch),
        )
        try:
            for st, parts, first_seq in batch:
                try:
                    self._write(st, parts, first_seq)
                except StoreError as err:
                    failures[st.cid] = err
                    continue
                if self._durable:
                    to_sync.append(st)
            if to_sync and self._batch_syncfs:
                self._syncfs_written(to_sync, failures)
            elif to_sync:
                self._sync_written(to_sync, failures)
        finally:
            self._batch_syncfs = False
        return failures

    def _wants_syncfs(self, files: int, new_segment: bool) -> bool:
        """Whether syncing `files` files (`new_segment`: one of them, or a directory entry,
        is new) takes one syncfs rather than fdatasyncs."""
        if self._syncfs is None or files == 0:
            return False
        return self.sync_method == "syncfs" or files >= SYNCFS_MIN_FILES or new_segment

    def _starts_segment(self, st: _Client) -> bool:
        return not st.poisoned and (st.seg_path is None or st.seg_size >= self._segment_bytes)

    def _write(self, st: _Client, parts: list[bytes], first_seq: int) -> None:
        """Append records to the client's newest segment (a new one when it is full). Raises
        StoreError after restoring the file. In buffer/fsync mode the data is left for
        _sync_written (st.unsynced, st.sync_before); a new segment is synced right here."""
        if st.poisoned:  # a fresh error each time: re-raising one would grow its traceback
            raise StorageFailure(f"client {st.cid}: queue file unusable until the store reopens")
        data = b"".join(parts)
        if self._starts_segment(st):
            self._write_new_segment(st, data, first_seq)
            return
        before = st.seg_size
        fd = -1
        try:
            fd = self._fd(st)
            _write_all(fd, data)
        except OSError as exc:
            err = self._failed(exc, f"client {st.cid}: writing {len(data)} bytes")
            if fd >= 0:
                self._truncate_fd(st, fd, before)
            raise err from exc
        st.seg_size += len(data)
        st.sync_before = before
        st.unsynced = True
        self._disk_bytes += len(data)
        self._counts["bytes_written"] += len(data)

    def _sync_written(self, written: list[_Client], failures: dict[int, StoreError]) -> None:
        """fdatasync the files written in this batch, in parallel when sync_threads > 1.
        A file evicted meanwhile was synced on eviction (st.sync_error says if that failed).
        A failed fdatasync is never retried: the batch's bytes are cut off the file again."""
        jobs: list[tuple[_Client, int]] = []
        for st in written:
            if st.sync_error is not None:
                failures[st.cid], st.sync_error = st.sync_error, None
            elif st.unsynced:
                jobs.append((st, self._fds[st.cid]))
        if not jobs:
            return
        self._counts["fsyncs"] += len(jobs)
        if self._sync_pool is not None and len(jobs) > 1:
            results = list(self._sync_pool.map(_fdatasync_result, [fd for _, fd in jobs]))
        else:
            results = [_fdatasync_result(fd) for _, fd in jobs]
        for (st, fd), exc in zip(jobs, results):
            st.unsynced = False
            if exc is not None:
                failures[st.cid] = self._failed(exc, f"client {st.cid}: fdatasync")
                self._truncate_fd(st, fd, st.sync_before)

    def _syncfs_written(self, written: list[_Client], failures: dict[int, StoreError]) -> None:
        """One syncfs for every file written in this batch, the new segments and directory
        entries included. A failed syncfs leaves every one of those files in an unknown state
        (it does not say which one failed): each client of the batch is rolled back, as for a
        failed fdatasync, and none is retried as if it had succeeded."""
        err = self._syncfs_all()
        for st in written:
            new_seg, st.new_seg = st.new_seg, None
            if not st.unsynced:  # poisoned meanwhile: its error is already set
                continue
            st.unsynced = False
            if err is not None:
                failures[st.cid] = _client_error(err, st.cid)
                self._undo_write(st, new_seg)

    def _syncfs_all(self) -> StoreError | None:
        """Call the syncfs hook on the root; None on success, which also makes the pending
        directory entries durable, else the error (counted once)."""
        self._counts["syncfs"] += 1
        try:
            self._syncfs(self._root_fd)  # type: ignore[misc]
        except OSError as exc:
            return self._failed(exc, "syncfs")
        self._unsynced_dirs.clear()
        return None

    def _undo_write(self, st: _Client, new_seg: tuple[str | None, int] | None) -> None:
        """Take back a batch's write after its sync failed: a segment started in the batch is
        removed (the previous one is the newest again), else the file is cut to its old size."""
        if new_seg is None:
            self._truncate_fd(st, self._fds.get(st.cid), st.sync_before)
            return
        path = st.seg_path
        self._release_fd(st)
        try:
            os.unlink(path)  # type: ignore[arg-type]
        except OSError as exc:
            self._poison(st, exc)
            return
        self._disk_bytes -= st.seg_size
        st.seg_path, st.seg_size = new_seg

    def _failed(self, exc: OSError, what: str) -> StoreError:
        err = StoreError.from_oserror(exc, what)
        self._flush_errors[err.kind] += 1
        return err

    def _truncate_fd(self, st: _Client, fd: int | None, size: int) -> None:
        """Cut a failed write off again (through `fd`, or the path when the file is closed);
        poison the client if the file cannot be restored."""
        try:
            if fd is None:
                os.truncate(st.seg_path, size)  # type: ignore[arg-type]
            else:
                os.ftruncate(fd, size)
        except OSError as exc:
            self._poison(st, exc)
            return
        self._disk_bytes -= st.seg_size - size
        st.seg_size = size

    def _write_new_segment(self, st: _Client, data: bytes, first_seq: int) -> None:
        """Start a segment named after its first record; header and records go in one write.
        In buffer/fsync mode the file and its directory are synced right away, unless the batch
        ends in a syncfs: that covers them (and a failed one removes the file again, st.new_seg).
        On failure the new file is removed and the previous segment stays the newest."""
        path = os.path.join(st.dir, segment_name(first_seq))
        fd = -1
        try:
            if not st.has_dir:
                os.makedirs(st.dir, exist_ok=True)
                st.has_dir = True
                self._unsynced_dirs.add(str(self.root))
            self._release_fd(st)
            fd = os.open(path, _OPEN_NEW, 0o644)
            self._track_fd(st.cid, fd)
            data = segment_header(st.cid, first_seq) + data
            _write_all(fd, data)
            self._unsynced_dirs.add(str(st.dir))
            if self._durable and not self._batch_syncfs:
                self._counts["fsyncs"] += 1
                os.fdatasync(fd)
                self._sync_dirs()
        except OSError as exc:
            err = self._failed(exc, f"client {st.cid}: starting {path}")
            if fd >= 0:
                self._release_fd(st)
                try:
                    os.unlink(path)
                except OSError as uexc:
                    self._poison(st, uexc)
            raise err from exc
        if self._batch_syncfs:
            st.new_seg = (st.seg_path, st.seg_size)
        st.seg_path, st.seg_size = path, len(data)
        st.unsynced = not self._durable or self._batch_syncfs
        self._disk_bytes += len(data)
        self._counts["bytes_written"] += len(data)
        self._counts["segments_created"] += 1

    def _sync_dirs(self) -> None:
        while self._unsynced_dirs:
            directory = self._unsynced_dirs.pop()
            try:
                _fsync_dir(directory)
            except OSError:
                self._unsynced_dirs.add(directory)
                raise
            self._counts["dir_fsyncs"] += 1

    def _poison(self, st: _Client, exc: OSError) -> None:
        """The file could not be restored after a failed write: it may end in a partial
        record, so nothing more is appended to it until the store is reopened (recovery cuts)."""
        st.poisoned = True
        st.error = StorageFailure(f"client {st.cid}: queue file left unusable: {exc}")
        self._refusing = True
        st.unsynced = False
        self._release_fd(st)

    def _fd(self, st: _Client) -> int:
        """The open descriptor of the client's current segment (LRU, reopened when evicted)."""
        fd = self._fds.get(st.cid)
        if fd is not None:
            self._fds.move_to_end(st.cid)
            return fd
        fd = os.open(st.seg_path, _OPEN_APPEND)  # type: ignore[arg-type]
        self._track_fd(st.cid, fd)
        return fd

    def _track_fd(self, cid: int, fd: int) -> None:
        fds = self._fds
        while len(fds) >= self._max_open:
            self._evict()
        fds[cid] = fd
        self._counts["peak_open_handles"] = max(self._counts["peak_open_handles"], len(fds))

    def _evict(self) -> None:
        cid, fd = self._fds.popitem(last=False)
        self._counts["handle_evictions"] += 1
        self._close_fd(self._clients[cid], fd)

    def _release_fd(self, st: _Client) -> None:
        fd = self._fds.pop(st.cid, None)
        if fd is not None:
            self._close_fd(st, fd)

    def _close_fd(self, st: _Client, fd: int) -> None:
        """Close a segment's descriptor. In buffer/fsync mode a file written in the current
        batch but not yet synced is fdatasynced first (a failure cuts the batch's bytes off
        again and is reported through st.sync_error), unless the batch ends in a syncfs,
        which covers closed files too; in write mode it is remembered for `flush`."""
        try:
            if st.unsynced and not self._batch_syncfs:
                st.unsynced = False
                if not self._durable:
                    self._unsynced_paths.add(st.seg_path)  # type: ignore[arg-type]
                else:
                    self._counts["fsyncs"] += 1
                    exc = _fdatasync_result(fd)
                    if exc is not None:
                        st.sync_error = self._failed(exc, f"client {st.cid}: fdatasync")
                        self._truncate_fd(st, fd, st.sync_before)
        finally:
            os.close(fd)

    # ----------------------------------------------------------------------------- flushing

    def _flusher_loop(self) -> None:
        while not self._stop.wait(self._flush_interval):
            if self._buffered or self._logged:
                try:
                    self._flush_buffered()
                except Exception:  # noqa: BLE001 - keep flushing; logged and counted
                    self._flush_errors["unexpected"] += 1
                    _log.exception("background flush failed")

    def _flush_buffered(self) -> dict[int, StoreError]:
        """Write (and in buffer mode fdatasync) all buffered records. A client whose write
        fails keeps its data buffered (retried next time) and gets a sticky error that refuses
        its new appends. In write mode the log is rotated with the same lock held, so the
        retired log files hold exactly what this flush takes: they are deleted once all of it,
        and whatever earlier flushes failed to write, is in the segments."""
        with self._io_lock:
            with self._lock:
                if self._logged:
                    self._take_logged()
                taken = [
                    (st, st.buffered, st.buffered_first, st.buffered_bytes)
                    for st in self._buffered.values()
                ]
                self._buffered = {}
                for st, *_ in taken:
                    st.buffered, st.buffered_bytes = [], 0
                if self._wal is not None:
                    try:
                        self._wal.rotate()
                    except OSError as exc:  # harmless: the current file is kept until later
                        self._flush_errors["wal_rotate"] += 1
                        _log.warning("%s: cannot start a new log file: %s", self.root, exc)
            failures, unwritten = self._persist_in_segments(taken)
            if self._wal is not None and not failures:
                self._wal.release()
            self._retry_refused = any(not self._clients[cid].poisoned for cid in failures)
            with self._lock:
                for st, _parts, _first, nbytes in taken:
                    err = failures.get(st.cid)
                    if err is None:
                        self._buffered_bytes -= nbytes
                        if not st.poisoned:
                            st.error = None
                        continue
                    parts, first, left = unwritten[st.cid]
                    self._buffered_bytes -= nbytes - left
                    if st.buffered:  # committed meanwhile: keep the order
                        parts = parts + st.buffered
                    else:
                        self._buffered[st.cid] = st
                    st.buffered, st.buffered_first = parts, first
                    st.buffered_bytes += left
                    st.error = err
                if failures or self._refusing:
                    self._refusing = any(st.error is not None for st in self._clients.values())
        return failures

    def _persist_in_segments(
        self, taken: list[tuple[_Client, list[bytes], int, int]]
    ) -> tuple[dict[int, StoreError], dict[int, tuple[list[bytes], int, int]]]:
        """`_persist_batch` for many records per client (`parts`: header, payload, ...): a
        client's records are split where its segment fills, as if they had come one commit
        each, and written in rounds of one piece per client. Returns the failed clients and,
        for each, what was not written (parts, first seq, bytes). Caller holds _io_lock."""
        pieces = {
            st.cid: self._segment_pieces(st, parts, first, nbytes)
            for st, parts, first, nbytes in taken
        }
        failures: dict[int, StoreError] = {}
        unwritten: dict[int, tuple[list[bytes], int, int]] = {}
        for depth in range(max((len(p) for p in pieces.values()), default=0)):
            batch = [
                (st, *pieces[st.cid][depth][:2])
                for st, *_ in taken
                if st.cid not in failures and depth < len(pieces[st.cid])
            ]
            for cid, err in self._persist_batch(batch).items():
                failures[cid] = err
                rest = pieces[cid][depth:]
                left = [part for piece in rest for part in piece[0]]
                unwritten[cid] = (left, rest[0][1], sum(piece[2] for piece in rest))
        return failures, unwritten

    def _segment_pieces(
        self, st: _Client, parts: list[bytes], first: int, nbytes: int
    ) -> list[tuple[list[bytes], int, int]]:
        """Split a client's records (parts, first seq, bytes) where a segment reaches
        segment_bytes: a record goes into the current segment while that is not full."""
        limit = self._segment_bytes
        if st.seg_path is not None and st.seg_size + nbytes <= limit:
            return [(parts, first, nbytes)]
        in_current = st.seg_path is not None and st.seg_size < limit
        size = st.seg_size if in_current else SEGMENT_HEADER_SIZE
        pieces = []
        start, start_seq, piece_bytes = 0, first, 0
        for i in range(0, len(parts), 2):
            if size >= limit and i > start:
                pieces.append((parts[start:i], start_seq, piece_bytes))
                start, start_seq, piece_bytes = i, first + i // 2, 0
                size = SEGMENT_HEADER_SIZE
            record = len(parts[i]) + len(parts[i + 1])
            size += record
            piece_bytes += record
        pieces.append((parts[start:], start_seq, piece_bytes))
        return pieces

    def flush(self) -> None:
        """Write and sync everything committed but not yet durable.

        Records appended but not committed are left alone (they were never acknowledged).
        Raises a StoreError summarising the failures after trying every file.
        """
        failures: dict[int, StoreError] = {}
        if self._flusher is not None:
            failures.update(self._flush_buffered())
        with self._io_lock:
            # write mode: files written and never synced, open ones and closed ones
            open_fds = [(cid, fd) for cid, fd in self._fds.items() if self._clients[cid].unsynced]
            closed = sorted(self._unsynced_paths)
            if self._wants_syncfs(len(open_fds) + len(closed), bool(self._unsynced_dirs)):
                failures.update(self._syncfs_flush(open_fds, closed))
            else:
                self._fdatasync_flush(open_fds, closed, failures)
            errors = list(failures.values())
            try:
                self._sync_dirs()
            except OSError as exc:
                errors.append(self._failed(exc, "syncing directories"))
        if errors:
            raise _summary(errors, failures, "flush")

    def _syncfs_flush(
        self, open_fds: list[tuple[int, int]], closed: list[str]
    ) -> dict[int, StoreError]:
        """flush() with one syncfs; when it fails, every file it was to cover is in an
        unknown state: each of those clients is poisoned (its records were acknowledged)."""
        cids = {cid for cid, _ in open_fds} | {_path_client(path) for path in closed}
        for cid, _ in open_fds:
            self._clients[cid].unsynced = False
        self._unsynced_paths.clear()
        err = self._syncfs_all()
        if err is None:
            return {}
        return {
            cid: self._failed_sync(self._clients[cid], _client_error(err, cid), "syncfs")
            for cid in sorted(cids)
        }

    def _fdatasync_flush(
        self, open_fds: list[tuple[int, int]], closed: list[str], failures: dict[int, StoreError]
    ) -> None:
        """flush() with one fdatasync per file (closed files are reopened for it)."""
        for cid, _ in open_fds:
            self._clients[cid].unsynced = False
        self._unsynced_paths.clear()
        results = [(cid, _fdatasync_result(fd)) for cid, fd in open_fds]
        results += [(_path_client(path), _fdatasync_path(path)) for path in closed]
        self._counts["fsyncs"] += len(results)
        for cid, exc in results:
            if exc is not None:
                err = self._failed(exc, f"client {cid}: fdatasync")
                failures[cid] = self._failed_sync(self._clients[cid], err)

    def _failed_sync(self, st: _Client, err: StoreError, what: str = "fdatasync") -> StoreError:
        """A failed sync in flush() is never retried: what it covered is in an unknown state, so
        the client takes no more appends until the store is reopened and recovered."""
        st.poisoned = True
        st.error = StorageFailure(f"client {st.cid}: {what} failed, file state unknown")
        self._refusing = True
        return err

    def close(self) -> None:
        """Stop the flusher, flush, close every handle. Idempotent.

        Records appended but never committed are discarded: they were never acknowledged.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        for st in self._dirty:
            st.last_seq = st.pending_first - 1
            st.pending, st.pending_bytes = [], 0
        self._dirty = []
        if self._entry is not None:  # write mode: appended, never logged
            for cid, first in _first_seqs(self._table, self._entry).items():
                self._clients[cid].last_seq = first - 1
            self._table, self._entry = [], None  # later appends find the store closed
        try:
            self.flush()
            if self._wal is not None:  # every logged record is in its segment, synced
                self._wal.close(remove=True)
                _fsync_dir(self._wal.dir)
        finally:
            self._release_all()

    def _release_all(self) -> None:
        """Close every descriptor the store holds (the log's files stay for the next open)."""
        if self._sync_pool is not None:
            self._sync_pool.shutdown()
        if self._wal is not None:
            self._wal.close(remove=False)
        with self._io_lock:
            while self._fds:
                _, fd = self._fds.popitem()
                os.close(fd)
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1
        os.close(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------- figures

    def stats(self) -> dict:
        """Counters since the store was opened (a snapshot; see docs/storage.md)."""
        counts = dict(self._counts)
        counts.update(
            clients=len(self._clients),
            open_handles=len(self._fds),
            flush_errors=dict(self._flush_errors),
            recovery_cuts=len(self.recovery),
            wal_bytes=self._wal.bytes_written if self._wal is not None else 0,
            wal_files=self._wal.files_started if self._wal is not None else 0,
            buffered_bytes=self._buffered_bytes,
            poisoned_clients=sum(st.poisoned for st in list(self._clients.values())),
            disk_bytes=self._disk_bytes,
            sync_method=self.sync_method,
        )
        return counts

    def disk_bytes(self) -> int:
        """Bytes in the segment files this store knows (found at open plus written since)."""
        return self._disk_bytes


def _path_client(path: str) -> int:
    """The client id of a segment path (its directory's name)."""
    return int(os.path.basename(os.path.dirname(path)))


def _entry_without(
    table: list[int], parts: list[bytes], refused: dict[int, StoreError]
) -> tuple[list[int], list[bytes]]:
    """A commit's log entry (table, parts) without the records of the `refused` clients."""
    kept_table: list[int] = []
    kept_parts: list[bytes] = [b""]
    for i in range(0, len(table), 2):
        if table[i] not in refused:
            kept_table += table[i : i + 2]
            kept_parts += parts[i + 1 : i + 3]
    return kept_table, kept_parts


def _first_seqs(table: list[int], parts: list[bytes]) -> dict[int, int]:
    """Each client's first seq in a commit's log entry (table, parts)."""
    firsts: dict[int, int] = {}
    for i in range(0, len(table), 2):
        if table[i] not in firsts:
            firsts[table[i]] = _SEQ.unpack_from(parts[i + 1], 8)[0]
    return firsts


def _client_error(err: StoreError, cid: int) -> StoreError:
    """A client's own copy of an error that hit a whole batch (one object per client)."""
    copy = type(err)(f"client {cid}: {err}", errno_=err.errno)
    copy.__cause__ = err.__cause__
    return copy


def _summary(errors: list[StoreError], failures: dict[int, StoreError], what: str) -> StoreError:
    """One error standing for several (`failures` keeps them per client): StorageFull only if
    every failure was one."""
    cls = StorageFull if all(isinstance(e, StorageFull) for e in errors) else StorageFailure
    err = cls(f"{what} failed for {len(errors)} client(s); first: {errors[0]}")
    err.failures = failures  # type: ignore[attr-defined]
    return err


# --------------------------------------------------------------------------------------- reader


def _entry_walk(body: memoryview) -> _Walk | None:
    """A walk over the records of one write-ahead log entry's body, which start at whatever
    seq the first one carries; None if the body cannot hold a record."""
    if len(body) < RECORD_HEADER_SIZE:
        return None
    return _Walk(body, RECORD_HEADER.unpack_from(body)[2], start=0)


def _logged_records(f, path: Path, client_id: int, last: int) -> Iterator[Record]:
    """The client's records in one open log file that continue the sequence after `last`."""
    buf = memoryview(f.read())
    for entry in parse_wal(buf, path).entries:
        walk = _entry_walk(entry.body) if entry.client_id == client_id else None
        if walk is None:
            continue
        for offset, seq, payload in walk:
            if seq > last:
                if seq != last + 1:
                    return
                last = seq
                yield Record(seq, bytes(payload), path, entry.offset + offset)


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
        ids = set(_client_dirs(self.root)[0])
        for _number, path in wal_files(self.root / WAL_DIR):
            try:
                ids.update(entry.client_id for entry in read_wal(path).entries)
            except FileNotFoundError:
                continue  # moved into the segments meanwhile
        return sorted(ids)

    def _dir(self, client_id: int) -> Path:
        return self.root / str(_check_client_id(client_id))

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
                for record in _logged_records(f, path, client_id, last):
                    last = record.seq
                    yield record
        finally:
            for _path, f in logs:
                f.close()

    def _segment_records(self, client_id: int, after_seq: int) -> Iterator[Record]:
        segments, _ = _segments(self._dir(client_id))
        for index, (first, path) in enumerate(segments):
            newest = index == len(segments) - 1
            if not newest and segments[index + 1][0] - 1 <= after_seq:
                continue  # every record of this segment is <= after_seq
            data = memoryview(_read(path))
            try:
                reason = _check_header(data, client_id, first)
            except _UnsupportedVersion as exc:
                raise CorruptData(f"{path}: {exc}") from None
            if reason is not None:
                if newest and reason == "torn_header":
                    return
                raise CorruptData(f"{path}: {reason}")
            walk = _Walk(data, first)
            for offset, seq, payload in walk:
                if seq > after_seq:
                    yield Record(seq, bytes(payload), path, offset)
            if walk.reason is not None and not newest:
                raise CorruptData(f"{path}: {walk.reason} at offset {walk.end}")

    def committed(self, client_id: int) -> int:
        """The consumed offset persisted by `commit`; 0 if never committed."""
        path = self._dir(client_id) / COMMITTED_NAME
        try:
            data = _read(path)
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
        data = _sealed(COMMITTED.pack(COMMITTED_MAGIC, COMMITTED_VERSION, 0, seq, 0)[:16])
        tmp = directory / (COMMITTED_NAME + ".tmp")
        _write_synced(tmp, data)
        os.rename(tmp, directory / COMMITTED_NAME)
        _fsync_dir(directory)

    def delete_consumed(self, client_id: int) -> int:
        """Delete the segments whose records are all <= the committed offset, never the newest
        one (the store appends to it). Returns how many were deleted."""
        committed = self.committed(client_id)
        directory = self._dir(client_id)
        segments, _ = _segments(directory)
        deleted = 0
        for (_, path), (next_first, _) in itertools.pairwise(segments):
            if next_first - 1 > committed:
                break
            path.unlink()
            deleted += 1
        if deleted:
            _fsync_dir(directory)
        return deleted
