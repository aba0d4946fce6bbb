#!/usr/bin/env python3
"""Build the C client into a given directory, or say why it cannot be built here.

python benchmarks/c/build.py OUT_DIR   # prints the binary's path, or the reason on stderr
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("msgprof_c_client.c")


def build_c_client(out_dir: Path) -> tuple[Path | None, str]:
    """(path of the binary, "") when `cc` and libzmq's header are present, else (None, reason)."""
    compiler = shutil.which("cc")
    if compiler is None:
        return None, "no C compiler (cc) on PATH"
    binary = out_dir / "msgprof_c_client"
    argv = [compiler, "-O2", "-Wall", "-o", str(binary), str(SOURCE), "-lzmq"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None, "cc took over 120 s"
    if done.returncode != 0:
        reason = (
            "zmq.h not found (apt-get install libzmq3-dev)"
            if "zmq.h" in done.stderr
            else done.stderr.strip()
        )
        return None, f"cc failed: {reason}"
    return binary, ""


if __name__ == "__main__":
    path, why = build_c_client(Path(sys.argv[1]))
    if path is None:
        sys.exit(why)
    print(path)
