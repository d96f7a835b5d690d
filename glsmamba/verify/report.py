"""The rows of ``glsmamba verify``: one per check (forward, backward), the printed table and the JSON form.

A row is a dict with ``op, backend, check, shape, dtype, max_abs, rel_err, passed`` and, where there is one,
``note``; backward rows of the op checks add ``grads`` (every gradient's statistics).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from glsmamba.verify.tolerances import Comparison

Row = dict[str, Any]


def failure_rows(common: Row, note: str, checks: tuple[str, ...] = ("fwd", "bwd")) -> list[Row]:
    """One failing row per check, with ``note`` saying why (a backend raised, outputs do not line up, ...)."""
    return [{**common, "check": c, "max_abs": math.inf, "rel_err": math.inf, "passed": False, "note": note[:300]}
            for c in checks]


def worst(comparisons: Mapping[str, Comparison]) -> tuple[str, Comparison]:
    """The name and comparison that decides: the first failure, else the largest relative error."""
    return max(comparisons.items(), key=lambda kv: (not kv[1].passed, kv[1].rel_rms))


def summary_row(common: Row, check: str, comparisons: Mapping[str, Comparison]) -> Row:
    """One row for several compared tensors: the worst one's statistics, passed only if all passed."""
    _, w = worst(comparisons)
    return {**common, "check": check, **w.row(), "passed": all(c.passed for c in comparisons.values())}


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.2e}"


COLUMNS = (("op", "op"), ("backend", "backend"), ("check", "check"), ("shape", "shape"), ("dtype", "dtype"),
           ("max_abs", "max abs err"), ("rel_err", "rel err"), ("passed", "result"))


def _cell(row: Row, key: str) -> str:
    if key == "passed":
        return "PASS" if row[key] else "FAIL"
    return _fmt(row[key]) if key in ("max_abs", "rel_err") else str(row[key])


def print_table(header: Mapping[str, Any], rows: list[Row]) -> None:
    """The header lines, one table line per row (and its note), then the count of passed checks."""
    for k, v in header.items():
        print(f"{k}: {v}")
    cells = [[_cell(r, k) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (_, title) in enumerate(COLUMNS)]
    line = "  ".join(title.ljust(widths[i]) for i, (_, title) in enumerate(COLUMNS))
    print()
    print(line)
    print("-" * len(line))
    for r, c in zip(rows, cells, strict=True):
        print("  ".join(c[i].ljust(widths[i]) for i in range(len(COLUMNS))))
        if r.get("note"):
            print(f"    note: {r['note']}")
    failed = sum(not r["passed"] for r in rows)
    print()
    print(f"{len(rows) - failed}/{len(rows)} checks passed" + (f", {failed} FAILED" if failed else ""))


def jsonable(o: Any) -> Any:
    """Strict JSON: non-finite floats become the strings "inf" / "nan"."""
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {k: jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    return o
