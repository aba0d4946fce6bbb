"""A forgetful disk for power-loss tests: a FUSE pass-through file system that can forget, on
demand, what a power cut would take back.

`ForgetfulFS(backing, mountpoint)` mounts a view of `backing` (the disk) at `mountpoint`, served
by a child process (mfusepy on libfuse3), so a FUSE fault cannot take the test process with it.
Every write through the mount reaches `backing` at once: a reader sees it, as through the page
cache. Besides, the file system remembers in memory what is not durable yet:

- a file's data since its last fsync or fdatasync (both reach FUSE as fsync; either makes the
  data durable): its size then, and the synced bytes that writes and truncates overwrote since;
- a directory's entries since its last fsync (FUSE's fsyncdir): names created, removed, or
  renamed into or out of it. A file's own fsync does not make its name durable: that is POSIX,
  stricter than ext4, whose fsync of a new file commits the journal holding its entry.
  `dir_entries_need_fsync=False` makes every entry durable at once instead. A removed or
  replaced file that a durable entry still names is kept in a trash beside `backing` (in
  `.<name>.forgetful/`, on the same file system) until its directory is synced.

`crash(torn=False, seed=None)` makes `backing` itself hold exactly the durable state: unsynced
appends cut off, overwritten synced bytes put back, names never made durable removed, unsynced
renames and unlinks undone (a replaced or removed file back with its durable content). With
`torn=True` the last unsynced write of each file keeps a random prefix (seeded), as a write cut
in the middle. Call it while mounted but with no file open on the mount: kill the server first.
It waits a few seconds for the kernel to release the files of a process just killed, then
refuses. From then on, that state is the durable one.

    with ForgetfulFS(tmp / "disk", tmp / "mnt") as fs:
        ...  # run the server on fs.mountpoint, then kill it
        fs.crash()  # the disk as a power cut leaves it
        ...  # start the server again: what did it keep of what it acknowledged?

syncfs(2) on the mount returns 0 without reaching the file system: the FS receives no fsync or
fsyncdir (its `counters()` do not move), and data written before it is lost by `crash()` like
any unsynced write (Linux 6.18, libfuse 3.14; the kernel sends FUSE_SYNCFS to virtiofs only).
tests/test_forgetful_fs.py measures this.

What it does not simulate:
- metadata: mode, owner and times change at once and are never forgotten;
- hard links, symlinks, special files and extended attributes: not supported (ENOSYS), nor
  renameat2's flags (EINVAL, callers fall back to rename);
- partial outcomes: crash() drops every unsynced change (but a torn prefix), where a real
  disk may keep any of them, in any order. A rename across directories synced in only one
  of them leaves the node in both places (a file as a copy), and a directory is left out where
  it would be its own ancestor: states a journalling file system would not produce;
- torn writes at the size of a FUSE write (here up to 1 MiB: a larger write(2) arrives in
  pieces, and only the last piece is torn); a torn write past the durable end leaves zeros
  before it where earlier unsynced writes were;
- shared mmap writes count when the kernel writes the pages back;
- the starting state: whatever `backing` holds when mounted counts as durable, and the memory
  of unsynced changes ends with the mount.
It serves one request at a time in Python: fine for tests, slower than a disk for benchmarks.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: Seconds for one apt-get step of `require_fuse`.
APT_TIMEOUT = 600
#: Seconds `crash()` waits for the kernel to release the files of a process just killed.
RELEASE_WAIT = 5.0
#: Seconds for one fusermount3 or umount call.
UNMOUNT_TIMEOUT = 20
#: utimensat(2)'s special nanoseconds.
_UTIME_NOW, _UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


def require_fuse() -> str | None:
    """None when FUSE mounts can be made here, else why not (a reason for pytest.skip).

    As root with apt-get, a missing fusermount3 is installed from Debian's fuse3 (which brings
    libfuse3), so that a fresh machine runs these tests instead of skipping them.
    """
    if os.geteuid() != 0:
        return "FUSE tests need root (mounting, and fuse3 may need installing)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if shutil.which("fusermount3") is None:
        problem = _install_fuse3()
        if problem:
            return problem
    try:
        import mfusepy  # noqa: F401  (loads libfuse3 through ctypes)
    except (ImportError, OSError) as exc:
        return f"mfusepy is not importable: {exc}"
    return None


def _install_fuse3() -> str | None:
    """Install Debian's fuse3, retrying once after apt-get update; None or what went wrong."""
    if shutil.which("apt-get") is None:
        return "fusermount3 is missing and there is no apt-get to install Debian's fuse3"
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "fuse3"]
    problem = _run(install, APT_TIMEOUT)
    if problem:
        problem = _run(["apt-get", "update", "-q"], APT_TIMEOUT) or _run(install, APT_TIMEOUT)
    if problem:
        return f"installing Debian's fuse3 failed: {problem}"
    return None if shutil.which("fusermount3") else "fuse3 installed, yet no fusermount3"


