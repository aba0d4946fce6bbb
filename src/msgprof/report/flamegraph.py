"""A flame graph of collapsed stacks, as SVG: one box per frame, as wide as its samples, its
callees stacked on it (the root at the bottom), so the widest boxes are where the time went.

Drawn with matplotlib; a frame narrower than MIN_SHARE of the samples is left out (with its
callees), and a box is labelled only where the label fits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Boxes under this share of all samples are not drawn.
MIN_SHARE = 0.002
#: Characters a box of the whole width holds (for cutting labels to fit).
FULL_WIDTH_CHARS = 220


def _tree(stacks: list[tuple[list[str], int]]) -> dict[str, Any]:
    root: dict[str, Any] = {"n": 0, "kids": {}}
    for frames, count in stacks:
        root["n"] += count
        node = root
        for frame in frames:
            node = node["kids"].setdefault(frame, {"n": 0, "kids": {}})
            node["n"] += count
    return root


def _colour(name: str) -> tuple[float, float, float]:
    """A warm colour that stays the same for a name (its hash picks the shade)."""
    h = sum(map(ord, name)) % 97 / 97
    return (0.95, 0.45 + 0.45 * h, 0.2 + 0.2 * (1 - h))


def draw_flamegraph(ax: Any, stacks: list[tuple[list[str], int]]) -> int:
    """Draw `stacks` (outermost frame first) into `ax`; the number of samples."""
    import matplotlib.patches

    root = _tree(stacks)
    total = max(root["n"], 1)
    boxes: list[tuple[float, int, float, str]] = []  # (x, depth, width, frame)

    def place(node: dict[str, Any], x: float, depth: int) -> None:
        for frame, kid in sorted(node["kids"].items()):
            width = kid["n"] / total
            if width >= MIN_SHARE:
                boxes.append((x, depth, width, frame))
                place(kid, x, depth + 1)
            x += width

    place(root, 0.0, 0)
    for x, level, width, frame in boxes:
        ax.add_patch(matplotlib.patches.Rectangle((x, level), width, 0.95,
                     facecolor=_colour(frame), edgecolor="white", linewidth=0.3))  # fmt: skip
        chars = int(width * FULL_WIDTH_CHARS)
        if chars >= 4:
            label = frame if len(frame) <= chars else frame[: chars - 1] + "…"
            ax.text(x + 0.002, level + 0.45, label, fontsize=6, va="center", clip_on=True)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, depth_of(stacks))
    ax.set_axis_off()
    return root["n"]


def depth_of(stacks: list[tuple[list[str], int]]) -> int:
    """Levels a flame graph of `stacks` has (at least 1)."""
    return max((len(frames) for frames, _count in stacks), default=0) or 1


def write_flamegraph(stacks: list[tuple[list[str], int]], path: Path, title: str) -> Path:
    """Draw `stacks` (outermost frame first) into `path` (SVG; the suffix names the format)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, max(3.0, 0.22 * depth_of(stacks) + 1.0)))
    ax = fig.add_axes((0.01, 0.02, 0.98, 0.9))
    samples = draw_flamegraph(ax, stacks)
    ax.set_title(f"{title}: {samples} samples; width = share of samples, callers below",
                 loc="left", fontsize=9)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=path.suffix[1:] or "svg")  # .svg, or .png to look at
    return path
