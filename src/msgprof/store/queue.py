"""File-backed per-client queues ("the accumulator"): append-only segment files per client.

The server appends every accepted message here and acknowledges it once it has reached the
configured acknowledgement point (`ack_after`): in the process buffer, written to the OS, or
made durable (`sync_method`: fdatasync of each file, or one syncfs of the filesystem per commit).
docs/storage.md is the on-disk contract.

`QueueStore` is the facade the server holds. Opening it locks the directory, recovers it
(`recovery`) and replays what the write-ahead log still holds; then the work is split between
one class per acknowledgement point (`modes`) and the segment writer they share (`writer`).

Threading: `append`, `commit` and `last_seq` belong to one thread (the server loop). `flush`,
`close`, `stats` and `disk_bytes` may be called from any thread. In ``buffer`` mode a daemon
flusher thread writes and syncs the buffered records every `flush_interval_ms`; in ``write``
mode it writes the logged records to their segments.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from msgprof.config import ACK_MODES, SYNC_METHODS
from msgprof.store.descriptors import PLAIN, Files
from msgprof.store.errors import StorageFailure, StoreError, summary
from msgprof.store.modes import MODES, Mode
from msgprof.store.recovery import (
    RecoveredSegments,
    RecoveryCut,
    read_log,
    recover_segments,
    remove_log,
)
from msgprof.store.segment import LOCK_NAME, SEGMENT_HEADER_SIZE
from msgprof.store.sync import SyncfsSetup, make_dir, open_syncfs
from msgprof.store.writer import SegmentWriter


def _check_options(
    ack_after: str,
    sync_method: str,
    max_open_files: int,
    segment_bytes: int,
    max_buffer_bytes: int,
    flush_interval_ms: float,
    sync_threads: int,
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


def _lock_root(root: Path) -> int:
    """Take the root's exclusive lock (one writing store per directory); its descriptor."""
    make_dir(root)
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise StorageFailure(f"{root} is already open by another store") from exc
    return fd


