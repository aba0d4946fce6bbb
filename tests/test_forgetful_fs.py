"""The forgetful disk (tests/tools/forgetful_fs.py) on a real FUSE mount: crash() forgets what a
power cut would take back (unsynced data, entries of unsynced directories) and keeps what was
made durable; syncfs(2) on a FUSE mount does not reach the file system; the mount goes away.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path

import psutil
import pytest

TOOLS = Path(__file__).resolve().parent / "tools"
sys.path.insert(0, str(TOOLS))  # the tool is a module of tests/tools, not of the test suite
from forgetful_fs import ForgetfulFS, is_mounted, require_fuse  # noqa: E402

_reason = require_fuse()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

SYNCED = bytes(range(256)) * 8  # 2 KiB, each byte telling its place


@pytest.fixture
def fs(tmp_path: Path):
    with ForgetfulFS(tmp_path / "disk", tmp_path / "mnt") as mounted:
        yield mounted


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: Path, data: bytes, *, offset: int | None = None, sync: bool = False) -> None:
    """One write(2) (appending unless at `offset`), fdatasync'ed if `sync`."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if offset is None else 0)
    fd = os.open(path, flags, 0o644)
    try:
        if offset is None:
            os.write(fd, data)
        else:
            os.pwrite(fd, data, offset)
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def durable_file(fs: ForgetfulFS, name: str, data: bytes = SYNCED) -> Path:
    """A file whose data and name are durable."""
    path = fs.mountpoint / name
    write(path, data, sync=True)
    fsync_dir(path.parent)
    return path


def test_forgetful_keeps_synced_data_and_drops_an_unsynced_append(fs):
    path = durable_file(fs, "segment")
    write(path, b"unsynced")
    assert path.read_bytes() == SYNCED + b"unsynced"  # the page-cache view sees every write
    report = fs.crash()
    assert report["rolled_back"] == ["segment"]
    assert (fs.backing / "segment").read_bytes() == SYNCED
    assert path.read_bytes() == SYNCED  # through the mount too


@pytest.mark.parametrize("need_fsync", [True, False])
def test_forgetful_forgets_names_whose_directory_was_not_synced(tmp_path, need_fsync):
    with ForgetfulFS(tmp_path / "disk", tmp_path / "mnt", dir_entries_need_fsync=need_fsync) as fs:
        write(fs.mountpoint / "new", SYNCED, sync=True)  # its data durable, its name not
        (fs.mountpoint / "dir").mkdir()
        write(fs.mountpoint / "dir" / "inner", SYNCED, sync=True)
        fsync_dir(fs.mountpoint / "dir")  # inner's name durable, dir's own name not
        report = fs.crash()
        kept = sorted(p.name for p in fs.backing.rglob("*"))
        if need_fsync:
            assert report["dropped"] == ["dir", "dir/inner", "new"]
            assert kept == []
        else:
            assert report["dropped"] == []
            assert kept == ["dir", "inner", "new"]
            assert (fs.mountpoint / "dir" / "inner").read_bytes() == SYNCED


def test_forgetful_puts_back_overwritten_synced_bytes(fs):
    path = durable_file(fs, "log")
    write(path, b"x" * 100, offset=10)
    write(path, b"y" * 50, offset=60)  # over the first overwrite: the synced bytes still win
    write(path, b"z" * 100, offset=len(SYNCED) - 20)  # across the synced end
    assert path.read_bytes() != SYNCED
    fs.crash()
    assert path.read_bytes() == SYNCED
    assert (fs.backing / "log").read_bytes() == SYNCED


def test_forgetful_undoes_an_unsynced_rename_over_a_synced_file(fs):
    final = durable_file(fs, "final", b"old")
    tmp = fs.mountpoint / "tmp"
    write(tmp, b"new", sync=True)  # data synced, its name and the rename not
    os.rename(tmp, final)
    assert final.read_bytes() == b"new"
    fs.crash()
    assert final.read_bytes() == b"old"
    assert not tmp.exists()  # never durable

    durable_file(fs, "tmp", b"new")  # its name durable this time: the crash brings it back
    os.rename(tmp, final)
    fs.crash()
    assert (final.read_bytes(), tmp.read_bytes()) == (b"old", b"new")

    os.rename(tmp, final)
    fsync_dir(fs.mountpoint)  # the rename made durable
    fs.crash()
    assert final.read_bytes() == b"new"
    assert sorted(os.listdir(fs.backing)) == ["final"]


