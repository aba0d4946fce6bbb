"""Process limits that decide capacity: open descriptors first of all.

The seed's server stopped at 250 clients with "too many open files"; every msgprof process
raises its soft RLIMIT_NOFILE to what it needs (up to the hard limit) and says what it got.
"""

from __future__ import annotations

import os
import resource


def raise_nofile(target: int | None = None) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to `target` (default: the hard limit); return (soft, hard).

    Never lowers the limit and never asks for more than the hard limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if target is None else target
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
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