def _run(argv: list[str], timeout: float) -> str | None:
    """Run a command in its own process group, killed whole on timeout; None or its failure."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        return f"{argv[0]}: {exc}"
    try:
        output = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return f"{' '.join(argv)}: timed out after {timeout:g} s"
    if proc.returncode:
        last = output.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return f"{' '.join(argv)}: exit {proc.returncode}: {last[0]}"
    return None


def is_mounted(path: Path | str) -> bool:
    """Whether `path` is a mount point now; unlike os.path.ismount, a dead FUSE mount (whose stat
    fails with ENOTCONN) counts."""
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == target:
                return True
    return False


@dataclass
class _FileLog:
    """What a file's data was at its last fsync: its size, and the synced bytes overwritten since
    (in order), with the last unsynced write for tearing."""

    durable_size: int
    undo: list[tuple[int, bytes]] = field(default_factory=list)
    last_write: tuple[int, bytes] | None = None


def _locked(method):
    """Serialize a FUSE operation with crash(), which runs on the control thread."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return locked


class ForgetfulOps:
    """The FUSE operations (run in the child): pass-through to `backing`, remembering what is
    not durable yet. Nodes are known by their inode numbers in `backing`."""

    use_ns = True  # mfusepy: times in nanoseconds

    def __init__(self, backing: str, work: str, dir_entries_need_fsync: bool, on_ready=None):
        self.root = backing
        self.root_ino = os.lstat(backing).st_ino
        self.trash = os.path.join(work, "trash")
        self.staging = os.path.join(work, "rebuild")
        os.mkdir(self.trash)
        self.dir_entries_need_fsync = dir_entries_need_fsync
        self.on_ready = on_ready
        self.lock = threading.Lock()
        self.files: dict[int, _FileLog] = {}  # inode -> its unsynced data changes
        self.pending: dict[int, dict[str, int | None]] = {}  # dir inode -> name -> durable inode
        self.refs: Counter[int] = Counter()  # inode -> how many pending entries name it
        self.handles: dict[int, int] = {}  # backing descriptor (the FUSE fh) -> inode
        self.counts: Counter[str] = Counter({"fsync": 0, "fsyncdir": 0})

    # -- bookkeeping

    def _full(self, path: str) -> str:
        return self.root + path

    def _kept(self, ino: int) -> str:
        return os.path.join(self.trash, str(ino))

    def _note(self, full: str, current: int | None) -> None:
        """Remember what the entry at `full` durably is before it changes (`current` is there
        now; the first change since the directory's fsync is the durable one)."""
        if not self.dir_entries_need_fsync:
            return
        parent, name = os.path.split(full)
        slots = self.pending.setdefault(os.lstat(parent).st_ino, {})
        if name not in slots:
            slots[name] = current
            if current is not None:
                self.refs[current] += 1

    def _settle(self, dir_ino: int) -> None:
        """The directory's entries are durable as they are (fsyncdir) or no longer matter (it
        is gone): kept nodes that no durable entry names any more are deleted."""
        for old in self.pending.pop(dir_ino, {}).values():
            if old is None:
                continue
            self.refs[old] -= 1
            if self.refs[old] <= 0:
                del self.refs[old]
                if os.path.lexists(self._kept(old)):
                    self._delete(self._kept(old), old)

    def _delete(self, path: str, ino: int) -> None:
        """Delete a node for good: nothing of it is left to restore."""
        if stat.S_ISDIR(os.lstat(path).st_mode):
            os.rmdir(path)
        else:
            os.unlink(path)
        self.files.pop(ino, None)
        self._settle(ino)

    def _log(self, fd: int, ino: int) -> _FileLog:
        log = self.files.get(ino)
        if log is None:  # first change since the last fsync (or the mount): the size is durable
            log = self.files[ino] = _FileLog(os.fstat(fd).st_size)
        return log

    def _truncate(self, fd: int, ino: int, length: int) -> None:
        log = self._log(fd, ino)
        end = min(os.fstat(fd).st_size, log.durable_size)
        if end > length:
            log.undo.append((length, os.pread(fd, end - length, length)))
        os.ftruncate(fd, length)

    def _remove(self, path: str, is_dir: bool) -> None:
        """unlink or rmdir; a node a durable entry still names goes to the trash instead."""
        full = self._full(path)
        ino = os.lstat(full).st_ino
        if is_dir and os.listdir(full):
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
        self._note(full, ino)
        if self.refs[ino]:
            os.rename(full, self._kept(ino))
        else:
            self._delete(full, ino)

    # -- FUSE operations

    def init(self, path: str) -> None:
        if self.on_ready:
            self.on_ready()

    @_locked
    def getattr(self, path: str | None, fh: int | None = None) -> dict:
        st = os.fstat(fh) if fh in self.handles else os.lstat(self._full(path))
        attrs = {
            key: getattr(st, key)
            for key in ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")
        }
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return attrs

    @_locked
    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._full(path))]

    @_locked
    def statfs(self, path: str) -> dict:
        sv = os.statvfs(self._full(path))
        keys = (
            "f_bsize f_frsize f_blocks f_bfree f_bavail f_files f_ffree f_favail f_flag f_namemax"
        )
        return {key: getattr(sv, key) for key in keys.split()}

    @_locked
    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._full(path), mode)

    @_locked
    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self._full(path), uid, gid, follow_symlinks=False)

    @_locked
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        # mfusepy turns touch's UTIME_NOW and UTIME_OMIT (nanoseconds of second 0) into times
        full = self._full(path)
        st, now = os.lstat(full), time.time_ns()
        atime, mtime = times or (_UTIME_NOW, _UTIME_NOW)
        special = {_UTIME_NOW: (now, now), _UTIME_OMIT: (st.st_atime_ns, st.st_mtime_ns)}
        atime = special[atime][0] if atime in special else atime
        mtime = special[mtime][1] if mtime in special else mtime
        os.utime(full, ns=(atime, mtime), follow_symlinks=False)

    @_locked
    def mkdir(self, path: str, mode: int) -> None:
        full = self._full(path)
        self._note(full, None)
        os.mkdir(full, mode)

    @_locked
    def create(self, path: str, mode: int, flags: int = 0) -> int:
        full = self._full(path)
        self._note(full, None)
        fd = os.open(full, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        ino = os.fstat(fd).st_ino
        self.files.pop(ino, None)  # a reused inode number starts clean
        self.handles[fd] = ino
        return fd

    @_locked
    def open(self, path: str, flags: int) -> int:
        # read-write whatever the caller asked, to read pre-images; the kernel gives O_APPEND
        # writes their offsets, and O_TRUNC is a logged truncate
        fd = os.open(self._full(path), os.O_RDWR | os.O_CLOEXEC)
        self.handles[fd] = ino = os.fstat(fd).st_ino
        if flags & os.O_TRUNC:
            self._truncate(fd, ino, 0)
        return fd

    @_locked
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    @_locked
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        log = self._log(fh, self.handles[fh])
        end = min(offset + len(data), log.durable_size)
        if end > offset:
            log.undo.append((offset, os.pread(fh, end - offset, offset)))
        log.last_write = (offset, data)
        return os.pwrite(fh, data, offset)

    @_locked
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> None:
        if fh in self.handles:
            return self._truncate(fh, self.handles[fh], length)
        fd = os.open(self._full(path), os.O_RDWR | os.O_CLOEXEC)
        try:
            self._truncate(fd, os.fstat(fd).st_ino, length)
        finally:
            os.close(fd)

    @_locked
    def fsync(self, path: str | None, datasync: int, fh: int) -> None:
        self.counts["fsync"] += 1
        (os.fdatasync if datasync else os.fsync)(fh)
        self.files.pop(self.handles[fh], None)

    @_locked
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> None:
        self.counts["fsyncdir"] += 1
        if path is None:  # removed already: its entries no longer matter
            return
        fd = os.open(self._full(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
            ino = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        self._settle(ino)

    @_locked
    def release(self, path: str | None, fh: int) -> None:
        del self.handles[fh]
        os.close(fh)

    @_locked
    def unlink(self, path: str) -> None:
        self._remove(path, is_dir=False)

    @_locked
    def rmdir(self, path: str) -> None:
        self._remove(path, is_dir=True)

    @_locked
    def rename(self, old: str, new: str) -> None:
        src, dst = self._full(old), self._full(new)
        moving = os.lstat(src).st_ino
        try:
            target_st = os.lstat(dst)
        except FileNotFoundError:
            target_st = None
        target = target_st.st_ino if target_st else None
        if target == moving:
            return os.rename(src, dst)
        target_is_dir = target_st is not None and stat.S_ISDIR(target_st.st_mode)
        if target_is_dir and os.listdir(dst):
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
        self._note(src, moving)
        self._note(dst, target)
        keep = target is not None and self.refs[target] > 0
        # a replaced node a durable entry names stays: as a hard link (a file), or itself (an
        # empty directory)
        if keep:
            (os.rename if target_is_dir else os.link)(dst, self._kept(target))
        try:
            os.rename(src, dst)
        except OSError:
            if keep:
                (os.rename if target_is_dir else os.unlink)(self._kept(target), dst)
            raise
        if target is not None and not keep:
            self.files.pop(target, None)
            self._settle(target)

    # -- control (called on the control thread)

    def counters(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)

    def crash(self, torn: bool = False, seed: int | None = None) -> dict:
        """Forget everything not durable, in `backing`; return what was forgotten."""
        deadline = time.monotonic() + RELEASE_WAIT
        while True:
            with self.lock:
                if not self.handles:
                    return self._crash(random.Random(seed) if torn else None)
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"{len(self.handles)} file(s) still open on the mount: "
                        "stop every process using it before crash()"
                    )
            time.sleep(0.02)

    def _crash(self, rng: random.Random | None) -> dict:
        where = self._locate()
        tree = self._durable_tree(self.root_ino, where, frozenset([self.root_ino]))
        durable = dict(_walk(tree))
        current = {
            os.path.relpath(path, self.root)
            for path, _ in where.values()
            if path.startswith(self.root + os.sep)
        }
        report = {
            "dropped": sorted(current - durable.keys()),
            "restored": sorted(durable.keys() - current),
            "rolled_back": [],
            "torn": {},
        }
        for rel, (ino, children) in durable.items():
            log = self.files.pop(ino, None)  # popped: a file in two places is rolled back once
            if children is None and log is not None:
                report["rolled_back"].append(rel)
                kept = _roll_back(where[ino][0], log, rng)
                if kept:
                    report["torn"][rel] = kept
        # build the durable tree beside (files moved in, directories made anew), then swap it in
        os.mkdir(self.staging)
        _build(tree, self.staging, where, {})
        for entry in os.scandir(self.root):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        for entry in os.scandir(self.staging):
            os.rename(entry.path, os.path.join(self.root, entry.name))
        os.rmdir(self.staging)
        shutil.rmtree(self.trash)
        os.mkdir(self.trash)
        self.files.clear()
        self.pending.clear()
        self.refs.clear()
        return report

    def _locate(self) -> dict[int, tuple[str, bool]]:
        """Where every node is now, in the tree or the trash: inode -> (path, is a directory)."""
        where = {self.root_ino: (self.root, True)}
        for top in (self.root, self.trash):
            for dirpath, dirnames, filenames in os.walk(top):
                for name in dirnames + filenames:
                    path = os.path.join(dirpath, name)
                    st = os.lstat(path)
                    where[st.st_ino] = (path, stat.S_ISDIR(st.st_mode))
        return where

    def _durable_tree(self, ino: int, where: dict, ancestors: frozenset) -> dict:
        """The durable entries under a directory: name -> (inode, subtree or None for a file):
        its entries now, with those changed since its fsync set back."""
        with os.scandir(where[ino][0]) as listing:
            entries = {e.name: e.stat(follow_symlinks=False).st_ino for e in listing}
        for name, old in self.pending.get(ino, {}).items():
            if old is None:
                entries.pop(name, None)
            else:
                entries[name] = old
        tree = {}
        for name, child in sorted(entries.items()):
            if child in ancestors:  # only partial syncs across directories make such a loop
                continue
            if child not in where:
                raise RuntimeError(f"{name}: the node of its durable entry is lost")
            is_dir = where[child][1]
            tree[name] = (
                child,
                self._durable_tree(child, where, ancestors | {child}) if is_dir else None,
            )
        return tree


def _walk(tree: dict, prefix: str = ""):
    """(relative path, (inode, subtree)) for every entry of a durable tree, parents first."""
    for name, (ino, children) in tree.items():
        rel = prefix + name
        yield rel, (ino, children)
        if children is not None:
            yield from _walk(children, rel + "/")


def _roll_back(path: str, log: _FileLog, rng: random.Random | None) -> int:
    """Put a file's data back to its last fsync; with `rng`, keep a prefix of its last write.
    Returns how many bytes of that write were kept."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, log.durable_size)
        for offset, old in reversed(log.undo):
            os.pwrite(fd, old, offset)
        if rng is None or log.last_write is None or len(log.last_write[1]) < 2:
            return 0
        offset, data = log.last_write
        kept = rng.randint(1, len(data) - 1)
        os.pwrite(fd, data[:kept], offset)
        return kept
    finally:
        os.close(fd)


def _build(tree: dict, dst: str, where: dict, placed: dict[int, str]) -> None:
    """Make the durable tree under `dst`: new directories (with the old ones' mode and times),
    files moved in, or copied where a file is durable in two places."""
    for name, (ino, children) in tree.items():
        target = os.path.join(dst, name)
        if children is not None:
            os.mkdir(target)
            _build(children, target, where, placed)
            shutil.copystat(where[ino][0], target, follow_symlinks=False)
        elif ino in placed:
            shutil.copy2(placed[ino], target, follow_symlinks=False)
        else:
            os.rename(where[ino][0], target)
            placed[ino] = target


class ForgetfulFS:
    """The forgetful disk for a test: mounts on enter (served by a child process, ready when
    the kernel has spoken to it), unmounts on exit however the test ended.

    `backing` and `mountpoint` are made if missing; neither may hold the other.
    """

    def __init__(
        self,
        backing: Path | str,
        mountpoint: Path | str,
        *,
        dir_entries_need_fsync: bool = True,
        timeout: float = 30.0,
    ) -> None:
        self.backing = Path(backing).resolve()
        self.mountpoint = Path(mountpoint).resolve()
        if (
            self.backing == self.mountpoint
            or self.backing in self.mountpoint.parents
            or self.mountpoint in self.backing.parents
        ):
            raise ValueError(f"{self.backing} and {self.mountpoint} must not hold one another")
        self.work = self.backing.with_name(f".{self.backing.name}.forgetful")
        self.dir_entries_need_fsync = dir_entries_need_fsync
        self.timeout = timeout
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._replies = None  # the reading side of _sock

    def __enter__(self) -> ForgetfulFS:
        self.mount()
        return self

    def __exit__(self, *exc_info) -> None:
        self.unmount()

    def mount(self) -> None:
        if self._proc is not None:
            raise RuntimeError("already mounted")
        for path in (self.backing, self.mountpoint):
            path.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.work, ignore_errors=True)  # left by a mount whose parent died
        self.work.mkdir()
        if self.work.stat().st_dev != self.backing.stat().st_dev:
            raise ValueError(f"{self.work} is not on the file system of {self.backing}")
        ours, theirs = socket.socketpair()
        with theirs, open(self.work / "fuse.log", "wb") as log:
            argv = [
                sys.executable,
                __file__,
                str(self.backing),
                str(self.mountpoint),
                str(self.work),
                str(int(self.dir_entries_need_fsync)),
                str(theirs.fileno()),
            ]
            self._proc = subprocess.Popen(
                argv,
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ours.settimeout(self.timeout)
        self._sock, self._replies = ours, ours.makefile("rb")
        try:
            self._read()  # {"ready": true}, sent from FUSE's init
            if not is_mounted(self.mountpoint):
                raise RuntimeError(f"{self.mountpoint} is not mounted after init")
        except BaseException as exc:
            detail = self._log()
            self.unmount()
            raise RuntimeError(f"forgetful FS did not mount: {exc}\n{detail}") from exc

    @property
    def pid(self) -> int | None:
        """The serving child's process id; None when not mounted."""
        return None if self._proc is None else self._proc.pid

    def crash(self, torn: bool = False, seed: int | None = None) -> dict:
        """Forget all that is not durable, in the backing directory (see the module's doc).
        Returns the paths dropped, restored, rolled back and torn (with the bytes kept)."""
        return self._call("crash", torn=torn, seed=seed)

    def counters(self) -> dict[str, int]:
        """How many fsync (file, with or without datasync) and fsyncdir calls the FS received."""
        return self._call("counters")

    def unmount(self) -> None:
        """Unmount, end the child (at once if files are still open: they fail from then on, with
        ENOTCONN), and remove the trash."""
        if self._proc is None:
            return
        try:
            if is_mounted(self.mountpoint):
                busy = _run(["fusermount3", "-u", str(self.mountpoint)], UNMOUNT_TIMEOUT)
                if busy:  # detached now; the child would serve the open files until they close
                    _lazy_unmount(self.mountpoint)
                    self._kill()
            try:
                self._proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                self._proc.wait(timeout=self.timeout)
            if is_mounted(self.mountpoint):
                _lazy_unmount(self.mountpoint)
        finally:
            self._replies.close()
            self._sock.close()
            self._proc = self._sock = self._replies = None
            shutil.rmtree(self.work, ignore_errors=True)

    def _kill(self) -> None:
        """SIGKILL the child's process group (libfuse's fusermount3 helper is in it too)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)

    def _call(self, op: str, **args) -> dict:
        if self._proc is None:
            raise RuntimeError("not mounted")
        try:
            self._sock.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        except OSError as exc:
            raise RuntimeError(
                f"the forgetful FS process ended (exit {self._proc.poll()})"
            ) from exc
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"forgetful FS: {op}: {reply['error']}")
        return reply["ok"]

    def _read(self) -> dict:
        line = self._replies.readline()
        if not line:
            raise RuntimeError(f"the forgetful FS process ended (exit {self._proc.poll()})")
        return json.loads(line)

    def _log(self) -> str:
        try:
            return (self.work / "fuse.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def _lazy_unmount(mountpoint: Path) -> None:
    if _run(["fusermount3", "-u", "-z", str(mountpoint)], UNMOUNT_TIMEOUT):
        _run(["umount", "-l", str(mountpoint)], UNMOUNT_TIMEOUT)


def _serve(backing: str, mountpoint: str, work: str, need_fsync: str, control_fd: str) -> None:
    """The child: serve the mount on this thread, the parent's requests on another."""
    import mfusepy

    class Fuse(mfusepy.FUSE):
        """mfusepy drops rename's flags and truncate's handle: refuse the one, keep the other."""

        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            return -errno.EINVAL if flags else super().rename_fuse_3(old, new, flags)

        def truncate_fuse_3(self, path: bytes | None, length: int, fip) -> int:
            fh = fip.contents.fh if fip else None
            decoded = None if path is None else path.decode(self.encoding, self.errors)
            return self.operations.truncate(decoded, length, fh)

    logging.basicConfig(level=logging.WARNING)
    os.umask(0)  # the kernel applied the caller's umask already
    sock = socket.socket(fileno=int(control_fd))

    def send(message: dict) -> None:
        sock.sendall(json.dumps(message).encode() + b"\n")

    ops = ForgetfulOps(backing, work, need_fsync == "1", on_ready=lambda: send({"ready": True}))

    def control() -> None:
        try:
            for line in sock.makefile("rb"):
                request = json.loads(line)
                try:
                    op = {"crash": ops.crash, "counters": ops.counters}[request["op"]]
                    send({"ok": op(**request["args"])})
                except Exception as exc:
                    logging.exception("control request %s", request)
                    send({"error": f"{type(exc).__name__}: {exc}"})
        finally:  # the parent is gone: end the mount, and with it this process
            _lazy_unmount(Path(mountpoint))

    threading.Thread(target=control, daemon=True).start()
    Fuse(
        ops,
        mountpoint,
        foreground=True,
        nothreads=True,
        auto_unmount=True,
        hard_remove=True,
        fsname="forgetful",
        subtype="forgetful",
        entry_timeout=0,
        attr_timeout=0,
        negative_timeout=0,
    )


if __name__ == "__main__":
    _serve(*sys.argv[1:])
