"""The segment writer every acknowledgement mode shares: appends records to each client's
newest segment (a new one when it is full), keeps at most `max_open_files` descriptors open,
syncs what a batch wrote (fdatasync per file or one syncfs) and, when a write or sync fails,
takes the batch's bytes back off the file so nothing torn stays behind.

The modes (`msgprof.store.modes`) decide what is written when; this module decides how.
"""

from __future__ import annotations

import collections
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from msgprof.store.client import Client
from msgprof.store.descriptors import PLAIN, Files
from msgprof.store.errors import StorageFailure, StoreError, for_client
from msgprof.store.segment import (
    SEGMENT_HEADER_SIZE,
    check_client_id,
    segment_header,
    segment_name,
    write_all,
)
from msgprof.store.sync import (
    SYNCFS_MIN_FILES,
    SyncfsSetup,
    fdatasync_path,
    fdatasync_result,
    fsync_dir,
)

_OPEN_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
_OPEN_NEW = _OPEN_APPEND | os.O_CREAT | os.O_EXCL

#: The store's counters (docs/storage.md, "Statistics"), in the order `stats()` lists them.
COUNTERS = (
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
)


#: What a batch writes for one client: (client, parts: header, payload, ..., first seq).
Batch = list[tuple[Client, list[bytes], int]]


