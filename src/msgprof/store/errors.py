"""The store's errors: what failed on disk, never how a peer is answered.

The store knows no wire protocol. The server maps these classes to reply statuses
(`StorageFull` to STORAGE_FULL, every other `StoreError` to STORAGE_ERROR); `kind` names each
failure for the counters (`flush_errors`, the server's `rejected`).
"""

from __future__ import annotations

import errno

#: The errnos that mean "no room": retrying later may succeed, so they are told apart.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class StoreError(Exception):
    """A storage failure; `kind` names it for counting, `errno` keeps the system's code."""

    kind: str = "storage_error"

    def __init__(self, message: str, *, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_

    @staticmethod
    def from_oserror(exc: OSError, what: str) -> StoreError:
        """StorageFull for ENOSPC/EDQUOT, StorageFailure for everything else."""
        cls = StorageFull if exc.errno in FULL_ERRNOS else StorageFailure
        err = cls(f"{what}: {exc.strerror or exc}", errno_=exc.errno)
        err.__cause__ = exc
        return err


class StorageFull(StoreError):
    """No space left (ENOSPC) or quota exceeded (EDQUOT)."""

    kind = "storage_full"


class StorageFailure(StoreError):
    """EIO or any other I/O failure; also a file whose state can no longer be trusted."""

    kind = "storage_error"


class CorruptData(StorageFailure):
    """The reader found a damaged record or file where damage cannot be a tail in progress."""

    kind = "corrupt"


def for_client(err: StoreError, cid: int) -> StoreError:
    """A client's own copy of an error that hit a whole batch (one object per client)."""
    copy = type(err)(f"client {cid}: {err}", errno_=err.errno)
    copy.__cause__ = err.__cause__
    return copy


def summary(errors: list[StoreError], failures: dict[int, StoreError], what: str) -> StoreError:
    """One error standing for several (`failures` keeps them per client): StorageFull only if
    every failure was one."""
    cls = StorageFull if all(isinstance(e, StorageFull) for e in errors) else StorageFailure
    err = cls(f"{what} failed for {len(errors)} client(s); first: {errors[0]}")
    err.failures = failures  # type: ignore[attr-defined]
    return err
