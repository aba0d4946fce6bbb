"""The kernel's listen-queue and SYN counters, read before and after a point.

A connect time of about 1 s or 3 s is the mark of a SYN sent again (a listen queue that was
full, or a gated listener, dropped the first): these counters say whether it happened during the
point. They count for the whole network namespace (every listener of the host, not only the
server's), so a point's delta is an upper bound on what its own clients met.
"""

from __future__ import annotations

from pathlib import Path

NETSTAT = Path("/proc/net/netstat")

#: TcpExt counters kept (the kernel's name → the name in point.json and points.csv).
COUNTERS = {
    "ListenOverflows": "listen_overflows",  # a connection completed into a full accept queue
    "ListenDrops": "listen_drops",  # every SYN or ACK a listener dropped (overflows included)
    "TCPReqQFullDrop": "syn_queue_drops",  # a SYN dropped: the SYN queue was full, no cookies
    "TCPReqQFullDoCookies": "syn_cookies_sent",  # the SYN queue was full, a SYN cookie sent
    "TCPSynRetrans": "syn_retransmits",  # SYNs and SYN-ACKs sent again
}


def read_counters(path: Path = NETSTAT) -> dict[str, int]:
    """The kept TcpExt counters now ({} when the kernel does not show them)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    found: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2]):
        if not names.startswith("TcpExt:"):
            continue
        for name, value in zip(names.split()[1:], values.split()[1:]):
            if name in COUNTERS:
                found[COUNTERS[name]] = int(value)
    return found


def deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int | None]:
    """How much each counter grew between two readings (None where either lacks it)."""
    return {
        name: (after[name] - before[name]) if name in before and name in after else None
        for name in COUNTERS.values()
    }
