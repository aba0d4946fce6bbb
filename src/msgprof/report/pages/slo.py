"""The page "Service-level gates": slo.csv (msgprof check, the config's `slo.gates`), a row per
point and a column per gate; no page without slo.csv."""

from __future__ import annotations

import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages

from msgprof.report.pages.base import Report, fmt
from msgprof.report.pages.tables import table_page

#: A row's colour: a gate failed at the point, or none did.
FAILED, PASSED = "#f9dcdc", "#e3f4e1"
MARK = {"pass": "✓", "fail": "✗ FAIL", "n/a": "n/a"}


def slo_page(report: Report, pdf: PdfPages) -> None:
    """Each point's value for each gate, marked pass or FAIL; red rows failed one."""
    path = report.run_dir / "slo.csv"
    if not path.is_file():
        return
    table = pd.read_csv(path, dtype={"point": str}, keep_default_na=False, na_values=[""])
    gates = list(dict.fromkeys(table["gate"]))
    rows, colours = [], []
    for point, checks in table.groupby("point", sort=False):
        first = checks.iloc[0]
        by_gate = checks.set_index("gate")
        cells = [str(point), fmt(first["clients"])]
        for gate in gates:
            if gate not in by_gate.index:
                cells.append("–")
                continue
            value = by_gate.loc[gate, "value"]
            number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
            shown = fmt(float(number), 1) if pd.notna(number) else fmt(value)
            cells.append(f"{shown} {MARK.get(by_gate.loc[gate, 'result'], '')}")
        rows.append(cells)
        colours.append(FAILED if (checks["result"] == "fail").any() else PASSED)
    failed = (table["result"] == "fail").sum()
    subtitle = (f"{len(gates)} gates at {len(rows)} points: {failed} failed (msgprof check, "
                "slo.csv; n/a: the point has no value for the column)")  # fmt: skip
    width = 0.72 / max(len(gates), 1)
    table_page(report, pdf, "Service-level gates", subtitle, ["point", "clients", *gates],
               rows, [0.16, 0.08, *[width] * len(gates)], colours)  # fmt: skip
