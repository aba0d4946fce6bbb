"""Process limits that decide capacity: open descriptors first of all.

The seed's server stopped at 250 clients with "too many open files"; every msgprof process
raises its soft RLIMIT_NOFILE to what it needs and says what it got. Past the hard limit only a
process with CAP_SYS_RESOURCE (root, unless a container drops it) may go, up to fs.nr_open;
anything else is a LimitError that names the limit and how to raise it: never a silent cap.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

#: Bit of CAP_SYS_RESOURCE in a capability set (linux/capability.h): lets a process raise its
#: hard limits.
CAP_SYS_RESOURCE = 24
NR_OPEN = Path("/proc/sys/fs/nr_open")


class LimitError(ValueError):
    """A limit of this host a run cannot fit (a request it cannot grant: reported like bad
    input, before anything starts); `kind` names it: descriptors or ports."""

    def __init__(self, message: str, kind: str = "descriptors") -> None:
        super().__init__(message)
        self.kind = kind


def can_raise_hard() -> bool:
    """Whether this process may raise a hard limit: CAP_SYS_RESOURCE in its effective set."""
    try:
        status = Path("/proc/self/status").read_text().splitlines()
        effective = next(line.split()[1] for line in status if line.startswith("CapEff:"))
        return bool(int(effective, 16) >> CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError, IndexError, StopIteration):  # no /proc: root is the best guess
        return os.geteuid() == 0


def nr_open() -> int:
    """fs.nr_open: the most descriptors any process may be allowed."""
    try:
        return int(NR_OPEN.read_text())
    except (OSError, ValueError):
        return 1 << 20


def ceiling() -> int:
    """The highest soft RLIMIT_NOFILE this process can set: its hard limit, or fs.nr_open when
    it may raise the hard limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if can_raise_hard():
        return max(nr_open(), hard) if hard != resource.RLIM_INFINITY else nr_open()
    return hard if hard != resource.RLIM_INFINITY else nr_open()


def how_to_raise(needed: int) -> str:
    """What a user can do to give a process `needed` descriptors."""
    return (
        f"start it under a hard limit of at least {needed}, set by a process that holds "
        f"CAP_SYS_RESOURCE (`ulimit -Hn {needed}` in a root shell, `prlimit "
        f"--nofile={needed}:{needed} --pid PID`, LimitNOFILE= in a systemd unit, nofile in "
        f"/etc/security/limits.conf, `docker run --ulimit nofile={needed}:{needed}`)"
    )


def shortfall(needed: int, what: str) -> str | None:
    """Why this process cannot have `needed` descriptors for `what` (a sentence naming the
    limit and how to raise it), or None when it can."""
    if needed <= ceiling():
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if can_raise_hard():
        return (
            f"{what}: {needed} descriptors are needed, above fs.nr_open ({nr_open()}), the most "
            f"any process may have; raise it first (sysctl -w fs.nr_open={needed})"
        )
    who = (
        "not root"
        if os.geteuid() != 0
        else "root without CAP_SYS_RESOURCE (a container may drop it)"
    )
    return (
        f"{what}: {needed} descriptors are needed but RLIMIT_NOFILE is {soft} (hard {hard}), and "
        f"this process cannot raise the hard limit: it is {who}. To go on, {how_to_raise(needed)}"
    )


def raise_nofile(target: int | None = None) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to `target` (default: the hard limit); return (soft, hard).

    Never lowers the limit. A target above the hard limit raises the hard limit too when this
    process may (CAP_SYS_RESOURCE), else LimitError.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if target is None else target
    if hard != resource.RLIM_INFINITY and want > hard:
        problem = shortfall(want, f"a soft RLIMIT_NOFILE of {want}")
        if problem is not None:
            raise LimitError(problem)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        return want, want
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft, hard


def lower_nofile(target: int) -> tuple[int, int]:
    """Set the soft RLIMIT_NOFILE to `target` (used to provoke descriptor exhaustion on purpose)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target, hard


def open_fds() -> int:
    """Descriptors this process has open now, or -1 when none is left to count them with."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir itself holds
    except OSError:
        return -1
