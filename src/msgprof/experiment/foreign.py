"""A server that is not msgprof's (--server-command): its command line, its readiness and how
what it stored is checked.

The template's {ready} is a file in the run's work dir (the server writes its endpoint there,
the first line, once it accepts connections), {data} the run's data dir and {port} a port chosen
here, free on the bind address when chosen; with {port} and no {ready}, the server is ready once
a TCP connect to it succeeds. It is stopped like msgprof's server: SIGTERM, a grace period, then
SIGKILL; a server that dies of the SIGTERM (no handler) has stopped as asked.

Verification: msgprof's queue format is msgprof's own, so a foreign server is `none` by default
(lost unknown: empty, never 0) or `command`: a user's command prints, for each client, the
highest seq the server stored (`CLIENT_ID SEQ` per line); an acknowledged seq above it is lost.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from msgprof.experiment.verify import acked_by_client
from msgprof.templates import fill

#: Seconds a --verify-command may take.
VERIFY_TIMEOUT_S = 300.0


def free_port(host: str) -> int:
    """A TCP port free on `host` now (the kernel's choice in the ephemeral range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def server_argv(template: str, ready: Path, data: Path, port: int) -> list[str]:
    return fill(template, ready=ready, data=data, port=port)


def wait_port(host: str, port: int, server: subprocess.Popen, timeout_s: float,
              stopping: Any = None) -> bool:  # fmt: skip
    """Whether a TCP connect to host:port succeeds before `timeout_s` (False when the server
    exits first, or `stopping()` says the run is being stopped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (stopping and stopping()):
        if server.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stopped_cleanly(code: int) -> bool:
    """A foreign server's exit after SIGTERM: 0, or killed by the SIGTERM itself."""
    return code in (0, -signal.SIGTERM)


def not_verified(reason: str, method: str = "none") -> dict[str, Any]:
    """The verification of a point whose stored messages were not checked: counts unknown."""
    return {"verified": False, "method": method, "reason": reason, "checked": None, "lost": None,
            "duplicates_stored": None, "corrupt": None, "stored_unacked": None}  # fmt: skip


def verify_by_command(template: str, data: Path, rtt: pa.Table | None) -> dict[str, Any]:
    """Run --verify-command and count the acknowledged seqs above each client's highest
    stored seq as lost; a command that fails or prints nothing usable says so."""
    argv = fill(template, data=data, ready="", port="")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=VERIFY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        return not_verified(f"--verify-command did not run: {err}", "command")
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return not_verified(f"--verify-command exited {done.returncode}: {tail[0]}", "command")
    highest: dict[int, int] = {}
    for number, line in enumerate(done.stdout.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not all(f.isdigit() for f in fields):
            return not_verified(f"--verify-command line {number} is not CLIENT_ID SEQ: "
                                f"{line[:80]!r}", "command")  # fmt: skip
        highest[int(fields[0])] = int(fields[1])
    lost, examples = 0, []
    for cid, seqs in sorted(acked_by_client(rtt).items()):
        missing = sorted(s for s in seqs if s > highest.get(cid, 0))
        lost += len(missing)
        examples += [f"client {cid} seq {s}" for s in missing[:3]][: 10 - len(examples)]
    return {"verified": True, "method": "command", "checked": len(highest), "lost": lost,
            "duplicates_stored": None, "corrupt": None, "stored_unacked": None,
            "examples": {"lost": examples} if examples else {}}  # fmt: skip
