"""Numbers and tables as report.md prints them (every section's, so that they print alike)."""
from __future__ import annotations

import numpy as np


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def est(x, lo, hi, digits: int = 3) -> str:
    """'0.833 [0.818, 0.852]', or 'n/a' when there is no estimate."""
    return "n/a" if x is None else f"{fmt(x, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