class QueueStore:
    """Append-only per-client queues with a configurable acknowledgement point.

    Opening the store recovers it (see `recovery`); `append` buffers a record in memory and
    `commit` brings everything appended since the last commit to the `ack_after` point.

    `sync_method` says how written files are made durable (``fsync`` commits, ``buffer``
    flushes, `flush`): ``fdatasync`` each file; ``syncfs`` once for the store's filesystem
    after all files of the batch are written; ``auto`` syncfs for batches of
    SYNCFS_MIN_FILES files or more or with a new segment, else fdatasync. `sync_method` is
    the effective one: ``auto`` becomes ``fdatasync`` where syncfs is unavailable.

    `files` opens and closes the files used while serving (segments, log files, directories to
    sync): plain os calls by default; a server passes a `DescriptorReserve`, so that connections
    cannot take the descriptors the store needs (msgprof.store.descriptors).
    """

    #: append(client_id, seq, payload): frame one record in memory; `commit` makes it count.
    #: No system calls. The mode's own method, bound when the store opens: the server calls it
    #: per message, so nothing chooses the mode on the way.
    append: Callable[[int, int, bytes], None]

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
        files: Files = PLAIN,
    ) -> None:
        _check_options(
            ack_after,
            sync_method,
            max_open_files,
            segment_bytes,
            max_buffer_bytes,
            flush_interval_ms,
            sync_threads,
        )
        self.root = Path(root)
        self.ack_after = ack_after
        self._closed = False
        self._lock_fd = _lock_root(self.root)
        recovered, syncfs = self._recover(sync_method)
        self.recovery: list[RecoveryCut] = recovered.cuts
        mode_class = MODES[ack_after]
        self._writer = writer = SegmentWriter(
            self.root,
            {},
            durable=mode_class.durable,
            segment_bytes=segment_bytes,
            max_open_files=max_open_files,
            sync_threads=sync_threads,
            syncfs=syncfs,
            disk_bytes=recovered.disk_bytes, files=files,
        )  # fmt: skip
        self._clients = writer.clients
        self._counts = writer.counts
        for cid, tail in recovered.tails.items():
            st = writer.add_client(cid)
            st.has_dir = True
            st.seg_path, st.seg_size, st.last_seq = tail
        try:
            self._replay_log()
            self._mode: Mode = mode_class(
                writer, flush_interval_ms=flush_interval_ms, max_buffer_bytes=max_buffer_bytes
            )
        except OSError as exc:
            self._release(None)
            what = f"opening the write-ahead log of {self.root}"
            raise StoreError.from_oserror(exc, what) from exc
        except BaseException:
            self._release(None)
            raise
        self.append = self._mode.append
        self._commit = self._mode.commit
        self._mode.start()

    def _recover(self, sync_method: str) -> tuple[RecoveredSegments, SyncfsSetup]:
        """Recover the segments, then set up syncfs; the root's lock is let go if either
        fails (an OSError of recovery as a StoreError)."""
        try:
            try:
                recovered = recover_segments(self.root)
            except OSError as exc:
                raise StoreError.from_oserror(exc, f"recovering {self.root}") from exc
            return recovered, open_syncfs(self.root, sync_method)
        except BaseException:
            os.close(self._lock_fd)
            raise

    @property
    def sync_method(self) -> str:
        return self._writer.sync_method

    def _replay_log(self) -> None:
        """Move what the write-ahead log still holds (a server killed in write mode) into the
        segment files, sync them, then delete the log. Raises StoreError if the records cannot
        be written: the log stays for the next try."""
        replay = read_log(self.root, {cid: st.last_seq for cid, st in self._clients.items()})
        if not replay.files:
            return
        self.recovery += replay.cuts
        writer = self._writer
        for cid, last in replay.last_seqs.items():
            st = self._clients.get(cid)
            if st is None:  # no segment yet (a directory may exist)
                st = writer.add_client(cid)
                st.has_dir = st.dir.is_dir()
            st.last_seq = last
        taken = [
            (self._clients[cid], parts, first, sum(map(len, parts)))
            for cid, (parts, first) in replay.records.items()
        ]
        failures, _ = writer.persist_in_segments(taken)
        if failures:
            first = next(iter(failures.values()))
            raise type(first)(f"replaying the write-ahead log: {first}", errno_=first.errno)
        self._sync_written({})
        self._counts["wal_replayed_records"] = replay.record_count()
        remove_log(self.root, replay)

    # ----------------------------------------------------------------------------- hot path

    def last_seq(self, client_id: int) -> int:
        """Highest seq stored or appended for the client; 0 when there is none."""
        st = self._clients.get(client_id)
        return 0 if st is None else st.last_seq

    def commit(self) -> dict[int, StoreError]:
        """Bring every record appended since the last commit to the acknowledgement point.

        Returns the failed clients; their records of this commit are rolled back completely
        (nothing of them stays in a file, `last_seq` is restored).
        """
        if self._closed:
            raise StorageFailure("store is closed")
        self._counts["commits"] += 1
        return self._commit()

    # ------------------------------------------------------------------------------ closing

    def flush(self) -> None:
        """Write and sync everything committed but not yet durable.

        Records appended but not committed are left alone (they were never acknowledged).
        Raises a StoreError summarising the failures after trying every file.
        """
        self._sync_written(self._mode.drain())

    def _sync_written(self, failures: dict[int, StoreError]) -> None:
        """Sync what the writer left unsynced; raise the summary of those and `failures`."""
        errors = self._writer.sync_unsynced(failures)
        if errors:
            raise summary(errors, failures, "flush")

    def close(self) -> None:
        """Stop the flusher, flush, close every handle. Idempotent.

        Records appended but never committed are discarded: they were never acknowledged.
        """
        if self._closed:
            return
        self._closed = True
        self._mode.close()
        try:
            self.flush()
            self._mode.close_log()
        finally:
            self._release(self._mode)

    def _release(self, mode: Mode | None) -> None:
        """Close every descriptor the store holds (the log's files stay for the next open)."""
        if mode is not None:
            mode.release()
        self._writer.release()
        os.close(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------- figures

    def stats(self) -> dict[str, Any]:
        """Counters since the store was opened (a snapshot; see docs/storage.md)."""
        writer = self._writer
        wal_bytes, wal_files = self._mode.wal_figures()
        counts: dict[str, Any] = dict(self._counts)
        counts.update(
            clients=len(self._clients),
            open_handles=len(writer.fds),
            flush_errors=dict(writer.flush_errors),
            recovery_cuts=len(self.recovery),
            wal_bytes=wal_bytes,
            wal_files=wal_files,
            buffered_bytes=self._mode.buffered(),
            poisoned_clients=sum(st.poisoned for st in list(self._clients.values())),
            disk_bytes=writer.disk_bytes,
            sync_method=writer.sync_method,
        )
        return counts

    def disk_bytes(self) -> int:
        """Bytes in the segment files this store knows (found at open plus written since)."""
        return self._writer.disk_bytes
