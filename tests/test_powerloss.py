"""Power loss: the server killed *and* its disk made to forget what was not synced (the
forgetful FUSE disk of tests/tools/forgetful_fs.py). `--ack-after fsync` loses no acknowledged
message, whatever --sync-method was asked for; write mode loses what it never synced, as its
promise says. The cycles are benchmarks/powerloss_cycles.py's (50 per method there, a few here).
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "tools"))
from forgetful_fs import ForgetfulFS, require_fuse  # noqa: E402

from msgprof.store.queue import QueueStore  # noqa: E402
from msgprof.store.reader import QueueReader  # noqa: E402

_reason = require_fuse()
if _reason:
    pytest.skip(_reason, allow_module_level=True)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


powerloss = _load("powerloss_cycles")
crash_cycles = sys.modules["crash_cycles"]

#: A store in a child process: five records of client 7 committed (acknowledged) in fsync mode
#: under a root that did not exist, then it waits to be killed.
_CHILD = """
import sys, time
from msgprof.store.queue import QueueStore
store = QueueStore(sys.argv[1], ack_after="fsync", sync_method=sys.argv[2])
for seq in range(1, 6):
    store.append(7, seq, b"kept %d" % seq)
    assert store.commit() == {}
print("acknowledged", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("method", ["fdatasync", "syncfs", "auto"])
def test_powerloss_keeps_what_a_new_store_acknowledged(tmp_path: Path, method: str) -> None:
    with ForgetfulFS(tmp_path / "disk", tmp_path / "mnt") as fs:
        root = tmp_path / "mnt" / "fresh" / "queues"  # neither directory exists yet
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(root), method],
                                 stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert child.stdout.readline().strip() == "acknowledged"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        forgot = fs.crash()
        seqs = [r.seq for r in QueueReader(root).records(7, after_seq=0)]
        assert seqs == [1, 2, 3, 4, 5], forgot


def test_powerloss_syncfs_is_not_trusted_on_a_fuse_disk(tmp_path: Path) -> None:
    with ForgetfulFS(tmp_path / "disk", tmp_path / "mnt"):
        with QueueStore(tmp_path / "mnt" / "q", ack_after="fsync", sync_method="syncfs") as store:
            assert store.sync_method == "fdatasync"  # syncfs returns 0 there without syncing
    with QueueStore(tmp_path / "local", ack_after="fsync", sync_method="syncfs") as store:
        assert store.sync_method == "syncfs"  # where syncfs reaches the file system


@pytest.mark.parametrize("method", ["fdatasync", "syncfs"])
def test_powerloss_cycles_lose_nothing_acknowledged_in_fsync_mode(tmp_path, method) -> None:
    settings = crash_cycles.Settings(mode="fsync", sync_method=method, cycles=3, clients=5,
                                     kill_after=(0.1, 0.4), run_on_s=0.5)  # fmt: skip
    result = powerloss.run(settings, tmp_path, progress=lambda _line: None)
    assert crash_cycles.failures(result) == []
    assert result.check["lost"] == 0 and result.check["checked"] > 0
    assert len(result.kills) == 3 and all(k.under_load for k in result.kills)
    assert len(result.forgotten) == 3  # a power cut at every kill (that the same cuts take
    # back what write mode acknowledged shows in the next test)


def test_powerloss_write_mode_loses_what_it_never_synced(tmp_path) -> None:
    settings = crash_cycles.Settings(mode="write", may_lose=True, cycles=2, clients=5,
                                     kill_after=(0.1, 0.3), run_on_s=0.3)  # fmt: skip
    result = powerloss.run(settings, tmp_path, progress=lambda _line: None)
    assert crash_cycles.failures(result) == []  # no duplicate, nothing corrupt, it restarted
    assert result.check["lost"] > 0  # acknowledged, in the page cache, gone with the power
