#!/usr/bin/env python3
"""Before and after a server change: its CPU per message, two source trees alternating.

Each round runs `msgprof server` (write mode) from tree A and from tree B, in alternating order,
each driven by two `msgprof client` processes of 50 clients × --messages from the same tree; the
server's CPU time (psutil, all threads) is read from the clients' start to their end and divided
by the acknowledged messages. Paired within rounds, the median of B/A says what the change did,
on a host too noisy for one run to say it.

    python benchmarks/server_cpu_ab.py OLD_SRC NEW_SRC --rounds 8
    # e.g. git worktree add /tmp/old <rev>; ... /tmp/old/src src

Every server and client is bounded (--timeout-s) and stopped before the next starts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def run_once(src: Path, messages: int, timeout_s: float) -> tuple[float, float]:
    """(server CPU µs per acknowledged message, clients' acks per second) with tree `src`."""
    env = dict(os.environ, PYTHONPATH=str(src.resolve()))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        ready = tmp_path / "ready"
        server = subprocess.Popen(
            [sys.executable, "-m", "msgprof", "-q", "server", "--data-dir", str(tmp_path / "q"),
             "--ready-file", str(ready)], env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + timeout_s
            while not ready.exists():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server of {src} did not get ready")
                time.sleep(0.05)
            endpoint = ready.read_text().splitlines()[0]
            process = psutil.Process(server.pid)
            cpu0 = sum(process.cpu_times()[:2])
            clients = [
                subprocess.Popen(
                    [sys.executable, "-m", "msgprof", "-q", "client", "--endpoint", endpoint,
                     "--client-ids", ids, "--messages", str(messages), "--start", "all_connected",
                     "--deadline-s", str(timeout_s), "--out", str(tmp_path / f"c{k}")], env=env,
                )  # fmt: skip
                for k, ids in enumerate(("1-50", "51-100"))
            ]
            for client in clients:
                client.wait(timeout=timeout_s + 30)
            cpu1 = sum(process.cpu_times()[:2])
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        docs = [json.loads((tmp_path / f"c{k}" / "client.json").read_text()) for k in (0, 1)]
    acked = sum(doc["acked"] for doc in docs)
    return (cpu1 - cpu0) / acked * 1e6, sum(doc["acked_per_s"] or 0.0 for doc in docs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="tree A's src directory (before)")
    parser.add_argument("b", type=Path, help="tree B's src directory (after)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds (default: %(default)s)")
    parser.add_argument("--messages", type=int, default=400, help="per client (default: 400)")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="bound on each run")
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    for r in range(args.rounds):
        for name in ("a", "b") if r % 2 == 0 else ("b", "a"):
            cpu, rate = run_once(getattr(args, name), args.messages, args.timeout_s)
            results[name].append((cpu, rate))
            print(f"round {r} {name}: {cpu:.1f} µs/msg, {rate:.0f} acks/s", flush=True)
    a, b = results["a"], results["b"]
    cpu_ratios = [y[0] / x[0] for x, y in zip(a, b, strict=True)]
    rate_ratios = [y[1] / x[1] for x, y in zip(a, b, strict=True)]
    print(
        f"server CPU µs/msg median A {statistics.median(x[0] for x in a):.1f}, "
        f"B {statistics.median(x[0] for x in b):.1f}; paired B/A median "
        f"{statistics.median(cpu_ratios):.3f} ({sum(r < 1 for r in cpu_ratios)} of "
        f"{args.rounds} rounds favour B); acks/s B/A median {statistics.median(rate_ratios):.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
