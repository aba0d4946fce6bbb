"""Pages 6 and 7: the verdicts per point (points.csv) and the limits of each host (limits.csv)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages

from msgprof.report.pages.base import Report, fmt, note

#: Rows of the verdict table per page.
TABLE_ROWS = 28
#: Host columns of the limits table per page.
HOSTS_PER_PAGE = 4


def table_page(
    report: Report,
    pdf: PdfPages,
    title: str,
    subtitle: str,
    header: list[str],
    rows: list[list[str]],
    widths: list[float],
    colours: list[str] | None = None,
    font: float = 7.5,
    per_page: int | None = None,
) -> None:
    """A page holding a table (continued on further pages past `per_page` rows)."""
    per_page = per_page or TABLE_ROWS
    chunks = [rows[i : i + per_page] for i in range(0, len(rows), per_page)] or [[]]
    for k, chunk in enumerate(chunks):
        fig = report.new_page(
            title + (f" (continued, {k + 1}/{len(chunks)})" if k else ""), subtitle
        )
        ax = fig.add_axes((0.03, 0.05, 0.94, 0.85))
        ax.set_axis_off()
        if not chunk:
            note(ax, "nothing to show: no points in this run")
            pdf.savefig(fig)
            continue
        lines = [max(cell.count("\n") + 1 for cell in r) for r in chunk]
        table = ax.table(
            cellText=chunk, colLabels=header, colWidths=widths, loc="upper center", cellLoc="left"
        )
        table.auto_set_font_size(False)
        table.set_fontsize(font)
        height = min(0.033, 0.95 / (sum(lines) + 1.5))
        for (r, _c), cell in table.get_celld().items():
            cell.set_height(height * (1.3 if r == 0 else lines[r - 1]))
            cell.set_edgecolor("0.75")
            if r == 0:
                cell.set_facecolor("0.88")
                cell.set_text_props(fontweight="bold")
            elif colours:
                cell.set_facecolor(colours[k * per_page + r - 1])
        pdf.savefig(fig)


VERDICT_HEADER = [
    "point",
    "phase",
    "clients×msgs",
    "verdict",
    "all verdicts",
    "connected",
    "acked / planned",
    "lost",
    "refused",
    "errors (kind=count)",
]


def verdict_page(report: Report, pdf: PdfPages) -> None:
    rows, colours = [], []
    for _i, p in report.points.iterrows():
        errors = "\n".join(textwrap.wrap(p["errors"].replace(";", "; "), 36)) or "none"
        rows.append(
            [
                p["point"],
                p["phase"],
                f"{p['clients']}×{p['messages']}",
                p["verdict"],
                "\n".join(textwrap.wrap(p["verdicts"].replace(";", ", "), 20)) or "–",
                f"{fmt(p['connected'])} / {fmt(p['clients'])}",
                f"{fmt(p['acked'])} / {fmt(p['planned'])}",
                fmt(p["lost"]) if p.get("verified", True) is not False else "not verified",
                fmt(p["refused"]),
                errors,
            ]
        )
        colours.append("#e3f4e1" if p["verdict"] == "ok" else "#f9dcdc")
    table_page(
        report,
        pdf,
        "Verdicts and errors per point",
        "verdict: ok, or the first limit a point hit (descriptor_limit, storage_full, ...); "
        "errors: client-side outcomes other than OK, summed over the point's clients; "
        "refused: connections the server shed past its descriptor budget",
        VERDICT_HEADER,
        rows,
        [0.145, 0.065, 0.075, 0.1, 0.11, 0.08, 0.12, 0.04, 0.05, 0.195],
        colours,
    )


def _gib(key: str) -> Callable[[dict[str, Any]], str]:
    return lambda d: fmt(d[key] / (1 << 30), 1) if isinstance(d.get(key), (int, float)) else "–"


def _pair(first: str, second: str) -> Callable[[dict[str, Any]], str]:
    return lambda d: f"{fmt(d.get(first))} / {fmt(d.get(second))}"


#: Rows of the limits table: (label, function of one host's limits).
LIMIT_ROWS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    (
        "RLIMIT_NOFILE soft / hard (point process)",
        _pair("rlimit_nofile_soft", "rlimit_nofile_hard"),
    ),
    ("net.core.somaxconn (listen backlog cap)", lambda d: d.get("somaxconn")),
    ("net.ipv4.tcp_max_syn_backlog", lambda d: d.get("tcp_max_syn_backlog")),
    ("net.ipv4.ip_local_port_range", lambda d: d.get("ip_local_port_range")),
    ("net.ipv4.tcp_fin_timeout (s)", lambda d: d.get("tcp_fin_timeout")),
    ("fs.file-max (descriptors, system)", lambda d: d.get("file_max")),
    ("fs.nr_open (descriptors, per process)", lambda d: d.get("nr_open")),
    ("cores / usable by affinity", _pair("cores", "cpu_affinity")),
    ("memory total (GiB)", _gib("memory_total_bytes")),
    ("memory available at start (GiB)", _gib("memory_available_bytes")),
    (
        "disk free / total under the queues (GiB)",
        lambda d: f"{_gib('disk_free_bytes')(d)} / {_gib('disk_total_bytes')(d)}",
    ),
    ("queue filesystem (type, mount point)", _pair("data_fstype", "data_mountpoint")),
    ("kernel", lambda d: d.get("kernel")),
    ("OS", lambda d: d.get("os")),
    ("Python", lambda d: d.get("python")),
    ("pyzmq / libzmq", _pair("pyzmq", "libzmq")),
]


def _limits_by_host(report: Report) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """One point's limits per host (the first captured) and the points that ran there."""
    hosts: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for row in report.limits.to_dict("records"):
        # an empty cell was not recorded: leave it out, as limits.json would have
        doc = {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}
        doc = {k: v for k, v in doc.items() if not pd.isna(v)}
        host = str(doc.get("host", "unknown host"))
        first, names = hosts.setdefault(host, (doc, []))
        if doc.get("captured_unix_s", math.inf) < first.get("captured_unix_s", math.inf):
            hosts[host] = (doc, names)
        names.append(doc["point"])
    return dict(sorted(hosts.items()))


