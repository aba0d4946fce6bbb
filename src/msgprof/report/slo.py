"""Service-level gates: `msgprof check RUN --slo 'rtt_p99_us<=5000' --slo 'lost==0'`.

A gate is `COLUMN OP VALUE` over points.csv (plus `server_cpu_us_per_msg`), OP one of
<= < >= > == !=; VALUE a number, or a word for a text column (`verdict==ok`). Every gate is
evaluated at every point the `--where` filters (same syntax, all must hold) keep: `pass`,
`fail`, or `n/a` where the point has no value for the column (a closed-loop point has no paced
latency): n/a is shown, never a failure, so a gate on a column a point cannot have does not
fail the run. slo.csv keeps every evaluation; the command exits 1 when any gate failed.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

#: The operators a gate may use, longest first (so <= is not read as <).
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
    "<": operator.lt, ">": operator.gt,
}  # fmt: skip
_GATE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*([^\s<>=!]+)\s*$")
#: slo.csv's columns: the point, then the gate and what it found.
COLUMNS = ["run", "point", "phase", "step", "clients", "messages", "rep", "gate", "value",
           "result"]  # fmt: skip


@dataclass(frozen=True)
class Gate:
    """One gate: its text as given, the column, the operator and the bound."""

    text: str
    column: str
    op: str
    bound: float | str

    def holds(self, value: Any) -> bool | None:
        """Whether `value` meets the gate; None when there is no value to judge."""
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            return None
        if isinstance(self.bound, float):
            try:
                value = float(value)
            except (TypeError, ValueError):
                return None
        else:
            value = str(value)
        return bool(OPERATORS[self.op](value, self.bound))


def parse_gate(text: str) -> Gate:
    """A gate from its text; a ValueError that names it when it cannot be read."""
    match = _GATE.match(text)
    if match is None:
        raise ValueError(
            f"gate {text!r}: expected COLUMN OP VALUE with OP one of {' '.join(OPERATORS)}, "
            "e.g. 'rtt_p99_us<=5000' or 'verdict==ok'"
        )
    column, op, raw = match.groups()
    try:
        bound: float | str = float(raw)
    except ValueError:
        if op not in ("==", "!="):
            raise ValueError(f"gate {text!r}: {op} needs a number, got {raw!r}") from None
        bound = raw
    return Gate(text.strip(), column, op, bound)


def _check_columns(gates: list[Gate], points: pd.DataFrame, what: str) -> None:
    for gate in gates:
        if gate.column not in points.columns:
            known = ", ".join(c for c in points.columns if c not in ("run", "point"))
            raise ValueError(f"{what} {gate.text!r}: points.csv has no column "
                             f"{gate.column!r}; it has: {known}")  # fmt: skip


def evaluate(points: pd.DataFrame, gates: list[Gate], where: list[Gate]) -> pd.DataFrame:
    """slo.csv: every gate at every point that all of `where` keep."""
    _check_columns(gates, points, "gate")
    _check_columns(where, points, "--where")
    rows = []
    for _, point in points.iterrows():
        if not all(w.holds(point[w.column]) for w in where):
            continue
        for gate in gates:
            value = point[gate.column]
            held = gate.holds(value)
            result = "n/a" if held is None else "pass" if held else "fail"
            rows.append({name: point.get(name) for name in COLUMNS[:7]}
                        | {"gate": gate.text, "value": value, "result": result})  # fmt: skip
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def summary_lines(table: pd.DataFrame) -> list[str]:
    """What `msgprof check` prints: each gate's counts, then every failing point."""
    if table.empty:
        return ["no point to check (the --where filters kept none)"]
    lines = []
    for gate, rows in table.groupby("gate", sort=False):
        n = rows["result"].value_counts()
        state = "FAIL" if n.get("fail", 0) else "ok"
        lines.append(f"{state:4} {gate}: {n.get('pass', 0)} pass, {n.get('fail', 0)} fail, "
                     f"{n.get('n/a', 0)} n/a")  # fmt: skip
        for _, row in rows[rows["result"] == "fail"].iterrows():
            lines.append(f"       {row['point']}: {row['value']}")
    return lines


def failed(table: pd.DataFrame) -> bool:
    """Whether any gate failed at any point."""
    return bool((table["result"] == "fail").any())
