#!/usr/bin/env python3
"""Power loss under load: SIGKILL the server *and* make its disk forget what was not synced.

A kill alone (benchmarks/crash_cycles.py) cannot test what `--ack-after fsync` promises, that
an acknowledged message survives a power cut: the page cache outlives a killed process, so a
missing sync passes every kill test. Here the server's data directory is on the forgetful disk
of tests/tools/forgetful_fs.py (a FUSE file system that, on `crash()`, forgets every write since
its file's last fsync and every directory entry since its directory's last fsync); each cycle
kills the server at a random moment under load, crashes the disk (half the time keeping a torn
prefix of each file's last unsynced write), and starts the server again on what is left. At the
end every acknowledged message is checked (crash_cycles' clients, verification and tables).

  fsync, per --sync-method (fdatasync, syncfs, auto): one client process (--resend) through all
         cycles; not one acknowledged message may be lost, nothing stored twice or corrupt.
  write  acknowledged once the kernel has the record: a power cut takes back what was not yet
         written back, so loss is expected; a client process per cycle and the loss measured
         per kill (its promise is a killed server, not a power cut: docs/reliability.md).

    python benchmarks/powerloss_cycles.py                       # 50 cycles each
    python benchmarks/powerloss_cycles.py --cycles 5 --methods fdatasync --no-write
    python benchmarks/powerloss_cycles.py --markdown

Needs FUSE (root, /dev/fuse, Debian fuse3, mfusepy): missing, it says why and exits 2. Exit
status 1 if fsync lost an acknowledged message, or any run stored a seq twice or read back a
corrupt record.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "tools"))
from crash_cycles import ModeResult, Settings, run_mode  # noqa: E402
from crash_report import failures, summary_table  # noqa: E402
from forgetful_fs import ForgetfulFS, require_fuse  # noqa: E402

SYNC_METHODS = ("fdatasync", "syncfs", "auto")


def run(settings: Settings, root: Path, torn_share: float = 0.5, progress=print) -> ModeResult:
    """One mode's cycles with the queues on a forgetful disk that forgets at every kill."""
    name = f"{settings.mode}-{settings.sync_method}"
    rng = random.Random(f"{settings.seed}-{name}")
    disk, mount = root / f"{name}-disk", root / f"{name}-mnt"
    disk.mkdir(parents=True)
    forgotten: list[dict] = []
    with ForgetfulFS(disk, mount) as fs:

        def power_cut() -> None:
            forgotten.append(fs.crash(torn=rng.random() < torn_share, seed=rng.randrange(2**32)))

        result = run_mode(settings, root / name, progress, data_dir=mount / "queues",
                          after_kill=power_cut)  # fmt: skip
    result.problems += [] if len(forgotten) == len(result.kills) else ["a crash did not run"]
    result.forgotten = forgotten  # type: ignore[attr-defined]
    return result


def forgot_line(result: ModeResult) -> str:
    """What the disk forgot over the cycles: files dropped (never durable), restored (removed
    or replaced, not durably), rolled back (unsynced writes undone) and torn, summed."""
    total = {"dropped": 0, "restored": 0, "rolled_back": 0, "torn": 0}
    for doc in getattr(result, "forgotten", []):
        for key in total:
            total[key] += len(doc.get(key) or ())
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in total.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=50, help="power cuts per run")
    parser.add_argument("--methods", default=",".join(SYNC_METHODS),
                        help="fsync mode's --sync-method values, comma-separated")  # fmt: skip
    parser.add_argument("--no-write", action="store_true", help="skip the write-mode run")
    parser.add_argument("--clients", type=int, default=10, help="clients per client process")
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill moments and tears")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if any(m not in SYNC_METHODS for m in methods) or args.cycles < 1:
        parser.error(f"methods must be among {', '.join(SYNC_METHODS)}; cycles >= 1")
    reason = require_fuse()
    if reason is not None:
        print(f"powerloss_cycles: no FUSE here: {reason}", file=sys.stderr)
        return 2
    runs = [Settings(mode="fsync", sync_method=m, cycles=args.cycles, clients=args.clients,
                     seed=args.seed, run_on_s=1.0) for m in methods]  # fmt: skip
    if not args.no_write:
        runs.append(Settings(mode="write", cycles=args.cycles, clients=args.clients,
                             seed=args.seed, may_lose=True, run_on_s=0.5))  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory(prefix="powerloss-") as tmp:
        root = args.keep or Path(tmp)
        for settings in runs:
            results.append(run(settings, root, progress=lambda s: print(s, file=sys.stderr)))
    status = 0
    print(summary_table(results, args.markdown))
    for r in results:
        print(f"{r.settings.mode}/{r.settings.sync_method}: the disk forgot {forgot_line(r)}")
        if r.settings.loss_allowed:
            lost = [k.lost for k in r.kills]
            print(f"write: acknowledged messages lost per power cut: mean "
                  f"{sum(lost) / max(len(lost), 1):.1f}, max {max(lost, default=0)}, "
                  f"cuts with a loss {sum(1 for n in lost if n)} of {len(lost)}")  # fmt: skip
        bad = failures(r)
        if bad:
            status = 1
            print(f"FAIL {r.settings.mode}/{r.settings.sync_method}: {'; '.join(bad)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
