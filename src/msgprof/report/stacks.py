"""py-spy's collapsed stacks (one line per distinct stack: frames outermost first, joined by
';', then a count), read and turned into what a profile is looked at with: the per-function
shares of top.csv and speedscope's file format. A frame is `name (file:line)`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any


def parse_frame(frame: str) -> tuple[str, str, int]:
    """(function, file, line) of a py-spy frame `name (file:line)`; file "" when it has none."""
    name, _, where = frame.rpartition(" (")
    if not name or not where.endswith(")"):
        return frame, "", 0
    file, _, line = where[:-1].rpartition(":")
    return name, file, int(line) if line.isdigit() else 0


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    """The stacks of a collapsed file: (frames outermost first, samples). A thread's root
    frame (py-spy --threads: `thread (TID): NAME`) is named `thread NAME`, so that the same
    thread of two points is one function in profile.csv."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            frames = stack.split(";")
            if frames[0].startswith("thread (") and "): " in frames[0]:
                frames[0] = "thread " + frames[0].partition("): ")[2]
            stacks.append((frames, int(count)))
    return stacks


def top_rows(stacks: list[tuple[list[str], int]]) -> list[dict[str, Any]]:
    """top.csv's rows, the most self time first."""
    total = sum(count for _frames, count in stacks)
    own: Counter[str] = Counter()
    on_stack: Counter[str] = Counter()
    for frames, count in stacks:
        own[frames[-1]] += count
        for frame in set(frames):
            on_stack[frame] += count
    rows = []
    for frame, samples in on_stack.items():
        function, file, line = parse_frame(frame)
        rows.append({"function": function, "file": file, "line": line,
                     "self_pct": round(100 * own[frame] / total, 3),
                     "total_pct": round(100 * samples / total, 3), "samples": samples})  # fmt: skip
    return sorted(rows, key=lambda r: (-r["self_pct"], -r["total_pct"], r["function"]))


def speedscope(stacks: list[tuple[list[str], int]], name: str) -> dict[str, Any]:
    """The samples in speedscope's file format (a "sampled" profile, weights in samples)."""
    index: dict[str, int] = {}
    frames: list[dict[str, Any]] = []
    samples, weights = [], []
    for stack, count in stacks:
        ids = []
        for frame in stack:
            if frame not in index:
                index[frame] = len(frames)
                function, file, line = parse_frame(frame)
                frames.append({"name": function, "file": file, "line": line})
            ids.append(index[frame])
        samples.append(ids)
        weights.append(count)
    return {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": frames},
        "profiles": [{"type": "sampled", "name": name, "unit": "none", "startValue": 0,
                      "endValue": sum(weights), "samples": samples, "weights": weights}],
        "name": name,
        "exporter": "msgprof",
    }  # fmt: skip