def _limit_rows(report: Report, group: list[tuple[str, Any]]) -> list[list[str]]:
    """The limits table of a few hosts: one row per limit, one column per host."""
    rlimits = report.points.set_index("point")["rlimit_nofile"]
    rows = [
        [label] + [fmt(fn(doc)) if fn(doc) is not None else "–" for _h, (doc, _n) in group]
        for label, fn in LIMIT_ROWS
    ]
    used = []
    for _host, (_doc, names) in group:
        counts = rlimits.reindex(names).value_counts().sort_index()
        used.append(
            "\n".join(f"{fmt(v)} ({n} point{'s' if n > 1 else ''})" for v, n in counts.items())
            or "–"
        )
    rows.append(["server soft RLIMIT_NOFILE used (points.csv)"] + used)
    rows.append(["points and steps measured on this host"] + [str(len(n)) for _h, (_d, n) in group])
    return rows


def limits_page(report: Report, pdf: PdfPages) -> None:
    """The limits table, HOSTS_PER_PAGE hosts a page (a cluster run may use many nodes)."""
    hosts = list(_limits_by_host(report).items())
    groups = [hosts[i : i + HOSTS_PER_PAGE] for i in range(0, len(hosts), HOSTS_PER_PAGE)] or [[]]
    for k, group in enumerate(groups):
        rows = _limit_rows(report, group)
        columns = len(group) or 1
        table_page(
            report,
            pdf,
            "System limits" + (f" (hosts {k + 1}/{len(groups)})" if len(groups) > 1 else ""),
            "captured on each host when its points ran (limits.json); the limits that decide "
            "how many clients and connections a host holds",
            ["limit"] + ([host for host, _v in group] or ["(no limits.json found)"]),
            rows if group else [],
            [0.3] + [0.64 / columns] * columns,
            font=8.5,
            per_page=len(rows),
        )
