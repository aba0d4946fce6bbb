"""How written files are made durable: fdatasync of each file, or one syncfs(2) of the store's
filesystem, which Python's os module does not offer (bound here through libc).

syncfs is only trusted where it reports write-back errors (Linux 5.8 on) and where it reaches
the file system: on a FUSE mount the kernel's syncfs returns 0 without asking the file system
to sync anything (measured: tests/test_forgetful_fs.py), so a store there that relied on it
would acknowledge records a power cut takes back. `open_syncfs` decides once, per data
directory, when the store opens, and the segment writer then picks per batch.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import platform
import re
from collections.abc import Callable
from pathlib import Path

from msgprof.store.descriptors import PLAIN, Files
from msgprof.store.errors import FULL_ERRNOS

#: "auto" takes one syncfs instead of fdatasyncs from this many files written in one batch on.
SYNCFS_MIN_FILES = 3
#: syncfs(2) reports write-back errors (errseq on the superblock) only from Linux 5.8 on.
SYNCFS_MIN_KERNEL = (5, 8)
#: File systems whose syncfs(2) does not reach the file system itself (their type in
#: /proc/self/mountinfo, before any "."): a store there syncs each file instead.
SYNCFS_UNREACHED = ("fuse", "fuseblk")
_log = logging.getLogger("msgprof.store")

#: The syncfs hook: f(fd) syncs the filesystem of fd, raising OSError.
Syncfs = Callable[[int], None]
#: What `open_syncfs` decided: (hook or None, descriptor of the root or -1, sync_method).
SyncfsSetup = tuple[Syncfs | None, int, str]


@functools.cache
def load_syncfs() -> Syncfs | None:
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


def kernel_version() -> tuple[int, int]:
    """(major, minor) of the running Linux kernel; (0, 0) elsewhere or when unreadable."""
    if platform.system() != "Linux":
        return (0, 0)
    match = re.match(r"(\d+)\.(\d+)", platform.release())
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def filesystem_type(path: Path | str) -> str | None:
    """The type of the file system holding `path` (/proc/self/mountinfo: the mount point that
    is the longest prefix of its real path), or None where that cannot be read."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best, found = -1, None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > best:
            best, found = len(mount), right.split()[0]
    return found


def open_syncfs(root: Path, sync_method: str) -> SyncfsSetup:
    """(hook, descriptor of root to call it on, effective sync_method) for a store at `root`.

    syncfs is enabled if libc has it, the kernel reports write-back errors through it and a
    first call on the root directory works. That call also takes in any write-back error the
    filesystem had before this store opened, so no commit is blamed for it. Otherwise ``auto``
    falls back to fdatasync (no hook, descriptor -1) and ``syncfs`` raises ValueError.
    """
    if sync_method == "fdatasync":
        return None, -1, sync_method
    fn = load_syncfs()
    kind = filesystem_type(root) or ""
    if kind.split(".")[0] in SYNCFS_UNREACHED:
        # not a missing feature but a wrong answer: even an explicit syncfs is not honoured
        _log.warning("%s: fdatasync, not %s: syncfs() does not reach a %s file system (it "
                     "returns 0 without syncing its files)", root, sync_method, kind)  # fmt: skip
        return None, -1, "fdatasync"
    if fn is None:
        problem = "libc has no syncfs()"
    elif kernel_version() < SYNCFS_MIN_KERNEL:
        problem = f"Linux {platform.release()} < 5.8: syncfs() does not report I/O errors"
    else:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fn(fd)
        except OSError as exc:
            if exc.errno not in (errno.EIO, *FULL_ERRNOS):
                os.close(fd)
                fn, problem = None, f"syncfs() failed: {exc.strerror or exc}"
            else:
                _log.warning("%s: an earlier write-back error: %s", root, exc)
        if fn is not None:
            return fn, fd, sync_method
    if sync_method == "syncfs":
        raise ValueError(f"sync_method 'syncfs' is not available: {problem}")
    _log.info("%s: fdatasync only (%s)", root, problem)
    return None, -1, "fdatasync"


def fdatasync_result(fd: int) -> OSError | None:
    """fdatasync one descriptor; the error instead of raising it (syncs run in a pool)."""
    try:
        os.fdatasync(fd)
    except OSError as exc:
        return exc
    return None


def fdatasync_path(path: str, files: Files = PLAIN) -> OSError | None:
    """Open a closed file again and fdatasync it; the error, if any."""
    try:
        fd = files.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        return exc
    try:
        return fdatasync_result(fd)
    finally:
        files.close(fd)


def fsync_dir(path: Path | str, files: Files = PLAIN) -> None:
    """fsync a directory, which makes its new, renamed and removed entries durable."""
    fd = files.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        files.close(fd)


def make_dir(path: Path | str, files: Files = PLAIN) -> None:
    """Create directory `path` and any missing parent, each new entry made durable (its
    parent fsynced): a store created on a fresh path keeps its root across a power cut."""
    path = Path(path)
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # made meanwhile (by another process): its maker syncs it
        fsync_dir(directory.parent, files)
