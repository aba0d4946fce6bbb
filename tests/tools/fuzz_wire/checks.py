"""The verdict of a fuzzing run (`check`: the properties it must have) and the table a person
reads (`format_report`)."""

from __future__ import annotations

from typing import Any

from .contract import KINDS


class _Failures(list):
    """Failed properties, one line each."""

    def need(self, ok: bool, text: str) -> None:
        if not ok:
            self.append(text)


def _check_fuzzers(report: dict[str, Any], f: _Failures) -> None:
    """The fuzzers ran to their quotas, and every DEALER reply was the one owed."""
    c = report["config"]
    for doc in report["workers"]:
        f.need("missing" not in doc, f"fuzzer {doc['worker']} wrote no result")
        f.need(
            doc.get("stop") == "quota",
            f"fuzzer {doc['worker']} stopped by {doc.get('stop')}, not its quota",
        )
    dealer, raw = report["dealer"], report["raw"]
    f.need(
        dealer.get("malformed", 0) >= c["messages"],
        f"{dealer.get('malformed', 0)} malformed sent < {c['messages']}",
    )
    f.need(raw.get("connections", 0) >= c["raw_connections"], "too few raw connections")
    for ending in ("connect_failed", "closed_in_handshake", "stalled"):
        f.need(
            not raw.get("endings", {}).get(ending),
            f"raw connections {ending}: {raw.get('endings', {}).get(ending)}",
        )
    f.need(
        dealer.get("reply_errors", 0) == 0,
        f"{dealer.get('reply_errors')} replies differ from the contract",
    )
    f.need(
        dealer.get("missing_replies", 0) == 0,
        f"{dealer.get('missing_replies')} replies never came",
    )


def _check_counts(report: dict[str, Any], f: _Failures) -> None:
    """The server counted exactly what the fuzzers and the legitimate rounds predict."""
    exp, srv = report["expected"], report["server"]
    for kind in sorted(set(exp["rejected"]) | set(srv["rejected"])):
        want, got = exp["rejected"].get(kind, 0), srv["rejected"].get(kind, 0)
        f.need(want == got, f"rejected[{kind}]: sent {want}, server counted {got}")
    for status in sorted(set(exp["replies"]) | set(srv["replies"])):
        want, got = exp["replies"].get(status, 0), srv["replies"].get(status, 0)
        f.need(want == got, f"replies[{status}]: expected {want}, server sent {got}")
    for name, label, key in (
        ("unanswered", "unanswered", "unanswered"),
        ("received", "received", "received"),
        ("takeovers", "takeovers", "client_id_takeovers"),
    ):
        f.need(exp[name] == srv[key], f"{label}: expected {exp[name]}, got {srv[key]}")
    accepted = srv["connections"].get("accepted")
    f.need(
        exp["accepted"] == accepted,
        f"connections accepted: expected {exp['accepted']}, got {accepted}",
    )


def _check_queues(report: dict[str, Any], f: _Failures) -> None:
    """Legitimate clients lost nothing; the fuzzers' queues hold what the model says, no more."""
    for r in report["legit"]["rounds"]:
        f.need(
            r["acked"] == r["planned"] and not r["errors"],
            f"legit round {r['client_ids']} ({r['phase']}): {r['acked']}/{r['planned']} "
            f"acked, errors {r['errors']}",
        )
    phases = {r["phase"] for r in report["legit"]["rounds"]}
    f.need(phases == {"before", "during", "after"}, f"legit phases run: {sorted(phases)}")
    v = report["verification"]
    f.need(
        v["lost"] == 0 and v["duplicates_stored"] == 0 and v["corrupt"] == 0,
        f"legit queues: lost {v['lost']}, stored twice {v['duplicates_stored']}, "
        f"corrupt {v['corrupt']}",
    )
    fq = report["fuzz_queues"]
    f.need(
        not fq["mismatched"],
        f"fuzzer queues differ from the sequence model: {fq['mismatched'][:5]}",
    )
    f.need(
        not fq["unexpected_queue_ids"],
        f"queues nobody should have created: {fq['unexpected_queue_ids'][:5]}",
    )


def check(report: dict[str, Any]) -> list[str]:
    """The properties the run must have; one line per failure (empty: all hold)."""
    failures = _Failures()
    failures.need(
        report["server_exit"] == 0, f"server exit code {report['server_exit']} (it must never die)"
    )
    failures.need(not report["problems"], f"problems: {report['problems']}")
    _check_fuzzers(report, failures)
    _check_counts(report, failures)
    _check_queues(report, failures)
    return list(failures)


