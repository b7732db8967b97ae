"""Layer allocation swing: moving norm between E and W2 at a fixed total norm (gamma arms).

swing = max / min of the cells' median t_grok over gamma (majority-grok cells only). The paper's p = 59
gamma in {-0.6 .. 0.6} gives 2.2.
"""
from __future__ import annotations

import pandas as pd

from analyses.cells import left_out, num


def allocation_swing(cells: pd.DataFrame) -> dict:
    c = cells[cells["majority"]].sort_values("gamma")
    first = cells.iloc[0]
    return {"p": num(first["p"]), "loss": first["loss"], "model": first["model"],
            "swing": num(c["t_grok"].max() / c["t_grok"].min()),
            "gamma": [num(x) for x in c["gamma"]], "t_grok": [num(x) for x in c["t_grok"]],
            "L": [num(x) for x in c["L"]],
            "excluded": [a for a in cells["arm"] if a not in set(c["arm"])], "left_out": left_out(cells, c)}
