"""The report of benchmarks/crash_cycles.py: what fails a mode's run, and its tables."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crash_cycles import ModeResult


def failures(result: ModeResult) -> list[str]:
    """What makes a mode's run fail: the guarantees of docs/reliability.md."""
    out = list(result.problems)
    check = result.check
    if not result.settings.loss_allowed and check.get("lost"):
        out.append(f"{check['lost']} acknowledged messages lost")
    if check.get("duplicates_stored"):
        out.append(f"{check['duplicates_stored']} records stored twice")
    if check.get("corrupt"):
        out.append(f"{check['corrupt']} corrupt records")
    # The SIGTERM that ends the clients leaves at most one message per client in flight.
    errors = result.errors()
    errors.pop("not_sent", None)
    clients = result.settings.clients * len(result.client_docs)
    if errors.get("TIMEOUT", 0) <= clients:
        errors.pop("TIMEOUT", None)
    if not result.settings.loss_allowed and errors:
        out.append(f"client errors {errors}")
    return out


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join(fmt.format(*r) for r in [header, *rows])


def _min_median(values: list[int]) -> tuple[int, int]:
    return (min(values), int(statistics.median(values))) if values else (0, 0)


def summary_table(results: list[ModeResult], markdown: bool) -> str:
    header = ["ack_after", "kills", "under load", "acks per life min/median", "acked", "lost", "dup stored", "corrupt",
              "stored unacked", "resends", "DUPLICATE acks", "recovery findings",
              "restart median ms", "wall s"]  # fmt: skip
    rows = []
    for r in results:
        check = r.check
        method = r.settings.sync_method
        rows.append([
            r.settings.mode if method == "auto" else f"{r.settings.mode}/{method}",
            str(len(r.kills)),
            str(sum(k.under_load and k.acks_in_life > 0 for k in r.kills)),
            "/".join(str(v) for v in _min_median([k.acks_in_life for k in r.kills])),
            str(r.total("acked") + r.total("duplicates")),
            str(check.get("lost", "?")),
            str(check.get("duplicates_stored", "?")),
            str(check.get("corrupt", "?")),
            str(check.get("stored_unacked", "?")),
            str(r.total("resends")),
            str(r.total("duplicates") + r.total("stale_replies")),
            str(sum(k.recovery_findings for k in r.kills)),
            f"{statistics.median(k.restart_s for k in r.kills) * 1e3:.0f}" if r.kills else "-",
            f"{r.wall_s:.0f}",
        ])  # fmt: skip
    return _table(header, rows, markdown)


def buffer_table(result: ModeResult, markdown: bool) -> str:
    """Loss per kill in buffer mode against rate x flush interval."""
    interval_s = result.settings.flush_interval_ms / 1e3
    header = ["kill", "acks/s before", "rate x interval", "lost", "lost / (rate x interval)",
              "lost / rate ms", "oldest lost sent ms before kill"]  # fmt: skip
    rows = []
    for n, k in enumerate(result.kills, 1):
        bound = k.rate_per_s * interval_s
        rows.append([
            str(n), f"{k.rate_per_s:.0f}", f"{bound:.1f}", str(k.lost),
            f"{k.lost / bound:.2f}" if bound else "-",
            f"{k.lost / k.rate_per_s * 1e3:.1f}" if k.rate_per_s else "-",
            f"{k.oldest_lost_ms:.1f}" if k.oldest_lost_ms is not None else "-",
        ])  # fmt: skip
    return _table(header, rows, markdown)


def buffer_summary(result: ModeResult) -> dict[str, float]:
    """Per-kill loss figures of a buffer run: mean, max, worst ratio to the bound, oldest age."""
    interval_s = result.settings.flush_interval_ms / 1e3
    lost = [k.lost for k in result.kills] or [0]
    ratios = [k.lost / (k.rate_per_s * interval_s) for k in result.kills if k.rate_per_s > 0]
    ages = [k.oldest_lost_ms for k in result.kills if k.oldest_lost_ms is not None]
    return {
        "lost_mean": statistics.mean(lost),
        "lost_max": max(lost),
        "ratio_mean": statistics.mean(ratios) if ratios else 0.0,
        "ratio_max": max(ratios) if ratios else 0.0,
        "oldest_lost_ms": max(ages) if ages else 0.0,
        "flush_interval_ms": result.settings.flush_interval_ms,
    }
