"""The store's descriptors, kept where incoming connections cannot take them.

open() in the store and accept() in libzmq's I/O thread both take the lowest free descriptor of
the process, at any moment. When more clients knock than the server has descriptors for, accept()
takes every free one, and the store can no longer start its next write-ahead log file, open a
segment file or fsync a directory: clients already admitted get STORAGE_ERROR.

`Files` is how the store opens and closes the files it uses while serving (segment files,
write-ahead log files, directories to fsync). `PLAIN` is os.open/os.close. A `DescriptorReserve`
holds `size` descriptors for the store from the start, as placeholders on /dev/null (plus one
/dev/null it copies them from), and trades them for files and back:

* close: /dev/null is dup2'ed over the file's descriptor, so the number becomes a placeholder
  again at once; it is never free for accept() to take.
* open: a plain open() first. If the process has a free descriptor the file gets it, and a
  placeholder is closed instead: the store still holds `size`. Only when there is none (EMFILE:
  connections took the rest) is a placeholder closed and the file opened in its place, and that
  is done inside `exclusive()`, which the server provides: its listener takes no new connection
  and has none queued, so accept() cannot run between the close and the open. Without a server
  (`exclusive` None) the swap is plain, which is enough where nothing else opens descriptors.

`size` is what the store needs at once: its open segment files (max_open_files, one more while
the least recently used is swapped out), the current and the next write-ahead log file, and one
directory or closed file being synced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

#: Descriptors the store needs beyond its open segment files (`max_open_files`): one more segment
#: while the least recently used one is swapped out, the current and the next log file, and a
#: directory (or a closed file) being synced.
STORE_EXTRA = 4

_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE})
_PLACEHOLDER_FLAGS = os.O_RDONLY | os.O_CLOEXEC


class Files:
    """Opens and closes the store's files: plain os.open/os.close."""

    def open(self, path: str | os.PathLike, flags: int, mode: int = 0o777) -> int:
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def stats(self) -> dict[str, int]:
        return {}

    def close_all(self) -> None:
        """Release whatever is held beyond the files (nothing here)."""


PLAIN = Files()


def store_descriptors(max_open_files: int) -> int:
    """How many descriptors a store with `max_open_files` holds at most while serving."""
    return max_open_files + STORE_EXTRA


class DescriptorReserve(Files):
    """`size` descriptors held for the store; see the module docstring. Thread-safe."""

    def __init__(
        self, size: int, exclusive: Callable[[], AbstractContextManager[object]] | None = None
    ) -> None:
        if size < 1:
            raise ValueError("a descriptor reserve needs at least one descriptor")
        self.size = size
        #: Called around a placeholder swap that must not race with accept(); see the module doc.
        self.exclusive = exclusive
        self._lock = threading.Lock()
        self._devnull = os.open(os.devnull, _PLACEHOLDER_FLAGS)
        self._spare: list[int] = []
        try:
            for _ in range(size):
                self._spare.append(os.dup(self._devnull))
        except OSError:
            self.close_all()
            raise
        self._in_use = 0
        self._counts = dict.fromkeys(("peak_in_use", "opened_in_place", "overdrawn", "lost"), 0)

    def open(self, path: str | os.PathLike, flags: int, mode: int = 0o777) -> int:
        with self._lock:
            try:
                fd = os.open(path, flags, mode)
            except OSError as exc:
                if exc.errno not in _EXHAUSTED or not self._spare:
                    raise
                fd = self._open_in_place(path, flags, mode)
            else:
                if self._spare and len(self._spare) + self._in_use >= self.size:
                    os.close(self._spare.pop())  # the file took a free one: give one back
                elif not self._spare and self._in_use >= self.size:
                    self._counts["overdrawn"] += 1
            self._in_use += 1
            self._counts["peak_in_use"] = max(self._counts["peak_in_use"], self._in_use)
            return fd

    def _open_in_place(self, path: str | os.PathLike, flags: int, mode: int) -> int:
        """No free descriptor: open the file in a placeholder's place while accept cannot run."""
        guard = self.exclusive() if self.exclusive is not None else contextlib.nullcontext()
        with guard:
            os.close(self._spare.pop())
            try:
                fd = os.open(path, flags, mode)
            except OSError:
                self._refill()
                raise
        self._counts["opened_in_place"] += 1
        return fd

    def _refill(self) -> None:
        """Take a placeholder back after a failed open (a descriptor lost if none is free)."""
        try:
            self._spare.append(os.dup(self._devnull))
        except OSError:
            self._counts["lost"] += 1

    def close(self, fd: int) -> None:
        with self._lock:
            if self._in_use > 0:
                self._in_use -= 1
            if len(self._spare) + self._in_use < self.size:
                os.dup2(self._devnull, fd, inheritable=False)  # closes the file; fd stays held
                self._spare.append(fd)
            else:  # overdrawn: this one was never the reserve's
                os.close(fd)

    def stats(self) -> dict[str, int]:
        """Size, descriptors in use for files now and at most, spare placeholders, and how often
        a file had to be opened in a placeholder's place (no free descriptor left)."""
        with self._lock:
            return {
                "size": self.size,
                "in_use": self._in_use,
                "spare": len(self._spare),
                **self._counts,
            }

    def close_all(self) -> None:
        """Close the placeholders (the store closes its files itself)."""
        with self._lock:
            while self._spare:
                os.close(self._spare.pop())
            if self._devnull >= 0:
                os.close(self._devnull)
                self._devnull = -1
