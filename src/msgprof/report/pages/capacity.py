"""The capacity page: what each probe of `msgprof capacity` met, against its client count
(results/<run>/capacity/capacity.json, written by `snakemake capacity`; no page without it)."""

from __future__ import annotations

import json
from typing import Any

from matplotlib.backends.backend_pdf import PdfPages

from msgprof.report.pages.base import Report, note

CAPACITY_JSON = "capacity/capacity.json"
#: (probe field, scale, axis label) of each panel.
PANELS = [
    ("connect_p99_ms", 1.0, "connect p99 (ms)"),
    ("rtt_p99_us", 1e3, "RTT p99 (ms)"),
    ("server_peak_rss_bytes", 1e6, "server peak RSS (MB)"),
    ("server_peak_fds", 1.0, "server peak descriptors"),
    ("throughput_msgs_per_s", 1.0, "throughput (msg/s)"),
]


def read_capacity(report: Report) -> dict[str, Any] | None:
    path = report.run_dir / CAPACITY_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _panel(ax: Any, probes: list[dict[str, Any]], field: str, scale: float, label: str) -> None:
    ran = [p for p in probes if p.get(field) is not None]
    for passed, marker, colour in ((True, "o", "tab:green"), (False, "x", "tab:red")):
        these = [p for p in ran if p["passed"] == passed]
        ax.plot([p["clients"] for p in these], [p[field] / scale for p in these], marker,
                color=colour, label="ok" if passed else "not ok")  # fmt: skip
    for p in probes:
        if p.get("dir") is None:  # past the host's limits: never ran
            ax.axvline(p["clients"], color="grey", linestyle=":", linewidth=0.8)
    if not ran:
        note(ax, f"no probe recorded {field}")
        return
    ax.set_xscale("log")
    ax.set_xlabel("clients")
    ax.set_ylabel(label)


def capacity_page(report: Report, pdf: PdfPages) -> None:
    """Clients against connect p99, RTT p99, server RSS, descriptors and throughput, one point
    per probe (green ok, red not), and each probe's verdict."""
    doc = read_capacity(report)
    if doc is None:
        return
    result = doc.get("result") or {}
    fig = report.new_page(
        "Capacity: how many concurrent clients the server holds",
        f"msgprof capacity, {len(doc['probes'])} probes: {result.get('reason', '')}",
    )
    axes = fig.subplots(2, 3).ravel()
    fig.subplots_adjust(left=0.06, right=0.98, top=0.86, bottom=0.08, hspace=0.35, wspace=0.3)
    for ax, (field, scale, label) in zip(axes, PANELS):
        _panel(ax, doc["probes"], field, scale, label)
    axes[0].legend(loc="upper left", fontsize=7)
    table = axes[-1]
    table.set_axis_off()
    lines = [f"{'probe':>5} {'clients':>8}  verdict", *(
        f"{p['probe']:>5} {p['clients']:>8,}  {p['verdict']}"
        + (f" ({p['limit']})" if p.get("limit") else "")
        for p in doc["probes"])]  # fmt: skip
    lines += ["", f"largest ok: {result.get('largest_ok_clients')}",
              f"first failing: {result.get('first_failing_clients')}",
              f"limit: {result.get('limit')}"]  # fmt: skip
    table.text(0, 1, "\n".join(lines[:30]), va="top", family="monospace", fontsize=7,
               transform=table.transAxes)  # fmt: skip
    pdf.savefig(fig)
