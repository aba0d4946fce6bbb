"""The load generator's own floor (calibration.json from `msgprof calibrate`) on the RTT pages
and the provenance page.

The report reads the run directory's calibration.json itself (it imports no experiment code);
a run without one is drawn as before.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger("msgprof.plots")

CALIBRATION = "calibration.json"


def floor_rtt_us(run_dir: Path) -> float | None:
    """The 1-client echo RTT p50 (µs) of run_dir/calibration.json; None without a usable one."""
    path = run_dir / CALIBRATION
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())["floor_rtt_p50_us"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("%s: no floor_rtt_p50_us (%s)", path, err)
        return None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def floor_sentence(floor_us: float) -> str:
    """What the provenance page states about the floor."""
    return (
        f"RTTs below {floor_us:.0f} µs are the load generator's own cost on this host "
        f"(msgprof calibrate: {CALIBRATION}, 1-client RTT p50 against libzmq's echo proxy)"
    )


def draw_floor(ax: Any, run_dir: Path) -> None:
    """A horizontal line at the floor on an RTT axis in µs, labelled; nothing without one."""
    floor_us = floor_rtt_us(run_dir)
    if floor_us is None:
        return
    ax.axhline(floor_us, color="0.25", linestyle=(0, (4, 2)), linewidth=1, zorder=1)
    ax.annotate(
        f"load generator's own floor ({floor_us:.0f} µs, msgprof calibrate)",
        xy=(0.01, floor_us),
        xycoords=("axes fraction", "data"),
        xytext=(0, 2),
        textcoords="offset points",
        fontsize=7,
        color="0.25",
        va="bottom",
    )
