#!/usr/bin/env python3
"""What sampling the server costs: throughput at 100 clients with and without py-spy.

    python benchmarks/profiler_overhead.py [--rounds 5] [--rate-hz 100] [--messages 400]

Each round runs `msgprof point --clients 100 --messages M` (write mode) twice, once with
`--profile --profile-rate-hz R` and once without, the order alternating between rounds; the
ratio profiled / unprofiled of the points' throughput (all clients active) is paired within
the round, and the median over rounds is printed with every round's numbers. A ratio of 0.95 or
more is the bar for sampling to be left on. Every point is a full point: its server and client
processes are reaped before the next starts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def throughput(profiled: bool, rate_hz: int, messages: int, out: Path) -> tuple[float, int]:
    """(msg/s with all clients active, profile samples) of one point."""
    argv = [sys.executable, "-m", "msgprof", "-q", "point", "--clients", "100", "--messages",
            str(messages), "--out", str(out)]  # fmt: skip
    if profiled:
        argv += ["--profile", "--profile-rate-hz", str(rate_hz)]
    subprocess.run(argv, check=True, timeout=600)
    doc = json.loads((out / "point.json").read_text())
    if doc["verdict"] != "ok":
        raise RuntimeError(f"{out}: verdict {doc['verdict']}")
    return doc["throughput_msgs_per_s"], doc["profile"].get("samples", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="Default: 5")
    parser.add_argument("--rate-hz", type=int, default=100, help="Default: 100")
    parser.add_argument("--messages", type=int, default=400, help="per client. Default: 400")
    args = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            found = {}
            for profiled in (False, True) if r % 2 == 0 else (True, False):
                out = Path(tmp) / f"r{r}-{'on' if profiled else 'off'}"
                found[profiled] = throughput(profiled, args.rate_hz, args.messages, out)
            ratio = found[True][0] / found[False][0]
            ratios.append(ratio)
            print(f"round {r + 1}: off {found[False][0]:,.0f} msg/s, on {found[True][0]:,.0f} "
                  f"msg/s ({found[True][1]} samples), on/off {ratio:.3f}", flush=True)  # fmt: skip
    print(f"\nprofiled/unprofiled throughput at 100 clients, {args.rate_hz} Hz: median "
          f"{statistics.median(ratios):.3f} over {args.rounds} rounds "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
