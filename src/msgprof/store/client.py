"""One client's state in an open store, shared by its acknowledgement mode and the segment
writer: the hot path (`append`) finds all of it with one dict lookup, so it is one object
rather than one per concern.
"""

from __future__ import annotations

from pathlib import Path

from msgprof.store.errors import StoreError


class Client:
    """Per-client state, one object for the mode and the writer. `last_seq`, `pending*` belong to the server thread (`pending` and
    `pending_bytes` stay empty in write mode, where records go straight into the commit's log
    entry); `buffered*` and `error` are shared with the flusher (the mode's lock); file
    fields need the writer's io_lock."""

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
