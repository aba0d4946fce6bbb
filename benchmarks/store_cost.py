#!/usr/bin/env python3
"""What storing costs in the store itself, per record: CPU of append, commit and the
background thread, without sockets or a server around it.

Drives a `QueueStore` the way the server does at C closed-loop clients: R commits of one record
per client each, with a pause between commits (the round trip), and prints the CPU time per
record of `append`, of `commit` (both in the calling thread) and of everything else in the
process (the background flusher in `write` and `buffer` mode, plus the loop's own overhead,
which the `none` row measures: sequence bookkeeping only, as `msgprof server --store none`).

    python benchmarks/store_cost.py                      # 100 clients, 500 commits, ~20 s
    python benchmarks/store_cost.py --clients 1000 --commits 100 --modes write
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from msgprof.server.nullstore import NullStore
from msgprof.store.queue import QueueStore


def measure(mode: str, clients: int, commits: int, payload_bytes: int, pause_s: float) -> dict:
    """CPU µs per record of append, commit and the rest of the process, for one store."""
    root = Path(tempfile.mkdtemp(prefix="msgprof-store-cost-"))
    store = NullStore() if mode == "none" else QueueStore(root, ack_after=mode)
    payload = b"p" * payload_bytes
    t_append = t_commit = 0
    cpu0 = time.process_time_ns()
    try:
        for seq in range(1, commits + 1):
            a = time.thread_time_ns()
            for cid in range(1, clients + 1):
                store.append(cid, seq, payload)
            b = time.thread_time_ns()
            failures = store.commit()
            t_append += b - a
            t_commit += time.thread_time_ns() - b
            if failures:
                raise RuntimeError(f"{mode}: commit failed: {next(iter(failures.values()))}")
            time.sleep(pause_s)
        cpu = time.process_time_ns() - cpu0
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)
    n = clients * commits
    return {
        "append": t_append / n / 1e3,
        "commit": t_commit / n / 1e3,
        "rest": (cpu - t_append - t_commit) / n / 1e3,
        "total": cpu / n / 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=100, help="clients per commit")
    parser.add_argument("--commits", type=int, default=500, help="commits (one record each)")
    parser.add_argument("--payload-bytes", type=int, default=64, help="payload size in bytes")
    parser.add_argument("--pause-ms", type=float, default=2.0, help="pause between commits (ms)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each mode (alternating)")
    parser.add_argument(
        "--modes", nargs="+", default=["none", "write", "buffer"], help="none, write, buffer, fsync"
    )
    args = parser.parse_args(argv)
    print("mode    append µs  commit µs  rest µs  total µs   (CPU per record)")
    for k in range(args.rounds):
        for mode in args.modes:
            r = measure(mode, args.clients, args.commits, args.payload_bytes, args.pause_ms / 1e3)
            print(
                f"{mode:7s} {r['append']:9.2f}  {r['commit']:9.2f}  {r['rest']:7.2f}  "
                f"{r['total']:8.2f}   round {k + 1}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