def _count_lines(report: dict[str, Any]) -> list[str]:
    """Sent (predicted) against counted, by kind and status."""
    exp, srv = report["expected"], report["server"]
    lines = [f"{'kind':<22}{'sent':>10}{'counted':>10}"]

    def row(label: str, want: int, got: int | None) -> None:
        mark = "" if want == got else "   MISMATCH"
        lines.append(f"{label:<22}{want:>10,}{got if got is not None else -1:>10,}{mark}")

    order = KINDS + tuple(sorted(set(srv["rejected"]) - set(KINDS)))
    for kind in order:
        if kind in exp["rejected"] or kind in srv["rejected"]:
            row(kind, exp["rejected"].get(kind, 0), srv["rejected"].get(kind, 0))
    row("total rejected", sum(exp["rejected"].values()), sum(srv["rejected"].values()))
    row("unanswered", exp["unanswered"], srv["unanswered"])
    for status in sorted(set(exp["replies"]) | set(srv["replies"])):
        row(f"replies {status}", exp["replies"].get(status, 0), srv["replies"].get(status, 0))
    row("received", exp["received"], srv["received"])
    row("connections accepted", exp["accepted"], srv["connections"].get("accepted"))
    row("client id takeovers", exp["takeovers"], srv["client_id_takeovers"])
    return lines


def _fuzzer_lines(report: dict[str, Any]) -> list[str]:
    """What the DEALER and raw fuzzers sent, and how the raw connections ended."""
    dealer, raw = report["dealer"], report["raw"]
    lines = [
        (
            f"DEALER fuzzers: {dealer.get('messages', 0):,} messages "
            f"({dealer.get('malformed', 0):,} malformed) on {dealer.get('connections', 0):,} "
            f"connections in {report['fuzz_wall_s']:.1f} s; reply errors "
            f"{dealer.get('reply_errors', 0)}, missing replies {dealer.get('missing_replies', 0)}"
        ),
        (
            f"raw fuzzer: {raw.get('connections', 0):,} connections, {raw.get('bytes', 0):,} bytes, "
            f"{raw.get('messages', 0):,} messages decoded from them by libzmq; "
            f"endings {raw.get('endings', {})}"
        ),
        "  unversioned ZMTP/1.0 peers (raw bytes not starting with 0xFF) are "
        + ("taken: their frames reach the server" if raw.get("zmtp1_accepted") else "refused"),
    ]
    for cls, n in sorted(raw.get("by_class", {}).items()):
        delivered = raw["delivered_by_class"].get(cls, 0)
        lines.append(f"  {cls:<32}{n:>7,} connections {delivered:>7,} messages delivered")
    return lines


def _legit_lines(report: dict[str, Any]) -> list[str]:
    """Legitimate RTT without and with the fuzzers."""
    c = report["config"]
    lines = [
        f"legit clients: {c['legit_clients']} x {c['legit_messages']} messages a round",
        f"{'phase':<26}{'rounds':>7}{'messages':>10}{'p50 us':>10}{'p99 us':>10}{'p99.9 us':>10}",
    ]
    labels = {"before": "without fuzzer (before)", "during": "with fuzzer",
              "after": "without fuzzer (after)"}  # fmt: skip
    for phase, label in labels.items():
        q = report["legit"]["rtt"][phase]
        rounds = sum(1 for r in report["legit"]["rounds"] if r["phase"] == phase)
        if q.get("samples"):
            lines.append(
                f"{label:<26}{rounds:>7}{q['samples']:>10,}"
                f"{q['p50_us']:>10.0f}{q['p99_us']:>10.0f}{q['p999_us']:>10.0f}"
            )
    return lines


def _end_lines(report: dict[str, Any], failures: list[str]) -> list[str]:
    """The server's health, the host's load, the legitimate queues and the verdict."""
    v, srv = report["verification"], report["server"]
    rss = ", ".join(f"{k} {b / 2**20:.0f}" for k, b in srv["rss_bytes"].items())
    return [
        (
            f"server deaths: {0 if report['server_exit'] == 0 else 1} "
            f"(exit code {report['server_exit']}); server RSS MiB: {rss}"
        ),
        "host load average (1 min): "
        + ", ".join(f"{k} {v:.1f}" for k, v in report["loadavg_1min"].items()),
        (
            f"legit messages lost {v['lost']}, stored twice {v['duplicates_stored']}, "
            f"corrupt {v['corrupt']} (of {v['checked']:,} read back)"
        ),
        "checks: all passed" if not failures else "FAILED:\n  " + "\n  ".join(failures),
    ]


def format_report(report: dict[str, Any], failures: list[str]) -> str:
    """The table a person reads: counts by kind, legit RTT by phase, the verdicts."""
    parts = [
        _count_lines(report),
        _fuzzer_lines(report),
        _legit_lines(report),
        _end_lines(report, failures),
    ]
    return "\n\n".join("\n".join(lines) for lines in parts)