class SegmentWriter:
    """Writes and syncs the clients' segment files. Callers hold `io_lock` around every call
    but `release`.

    `durable`: every batch is synced before it counts (buffer and fsync mode); otherwise
    written files wait for `sync_unsynced` (write mode's flush). `sync_method` is the effective
    one (`msgprof.store.sync.open_syncfs`): ``fdatasync`` each file; ``syncfs`` once after
    all files of a batch are written; ``auto`` syncfs for batches of SYNCFS_MIN_FILES files or
    more or with a new segment, else fdatasync.
    """

    def __init__(
        self,
        root: Path,
        clients: dict[int, Client],
        *,
        durable: bool,
        segment_bytes: int,
        max_open_files: int,
        sync_threads: int,
        syncfs: SyncfsSetup,
        disk_bytes: int,
        files: Files = PLAIN,
    ) -> None:
        self.root = root
        #: Opens and closes the files used while serving (msgprof.store.descriptors).
        self.files = files
        self.clients = clients
        self.durable = durable
        self.segment_bytes = segment_bytes
        self._max_open = max_open_files
        self._syncfs, self._root_fd, self.sync_method = syncfs  # the hook; None: fdatasync only
        self.io_lock = threading.Lock()  # file handles and writes; taken before a mode's lock
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.flush_errors: collections.Counter[str] = collections.Counter()
        self.disk_bytes = disk_bytes
        # some client may have a sticky error: set with every error, recomputed after each
        # background pass; spares write mode's commit a look at each of its clients
        self.refusing = False
        self.fds: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._batch_syncfs = False  # the batch being written ends in one syncfs
        self._unsynced_paths: set[str] = set()  # write mode: closed files not yet synced
        self._unsynced_dirs: set[str] = set()  # directories with entries not yet synced
        self._sync_pool: ThreadPoolExecutor | None = None
        if durable and sync_threads > 1:
            self._sync_pool = ThreadPoolExecutor(sync_threads, "msgprof-store-sync")

    def add_client(self, client_id: int) -> Client:
        """A client the store has not seen: registered, its directory made on its first write."""
        st = Client(check_client_id(client_id), self.root / str(client_id))
        self.clients[client_id] = st
        return st

    # ------------------------------------------------------------------------------ batches

    def persist_batch(self, batch: Batch) -> dict[int, StoreError]:
        """Write each client's records (one os.write per client) and, when durable, sync every
        file written (group commit: one fdatasync per file, or one syncfs, per batch; the
        method is chosen before writing, see wants_syncfs).

        Returns the failed clients. A failed client's file is restored to its size before the
        batch (no torn record stays behind); if even that fails the client is poisoned.
        """
        failures: dict[int, StoreError] = {}
        to_sync: list[Client] = []
        self._batch_syncfs = self.durable and self.wants_syncfs(
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
                if self.durable:
                    to_sync.append(st)
            if to_sync and self._batch_syncfs:
                self._syncfs_written(to_sync, failures)
            elif to_sync:
                self._sync_written(to_sync, failures)
        finally:
            self._batch_syncfs = False
        return failures

    def persist_in_segments(
        self, taken: list[tuple[Client, list[bytes], int, int]]
    ) -> tuple[dict[int, StoreError], dict[int, tuple[list[bytes], int, int]]]:
        """`persist_batch` for many records per client (parts, first seq, bytes): a client's
        records are split where its segment fills, as if they had come one commit each, and
        written in rounds of one piece per client. Returns the failed clients and, for each,
        what was not written (parts, first seq, bytes)."""
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
            for cid, err in self.persist_batch(batch).items():  # type: ignore[arg-type]
                failures[cid] = err
                rest = pieces[cid][depth:]
                left = [part for piece in rest for part in piece[0]]
                unwritten[cid] = (left, rest[0][1], sum(piece[2] for piece in rest))
        return failures, unwritten

    def _segment_pieces(
        self, st: Client, parts: list[bytes], first: int, nbytes: int
    ) -> list[tuple[list[bytes], int, int]]:
        """Split a client's records (parts, first seq, bytes) where a segment reaches
        segment_bytes: a record goes into the current segment while that is not full."""
        limit = self.segment_bytes
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

    def wants_syncfs(self, files: int, new_segment: bool) -> bool:
        """Whether syncing `files` files (`new_segment`: one of them, or a directory entry,
        is new) takes one syncfs rather than fdatasyncs."""
        if self._syncfs is None or files == 0:
            return False
        return self.sync_method == "syncfs" or files >= SYNCFS_MIN_FILES or new_segment

    def _starts_segment(self, st: Client) -> bool:
        return not st.poisoned and (st.seg_path is None or st.seg_size >= self.segment_bytes)

    # ------------------------------------------------------------------------------- writes

    def _write(self, st: Client, parts: list[bytes], first_seq: int) -> None:
        """Append records to the client's newest segment (a new one when it is full). Raises
        StoreError after restoring the file. When durable the data is left for _sync_written
        (st.unsynced, st.sync_before); a new segment is synced right here."""
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
            write_all(fd, data)
        except OSError as exc:
            err = self.failed(exc, f"client {st.cid}: writing {len(data)} bytes")
            if fd >= 0:
                self._truncate_fd(st, fd, before)
            raise err from exc
        st.seg_size += len(data)
        st.sync_before = before
        st.unsynced = True
        self.disk_bytes += len(data)
        self.counts["bytes_written"] += len(data)

    def _write_new_segment(self, st: Client, data: bytes, first_seq: int) -> None:
        """Start a segment named after its first record; header and records go in one write.
        When durable the file and its directory are synced right away, unless the batch ends
        in a syncfs: that covers them (and a failed one removes the file again, st.new_seg).
        On failure the new file is removed and the previous segment stays the newest."""
        path = os.path.join(st.dir, segment_name(first_seq))
        fd = -1
        try:
            if not st.has_dir:
                os.makedirs(st.dir, exist_ok=True)
                st.has_dir = True
                self._unsynced_dirs.add(str(self.root))
            self._release_fd(st)
            fd = self.files.open(path, _OPEN_NEW, 0o644)
            self._track_fd(st.cid, fd)
            data = segment_header(st.cid, first_seq) + data
            write_all(fd, data)
            self._unsynced_dirs.add(str(st.dir))
            if self.durable and not self._batch_syncfs:
                self.counts["fsyncs"] += 1
                os.fdatasync(fd)
                self._sync_dirs()
        except OSError as exc:
            err = self.failed(exc, f"client {st.cid}: starting {path}")
            if fd >= 0:
                self._release_fd(st)
                try:
                    os.unlink(path)
                except OSError as uexc:
                    self.poison(st, uexc)
            raise err from exc
        if self._batch_syncfs:
            st.new_seg = (st.seg_path, st.seg_size)
        st.seg_path, st.seg_size = path, len(data)
        st.unsynced = not self.durable or self._batch_syncfs
        self.disk_bytes += len(data)
        self.counts["bytes_written"] += len(data)
        self.counts["segments_created"] += 1

    def failed(self, exc: OSError, what: str) -> StoreError:
        """The StoreError for a failed call, counted in flush_errors by kind."""
        err = StoreError.from_oserror(exc, what)
        self.flush_errors[err.kind] += 1
        return err

    def _truncate_fd(self, st: Client, fd: int | None, size: int) -> None:
        """Cut a failed write off again (through `fd`, or the path when the file is closed);
        poison the client if the file cannot be restored."""
        try:
            if fd is None:
                os.truncate(st.seg_path, size)  # type: ignore[arg-type]
            else:
                os.ftruncate(fd, size)
        except OSError as exc:
            self.poison(st, exc)
            return
        self.disk_bytes -= st.seg_size - size
        st.seg_size = size

    def _undo_write(self, st: Client, new_seg: tuple[str | None, int] | None) -> None:
        """Take back a batch's write after its sync failed: a segment started in the batch is
        removed (the previous one is the newest again), else the file is cut to its old size."""
        if new_seg is None:
            self._truncate_fd(st, self.fds.get(st.cid), st.sync_before)
            return
        path = st.seg_path
        self._release_fd(st)
        try:
            os.unlink(path)  # type: ignore[arg-type]
        except OSError as exc:
            self.poison(st, exc)
            return
        self.disk_bytes -= st.seg_size
        st.seg_path, st.seg_size = new_seg

    def poison(self, st: Client, exc: OSError) -> None:
        """The file could not be restored after a failed write: it may end in a partial
        record, so nothing more is appended to it until the store is reopened (recovery cuts)."""
        st.poisoned = True
        st.error = StorageFailure(f"client {st.cid}: queue file left unusable: {exc}")
        self.refusing = True
        st.unsynced = False
        self._release_fd(st)

    # -------------------------------------------------------------------------------- syncs

    def _sync_written(self, written: list[Client], failures: dict[int, StoreError]) -> None:
        """fdatasync the files written in this batch, in parallel when sync_threads > 1.
        A file evicted meanwhile was synced on eviction (st.sync_error says if that failed).
        A failed fdatasync is never retried: the batch's bytes are cut off the file again."""
        jobs: list[tuple[Client, int]] = []
        for st in written:
            if st.sync_error is not None:
                failures[st.cid], st.sync_error = st.sync_error, None
            elif st.unsynced:
                jobs.append((st, self.fds[st.cid]))
        if not jobs:
            return
        self.counts["fsyncs"] += len(jobs)
        if self._sync_pool is not None and len(jobs) > 1:
            results = list(self._sync_pool.map(fdatasync_result, [fd for _, fd in jobs]))
        else:
            results = [fdatasync_result(fd) for _, fd in jobs]
        for (st, fd), exc in zip(jobs, results):
            st.unsynced = False
            if exc is not None:
                failures[st.cid] = self.failed(exc, f"client {st.cid}: fdatasync")
                self._truncate_fd(st, fd, st.sync_before)

    def _syncfs_written(self, written: list[Client], failures: dict[int, StoreError]) -> None:
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
                failures[st.cid] = for_client(err, st.cid)
                self._undo_write(st, new_seg)

    def _syncfs_all(self) -> StoreError | None:
        """Call the syncfs hook on the root; None on success, which also makes the pending
        directory entries durable, else the error (counted once)."""
        self.counts["syncfs"] += 1
        try:
            self._syncfs(self._root_fd)  # type: ignore[misc]
        except OSError as exc:
            return self.failed(exc, "syncfs")
        self._unsynced_dirs.clear()
        return None

    def _sync_dirs(self) -> None:
        while self._unsynced_dirs:
            directory = self._unsynced_dirs.pop()
            try:
                fsync_dir(directory, self.files)
            except OSError:
                self._unsynced_dirs.add(directory)
                raise
            self.counts["dir_fsyncs"] += 1

    def sync_unsynced(self, failures: dict[int, StoreError]) -> list[StoreError]:
        """Sync every file written and not yet synced (write mode), open or closed, and the
        directories with new entries. Adds the failed clients to `failures`; returns every
        error, that of the directories included. Takes io_lock."""
        with self.io_lock:
            open_fds = [(cid, fd) for cid, fd in self.fds.items() if self.clients[cid].unsynced]
            closed = sorted(self._unsynced_paths)
            if self.wants_syncfs(len(open_fds) + len(closed), bool(self._unsynced_dirs)):
                failures.update(self._syncfs_flush(open_fds, closed))
            else:
                self._fdatasync_flush(open_fds, closed, failures)
            errors = list(failures.values())
            try:
                self._sync_dirs()
            except OSError as exc:
                errors.append(self.failed(exc, "syncing directories"))
        return errors

    def _syncfs_flush(
        self, open_fds: list[tuple[int, int]], closed: list[str]
    ) -> dict[int, StoreError]:
        """sync_unsynced with one syncfs; when it fails, every file it was to cover is in an
        unknown state: each of those clients is poisoned (its records were acknowledged)."""
        cids = {cid for cid, _ in open_fds} | {_path_client(path) for path in closed}
        for cid, _ in open_fds:
            self.clients[cid].unsynced = False
        self._unsynced_paths.clear()
        err = self._syncfs_all()
        if err is None:
            return {}
        return {
            cid: self._failed_sync(self.clients[cid], for_client(err, cid), "syncfs")
            for cid in sorted(cids)
        }

    def _fdatasync_flush(
        self, open_fds: list[tuple[int, int]], closed: list[str], failures: dict[int, StoreError]
    ) -> None:
        """sync_unsynced with one fdatasync per file (closed files are reopened for it)."""
        for cid, _ in open_fds:
            self.clients[cid].unsynced = False
        self._unsynced_paths.clear()
        results = [(cid, fdatasync_result(fd)) for cid, fd in open_fds]
        results += [(_path_client(path), fdatasync_path(path, self.files)) for path in closed]
        self.counts["fsyncs"] += len(results)
        for cid, exc in results:
            if exc is not None:
                err = self.failed(exc, f"client {cid}: fdatasync")
                failures[cid] = self._failed_sync(self.clients[cid], err)

    def _failed_sync(self, st: Client, err: StoreError, what: str = "fdatasync") -> StoreError:
        """A failed sync in a flush is never retried: what it covered is in an unknown state,
        so the client takes no more appends until the store is reopened and recovered."""
        st.poisoned = True
        st.error = StorageFailure(f"client {st.cid}: {what} failed, file state unknown")
        self.refusing = True
        return err

    # ---------------------------------------------------------------------------- handles

    def _fd(self, st: Client) -> int:
        """The open descriptor of the client's current segment (LRU, reopened when evicted)."""
        fd = self.fds.get(st.cid)
        if fd is not None:
            self.fds.move_to_end(st.cid)
            return fd
        fd = self.files.open(st.seg_path, _OPEN_APPEND)  # type: ignore[arg-type]
        self._track_fd(st.cid, fd)
        return fd

    def _track_fd(self, cid: int, fd: int) -> None:
        fds = self.fds
        while len(fds) >= self._max_open:
            self._evict()
        fds[cid] = fd
        self.counts["peak_open_handles"] = max(self.counts["peak_open_handles"], len(fds))

    def _evict(self) -> None:
        cid, fd = self.fds.popitem(last=False)
        self.counts["handle_evictions"] += 1
        self._close_fd(self.clients[cid], fd)

    def _release_fd(self, st: Client) -> None:
        fd = self.fds.pop(st.cid, None)
        if fd is not None:
            self._close_fd(st, fd)

    def _close_fd(self, st: Client, fd: int) -> None:
        """Close a segment's descriptor. When durable, a file written in the current batch but
        not yet synced is fdatasynced first (a failure cuts the batch's bytes off again and is
        reported through st.sync_error), unless the batch ends in a syncfs, which covers
        closed files too; otherwise it is remembered for `sync_unsynced`."""
        try:
            if st.unsynced and not self._batch_syncfs:
                st.unsynced = False
                if not self.durable:
                    self._unsynced_paths.add(st.seg_path)  # type: ignore[arg-type]
                else:
                    self.counts["fsyncs"] += 1
                    exc = fdatasync_result(fd)
                    if exc is not None:
                        st.sync_error = self.failed(exc, f"client {st.cid}: fdatasync")
                        self._truncate_fd(st, fd, st.sync_before)
        finally:
            self.files.close(fd)

    def release(self) -> None:
        """Close every descriptor the writer holds and stop its sync threads."""
        if self._sync_pool is not None:
            self._sync_pool.shutdown()
        with self.io_lock:
            while self.fds:
                _, fd = self.fds.popitem()
                self.files.close(fd)
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1


def _path_client(path: str) -> int:
    """The client id of a segment path (its directory's name)."""
    return int(os.path.basename(os.path.dirname(path)))
