"""System limits and provenance, captured where the job runs (a cluster node records its own).

Capacity results mean little without the limits they ran under: descriptors, listen backlog,
port range, cores, memory and the disk behind the queues. Provenance (commit, versions, host)
makes a result reviewable months later.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from msgprof import limits as process_limits

_SYSCTLS = {
    "somaxconn": "/proc/sys/net/core/somaxconn",
    "tcp_max_syn_backlog": "/proc/sys/net/ipv4/tcp_max_syn_backlog",
    "ip_local_port_range": "/proc/sys/net/ipv4/ip_local_port_range",
    "file_max": "/proc/sys/fs/file-max",
    "nr_open": "/proc/sys/fs/nr_open",
    "tcp_fin_timeout": "/proc/sys/net/ipv4/tcp_fin_timeout",
}


def _read_sysctl(path: str) -> str | None:
    try:
        return " ".join(Path(path).read_text().split())
    except OSError:
        return None


def _filesystem_of(path: Path) -> dict[str, Any]:
    """Mount point and filesystem type holding `path` (longest matching mount point)."""
    import psutil

    path = path.resolve()
    best = None
    for part in psutil.disk_partitions(all=True):
        mount = Path(part.mountpoint)
        if path == mount or mount in path.parents:
            if best is None or len(str(mount)) > len(best.mountpoint):
                best = part
    if best is None:
        return {"mountpoint": None, "fstype": None}
    return {"mountpoint": best.mountpoint, "fstype": best.fstype}


def limits(data_dir: Path | str | None = None) -> dict[str, Any]:
    """The limits that decide capacity on this host, for this process and `data_dir`."""
    import psutil
    import zmq

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    memory = psutil.virtual_memory()
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "captured_unix_s": time.time(),
        "rlimit_nofile_soft": soft,
        "rlimit_nofile_hard": hard,
        # CAP_SYS_RESOURCE: the run's processes may raise their hard limit (up to nr_open)
        "can_raise_nofile": process_limits.can_raise_hard(),
        **{name: _read_sysctl(path) for name, path in _SYSCTLS.items()},
        "cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "memory_total_bytes": memory.total,
        "memory_available_bytes": memory.available,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "curve": bool(zmq.has("curve")),
    }
    if data_dir is not None:
        target = Path(data_dir)
        while not target.exists() and target != target.parent:
            target = target.parent
        usage = shutil.disk_usage(target)
        info.update(
            data_dir=str(Path(data_dir).resolve()),
            disk_total_bytes=usage.total,
            disk_free_bytes=usage.free,
            **{f"data_{k}": v for k, v in _filesystem_of(target).items()},
        )
    return info


def git_commit(repo: Path | str = ".") -> dict[str, Any]:
    """Commit and dirtiness of the source tree at `repo`, or nulls outside a git checkout."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    # dirty = the source differs from the commit; results written by runs do not count
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    """Versions of the packages a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    names = [
        "msgprof", "pyzmq", "pandas", "pyarrow", "numpy", "matplotlib", "snakemake", "psutil", "isal"
    ]
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found
