"""The verdict of a point or step: ok, or the limits and failures it hit, named and explained.

A point that hits a limit (descriptors, disk, timeouts) is a result, not a crash: its verdict is
the first of the reasons below that applies, in this order of precedence, and its detail says
them all (docs/results.md lists the verdicts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from msgprof.config import PointConfig

OK_DETAIL = "all clients connected, every message acknowledged and stored once"


@dataclass(frozen=True)
class Counts:
    """What the clients and the verifier counted for one point or step."""

    #: Messages the point was to send (msgprof.experiment.summary.planned).
    planned: int
    connected: int
    acked: int
    lost: int
    duplicates: int
    corrupt: int
    #: Messages settled by anything but OK or DUPLICATE, by kind (TIMEOUT, ...).
    errors: dict[str, int]
    #: A paced point whose generator fell behind its schedule: why (else None).
    generator_behind: str | None = None


def reasons(
    config: PointConfig, problems: list[str], server: dict[str, Any], counts: Counts
) -> list[tuple[str, str]]:
    """(verdict, detail) of every limit or failure the point hit, in order of precedence."""
    connections = server.get("connections", {})
    accept_failed = connections.get("accept_failed", {})
    refused = connections.get("refused", 0)
    replies = server.get("replies", {})
    planned = counts.planned
    found = []
    if "interrupted" in problems:
        found.append(
            ("interrupted", "stopped by SIGTERM or SIGINT before it ended; what was measured "
                            "until then is kept and verified")
        )  # fmt: skip
    # msgprof's server writes its final stats when it stops cleanly; a foreign one writes none
    final_stats_missing = not server and config.store == "file" and config.server_command is None
    if "server_failed" in problems or final_stats_missing:
        found.append(("server_failed", "the server did not start or did not exit cleanly"))
    if "server_hung" in problems:
        found.append(("server_hung", "the server did not stop within its bound after SIGTERM"))
    if accept_failed or refused:
        found.append(
            (
                "descriptor_limit",
                f"the server ran out of descriptors for connections (soft RLIMIT_NOFILE "
                f"{server.get('rlimit_nofile', {}).get('soft')}, at most "
                f"{connections.get('max_connections')} connections): "
                f"{connections.get('admitted', 'unknown')} admitted, {refused} refused, "
                f"accept failures {accept_failed or 'none'}",
            )
        )
    if replies.get("STORAGE_FULL"):
        found.append(("storage_full", f"{replies['STORAGE_FULL']} STORAGE_FULL replies"))
    if replies.get("STORAGE_ERROR"):
        found.append(("storage_error", f"{replies['STORAGE_ERROR']} STORAGE_ERROR replies"))
    if counts.lost or counts.duplicates or counts.corrupt:
        found.append(
            ("data_loss", f"lost {counts.lost}, stored twice {counts.duplicates}, corrupt "
                          f"{counts.corrupt} acknowledged messages")
        )  # fmt: skip
    if counts.connected < config.clients:
        found.append(
            (
                "not_connected",
                f"{config.clients - counts.connected} of {config.clients} clients never connected",
            )
        )
    if "deadline" in problems:
        found.append(("deadline", f"clients did not finish within {config.deadline_s} s"))
    if counts.errors.get("TIMEOUT"):
        found.append(
            (
                "timeouts",
                f"{counts.errors['TIMEOUT']} acks did not come within {config.timeout_s} s",
            )
        )
    if "client_failed" in problems:
        found.append(("client_failed", "a client process exited with an error (see client-*.log)"))
    if counts.generator_behind:
        found.append(("generator_behind", counts.generator_behind))
    if counts.acked < planned and not found:
        found.append(("incomplete", f"{counts.acked} of {planned} messages acknowledged"))
    return found


def verdict(found: list[tuple[str, str]]) -> tuple[str, str]:
    """(verdict, detail): the first reason and all of them, or ok."""
    if not found:
        return "ok", OK_DETAIL
    return found[0][0], "; ".join(text for _kind, text in found)