def test_forgetful_brings_back_a_file_unlinked_without_a_directory_sync(fs):
    path = durable_file(fs, "consumed")
    path.unlink()
    assert not path.exists()
    assert fs.crash()["restored"] == ["consumed"]
    assert path.read_bytes() == SYNCED

    path.unlink()
    fsync_dir(fs.mountpoint)
    fs.crash()
    assert not (fs.backing / "consumed").exists()


def test_forgetful_torn_write_keeps_a_seeded_prefix(fs):
    path = durable_file(fs, "torn")
    appended = bytes(range(1, 201)) * 5  # 1,000 bytes, no zero: a kept byte shows

    def torn(seed: int) -> int:
        fd = os.open(path, os.O_WRONLY)  # back to the synced data: a torn crash keeps a prefix
        os.ftruncate(fd, len(SYNCED))
        os.fdatasync(fd)
        os.close(fd)
        write(path, appended)
        kept = fs.crash(torn=True, seed=seed)["torn"]["torn"]
        assert path.read_bytes() == SYNCED + appended[:kept]
        return kept

    first = torn(seed=7)
    assert 0 < first < len(appended)
    assert torn(seed=7) == first  # deterministic for a seed
    assert len({torn(seed) for seed in range(5)}) > 1  # and the seed matters
    before = path.read_bytes()
    write(path, appended)
    fs.crash()  # without torn=True the unsynced write vanishes whole
    assert path.read_bytes() == before


def test_forgetful_undoes_an_unsynced_truncate(fs):
    path = durable_file(fs, "cut")
    os.truncate(path, 100)
    assert path.stat().st_size == 100
    fs.crash()
    assert path.read_bytes() == SYNCED

    os.truncate(path, 10 * len(SYNCED))  # growing is undone too
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, 5)  # through an open file (FUSE passes its handle)
    finally:
        os.close(fd)
    fs.crash()
    assert path.read_bytes() == SYNCED

    os.truncate(path, 5)
    fd = os.open(path, os.O_WRONLY)
    os.fsync(fd)
    os.close(fd)
    fs.crash()
    assert path.read_bytes() == SYNCED[:5]


def test_forgetful_syncfs_returns_0_without_reaching_the_file_system(fs):
    path = durable_file(fs, "data")
    write(path, b"before syncfs")
    before = fs.counters()
    assert before == {"fsync": 1, "fsyncdir": 1}  # the FS counts what reaches it
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(fs.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert libc.syncfs(fd) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)
    assert fs.counters() == before  # no fsync, no fsyncdir: syncfs did not reach the FS
    fs.crash()
    assert path.read_bytes() == SYNCED  # what syncfs "synced" is lost


def test_forgetful_statfs_passes_through(fs):
    mounted, backing = os.statvfs(fs.mountpoint), os.statvfs(fs.backing)
    assert (mounted.f_bsize, mounted.f_blocks, mounted.f_files) == (
        backing.f_bsize,
        backing.f_blocks,
        backing.f_files,
    )


def test_forgetful_unmounts_on_exit_even_when_the_test_failed(tmp_path):
    mountpoint = tmp_path / "mnt"
    with pytest.raises(RuntimeError, match="the test failed"):
        with ForgetfulFS(tmp_path / "disk", mountpoint) as fs:
            assert os.path.ismount(mountpoint)
            pid = fs.pid
            write(mountpoint / "f", b"data", sync=True)
            raise RuntimeError("the test failed")
    assert not os.path.ismount(mountpoint)
    assert not is_mounted(mountpoint)  # not even a dead mount left behind
    assert fs.pid is None and not psutil.pid_exists(pid) and not fs.work.exists()
    assert (tmp_path / "disk" / "f").read_bytes() == b"data"  # the disk as it was last seen

    with ForgetfulFS(tmp_path / "disk", mountpoint) as fs:
        fd = os.open(mountpoint / "f", os.O_RDONLY)  # left open: the unmount is lazy
    assert not is_mounted(mountpoint)
    with pytest.raises(OSError):
        os.read(fd, 1)  # the file system is gone from under it
    with contextlib.suppress(OSError):  # closed all the same, with ENOTCONN
        os.close(fd)


def test_forgetful_crash_refuses_while_a_file_is_open(fs):
    path = durable_file(fs, "open")
    write(path, b"unsynced")
    with open(path, "rb"), pytest.raises(RuntimeError, match="still open"):
        fs.crash()  # after RELEASE_WAIT seconds
    fs.crash()
    assert path.read_bytes() == SYNCED
