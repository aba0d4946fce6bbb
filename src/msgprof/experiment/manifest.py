"""The run's manifest: what produced results/<run>/, so a result can be reviewed months later.

Commit, package versions, host, the run's start and end (from its measured jobs), and a hash of
the config as used (which is written beside it).
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any, Iterable

import yaml

from msgprof import atomic
from msgprof.experiment import sysinfo


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the config in canonical JSON: equal configs, equal hashes."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _span(documents: Iterable[Path]) -> tuple[float | None, float | None]:
    """Earliest start and latest end over point.json / master.json documents."""
    starts, ends = [], []
    for path in documents:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if doc.get("started_unix_s"):
            starts.append(doc["started_unix_s"])
        if doc.get("ended_unix_s"):
            ends.append(doc["ended_unix_s"])
    return (min(starts) if starts else None, max(ends) if ends else None)


def write_manifest(
    config: dict[str, Any],
    measured: Iterable[Path],
    manifest_path: Path,
    config_path: Path,
    source_dir: Path,
) -> dict[str, Any]:
    """Write the config as used and the manifest (both atomically); return the manifest."""
    measured = [Path(p) for p in measured]
    start, end = _span(measured)
    manifest = {
        "run": config.get("run"),
        "config_sha256": config_hash(config),
        "config_file": Path(config_path).name,
        "git": sysinfo.git_commit(source_dir),
        "packages": sysinfo.package_versions(),
        "host": socket.gethostname(),
        "limits": sysinfo.limits(),
        "started_unix_s": start,
        "ended_unix_s": end,
        "measured": [str(p) for p in measured],
    }
    atomic.write_text(config_path, yaml.safe_dump(config, sort_keys=False))
    atomic.write_json(manifest_path, manifest)
    return manifest
