"""The three acknowledgement points (`--ack-after`), one class each, over the shared segment
writer: what `append` does with a record and what `commit` must reach before it returns.

- `FsyncMode`: commit writes each client's records to its segment and syncs them (group
  commit).
- `BufferMode`: commit hands the records to a background flusher, which writes and syncs them
  every `flush_interval_ms`.
- `WriteMode`: append builds the commit's write-ahead log entry and commit logs it with one
  write(); the flusher moves the logged records into their segments every
  WAL_FLUSH_INTERVAL_MS.

The store binds `append` and `commit` of its mode once, when it opens: the server calls them
per message and per burst, so no mode is looked up on the way.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from typing import Any

from msgprof.ratelog import Throttled
from msgprof.store.checksum import crc32
from msgprof.store.client import Client
from msgprof.store.errors import StorageFailure, StoreError, for_client
from msgprof.store.segment import MAX_PAYLOAD, RECORD_HEADER, RECORD_HEADER_SIZE, SEQ, WAL_DIR
from msgprof.store.sync import fsync_dir
from msgprof.store.wal import WriteAheadLog, entry_header, entry_without, first_seqs
from msgprof.store.writer import SegmentWriter

#: write mode: how often logged records move into the segment files. Longer batches more
#: records per segment write() (the point of the log); the log holds this much traffic.
WAL_FLUSH_INTERVAL_MS = 100.0
_log = logging.getLogger("msgprof.store")
_pack_seq, _pack_record = SEQ.pack, RECORD_HEADER.pack  # bound once: append runs per message
#: What a flusher pass takes per client: (client, parts, first seq, bytes).
Taken = list[tuple[Client, list[bytes], int, int]]


def _refused(st: Client, seq: int, payload: bytes) -> ValueError:
    """Why an append was refused: a seq that does not follow, or a payload too large."""
    if seq != st.last_seq + 1:
        return ValueError(f"client {st.cid}: seq {seq} does not follow {st.last_seq}")
    return ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")


class Mode(ABC):
    """One acknowledgement point. `append` frames a record in memory (no system calls);
    `commit` brings everything appended since the last commit to the mode's point and returns
    the failed clients, whose records of that commit are rolled back completely."""

    #: every segment write is synced before it counts (the writer is made to match)
    durable = True

    def __init__(
        self, writer: SegmentWriter, *, flush_interval_ms: float, max_buffer_bytes: int
    ) -> None:
        self._writer = writer
        self._clients = writer.clients
        self._counts = writer.counts

    @abstractmethod
    def append(self, client_id: int, seq: int, payload: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> dict[int, StoreError]: ...

    def start(self) -> None:
        """Start what runs in the background (nothing here)."""

    def drain(self) -> dict[int, StoreError]:
        """Write what waits in memory to the segments (flush); the failed clients."""
        return {}

    def close(self) -> None:
        """Take no more appends; roll back what was appended and never committed."""

    def close_log(self) -> None:
        """After the last flush: remove what only mattered until the segments had it all."""

    def release(self) -> None:
        """Close the mode's own files, keeping them for the next open."""

    def buffered(self) -> int:
        """Bytes acknowledged and not yet in a segment."""
        return 0

    def wal_figures(self) -> tuple[int, int]:
        """(bytes written, files started) of the write-ahead log; zeros without one."""
        return 0, 0

    def _settle(
        self, dirty: list[Client], failures: dict[int, StoreError]
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


class _Pending(Mode):
    """Appends wait in each client's `pending` list until the commit (fsync, buffer)."""

    def __init__(self, writer: SegmentWriter, **options: Any) -> None:
        super().__init__(writer, **options)  # cooperative: BufferMode's next class is _Background
        self._dirty: list[Client] = []  # clients with appends since the commit
        self._closed = False

    def append(self, client_id: int, seq: int, payload: bytes) -> None:
        """Frame one record into the client's pending list."""
        st = self._clients.get(client_id) or self._writer.add_client(client_id)
        if seq != st.last_seq + 1 or (size := len(payload)) > MAX_PAYLOAD:
            raise _refused(st, seq, payload)
        header = _pack_record(size, crc32(payload, crc32(_pack_seq(seq))), seq)
        if not st.pending:
            if self._closed:
                raise StorageFailure("store is closed")
            st.pending_first = seq
            self._dirty.append(st)
        st.pending += (header, payload)
        st.pending_bytes += RECORD_HEADER_SIZE + size
        st.last_seq = seq

    def close(self) -> None:
        super().close()
        for st in self._dirty:
            st.last_seq = st.pending_first - 1
            st.pending, st.pending_bytes = [], 0
        self._dirty = []
        self._closed = True


class _Background(Mode):
    """Acknowledged records wait in memory for a flusher thread that writes them to their
    segments (buffer, write). A client whose write fails keeps its records buffered (retried
    each pass) and refuses new appends meanwhile."""

    def __init__(
        self, writer: SegmentWriter, *, flush_interval_ms: float, max_buffer_bytes: int
    ) -> None:
        super().__init__(
            writer, flush_interval_ms=flush_interval_ms, max_buffer_bytes=max_buffer_bytes
        )
        self._interval = flush_interval_ms / 1000.0
        self._lock = threading.Lock()  # buffered data and sticky errors (shared with flusher)
        self._max_buffer = max_buffer_bytes
        self._buffered: dict[int, Client] = {}  # clients with buffered data
        self._buffered_bytes = 0
        self._retry_refused = False  # a flush failed for a client that may succeed later
        self._stop = threading.Event()
        self._flusher = threading.Thread(
            target=self._flusher_loop, name="msgprof-store-flusher", daemon=True
        )

    def start(self) -> None:
        self._flusher.start()

    def close(self) -> None:
        self._stop.set()
        self._flusher.join()
        super().close()

    def buffered(self) -> int:
        return self._buffered_bytes

    def _flusher_loop(self) -> None:
        while not self._stop.wait(self._interval):
            if self._waiting():
                try:
                    self.drain()
                except Exception:  # noqa: BLE001 - keep flushing; logged and counted
                    self._writer.flush_errors["unexpected"] += 1
                    _log.exception("background flush failed")

    def _waiting(self) -> bool:
        return bool(self._buffered)

    def drain(self) -> dict[int, StoreError]:
        """Write (and in buffer mode sync) all buffered records. A client whose write fails
        keeps its data buffered (retried next time) and gets a sticky error that refuses its
        new appends."""
        writer = self._writer
        with writer.io_lock:
            with self._lock:
                taken = self._take()
            failures, unwritten = writer.persist_in_segments(taken)
            self._written(failures)
            self._retry_refused = any(not self._clients[cid].poisoned for cid in failures)
            with self._lock:
                self._keep(taken, failures, unwritten)
        return failures

    def _take(self) -> Taken:
        """Everything buffered, for one pass. Caller holds both locks."""
        taken = [
            (st, st.buffered, st.buffered_first, st.buffered_bytes)
            for st in self._buffered.values()
        ]
        self._buffered = {}
        for st, *_ in taken:
            st.buffered, st.buffered_bytes = [], 0
        return taken

    def _written(self, failures: dict[int, StoreError]) -> None:
        """A pass has written what it took, but for the `failures`."""

    def _keep(
        self,
        taken: Taken,
        failures: dict[int, StoreError],
        unwritten: dict[int, tuple[list[bytes], int, int]],
    ) -> None:
        """Buffer again what a pass could not write, ahead of what came meanwhile; set or
        clear the clients' sticky errors. Caller holds both locks."""
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
        if failures or self._writer.refusing:
            self._writer.refusing = any(st.error is not None for st in self._clients.values())


class FsyncMode(_Pending):
    """Acknowledged once written and synced: the commit writes and syncs every client's
    records itself (one fdatasync per file, or one syncfs, per commit)."""

    def commit(self) -> dict[int, StoreError]:
        dirty, self._dirty = self._dirty, []
        if not dirty:
            return {}
        with self._writer.io_lock:
            failures = self._writer.persist_batch(
                [(st, st.pending, st.pending_first) for st in dirty]
            )
        return self._settle(dirty, failures)


class BufferMode(_Pending, _Background):
    """Acknowledged once in the process's buffer; the flusher writes and syncs it."""

    def commit(self) -> dict[int, StoreError]:
        """Hand the records to the flusher, unless their client refuses appends."""
        dirty, self._dirty = self._dirty, []
        if not dirty:
            return {}
        incoming = sum(st.pending_bytes for st in dirty)
        if self._buffered_bytes + incoming > self._max_buffer or self._retry_refused:
            self.drain()  # backpressure, or a retry: the disk may have room again
        failures: dict[int, StoreError] = {}
        with self._lock:
            for st in dirty:
                if st.error is not None:
                    failures[st.cid] = st.error
                    continue
                self._hand_over(st)
        return self._settle(dirty, failures)

    def _hand_over(self, st: Client) -> None:
        """Move a client's pending records to the flusher's buffer. Caller holds _lock."""
        if not st.buffered:
            st.buffered_first = st.pending_first
            self._buffered[st.cid] = st
        st.buffered += st.pending
        st.buffered_bytes += st.pending_bytes
        self._buffered_bytes += st.pending_bytes


class WriteMode(_Background):
    """Acknowledged once written to the OS: a commit is one write() to the write-ahead log for
    all of its clients, and the flusher sorts the logged records into their segments. The
    segment writer does not sync; `flush` does, and only then is the log released."""

    durable = False

    def __init__(
        self, writer: SegmentWriter, *, flush_interval_ms: float, max_buffer_bytes: int
    ) -> None:
        # the log moves at a fixed pace: `flush_interval_ms` is buffer mode's option
        super().__init__(
            writer, flush_interval_ms=WAL_FLUSH_INTERVAL_MS, max_buffer_bytes=max_buffer_bytes
        )
        self._wal = WriteAheadLog(writer.root / WAL_DIR, files=writer.files)
        self._rotate_warning = Throttled(_log)
        # the commit's log entry as append builds it (parts[0] is left for the entry's
        # header; then header, payload, ... of each record) and its table (client_id, record
        # bytes, ... per record); the logged commits the flusher has yet to take
        self._entry: list[bytes] | None = [b""]
        self._table: list[int] = []
        self._logged: list[tuple[list[int], list[bytes]]] = []

    def append(self, client_id: int, seq: int, payload: bytes) -> None:
        """Frame one record straight into the commit's log entry."""
        st = self._clients.get(client_id) or self._writer.add_client(client_id)
        if seq != st.last_seq + 1 or (size := len(payload)) > MAX_PAYLOAD:
            raise _refused(st, seq, payload)
        header = _pack_record(size, crc32(payload, crc32(_pack_seq(seq))), seq)
        entry = self._entry
        if entry is None:
            raise StorageFailure("store is closed")
        entry.append(header)
        entry.append(payload)
        table = self._table
        table.append(client_id)
        table.append(RECORD_HEADER_SIZE + size)
        st.last_seq = seq

    def commit(self) -> dict[int, StoreError]:
        """Log the commit's entry, which `append` built, with one write(), and leave it to the
        flusher. Per record this costs nothing beyond what `append` did: the hot path of the
        server."""
        table, parts = self._table, self._entry
        if not table or parts is None:
            return {}
        self._table, self._entry = [], [b""]
        if self._buffered_bytes > self._max_buffer or self._retry_refused:
            self.drain()  # backpressure, or a retry: the disk may have room again
        failures: dict[int, StoreError] = {}
        with self._lock:
            logged_table, logged_parts = table, parts
            if self._writer.refusing:
                for cid in dict.fromkeys(table[0::2]):
                    error = self._clients[cid].error
                    if error is not None:
                        failures[cid] = error
                if failures:
                    logged_table, logged_parts = entry_without(table, parts, failures)
            if logged_table:
                self._log_entry(logged_table, logged_parts, table, failures)
        if failures:
            self._roll_back(table, parts, failures)
        return failures

    def _log_entry(
        self,
        table: list[int],
        parts: list[bytes],
        whole_table: list[int],
        failures: dict[int, StoreError],
    ) -> None:
        """Write one entry to the log; when that fails, every client of the commit
        (`whole_table`) fails with it. Caller holds _lock."""
        nbytes = sum(table[1::2])
        parts[0] = entry_header(table, nbytes)
        try:
            self._wal.append(b"".join(parts))
        except OSError as exc:
            err = self._writer.failed(exc, "writing the write-ahead log")
            failures.update(
                (cid, for_client(err, cid))
                for cid in dict.fromkeys(whole_table[0::2])
                if cid not in failures
            )
        else:
            self._logged.append((table, parts))
            self._buffered_bytes += nbytes
            self._counts["records"] += len(table) // 2

    def _roll_back(
        self, table: list[int], parts: list[bytes], failures: dict[int, StoreError]
    ) -> None:
        """The failed clients' records of a commit were never logged: take them back."""
        firsts = first_seqs(table, parts)
        failed = []
        for cid in failures:
            st = self._clients[cid]
            st.pending_first = firsts[cid]
            failed.append(st)
        self._settle(failed, failures)

    def _waiting(self) -> bool:
        return bool(self._buffered or self._logged)

    def _take(self) -> Taken:
        """The logged commits, sorted into their clients' buffers, then everything buffered.
        The log is rotated with the lock held, so the retired log files hold exactly what this
        pass takes: they are deleted once all of it, and whatever earlier passes failed to
        write, is in the segments."""
        if self._logged:
            self._take_logged()
        taken = super()._take()
        try:
            self._wal.rotate()
        except OSError as exc:  # harmless: the current file is kept until later
            self._writer.flush_errors["wal_rotate"] += 1
            self._rotate_warning("%s: cannot start a new log file: %s", self._writer.root, exc)
        return taken

    def _take_logged(self) -> None:
        """Sort the records of the logged commits into their clients' buffers, in order.
        Caller holds _lock."""
        logged, self._logged = self._logged, []
        clients, buffered = self._clients, self._buffered
        for table, parts in logged:
            records = iter(parts)
            next(records)  # the entry's header
            for cid, size, header, payload in zip(table[0::2], table[1::2], records, records):
                st = clients[cid]
                if not st.buffered:
                    st.buffered_first = SEQ.unpack_from(header, 8)[0]
                    buffered[cid] = st
                st.buffered += (header, payload)
                st.buffered_bytes += size

    def _written(self, failures: dict[int, StoreError]) -> None:
        if not failures:
            self._wal.release()

    def close(self) -> None:
        super().close()
        entry, self._entry = self._entry, None  # later appends find the store closed
        if entry is not None:
            for cid, first in first_seqs(self._table, entry).items():
                self._clients[cid].last_seq = first - 1  # appended, never logged
        self._table = []

    def close_log(self) -> None:
        self._wal.close(remove=True)  # every logged record is in its segment, synced
        fsync_dir(self._wal.dir, self._writer.files)

    def release(self) -> None:
        self._wal.close(remove=False)
        self._rotate_warning.flush()

    def wal_figures(self) -> tuple[int, int]:
        return self._wal.bytes_written, self._wal.files_started


#: The mode class of each --ack-after value.
MODES: dict[str, type[Mode]] = {"buffer": BufferMode, "write": WriteMode, "fsync": FsyncMode}
