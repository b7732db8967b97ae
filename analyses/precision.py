"""Float64 audit: the same cell run in float32 and in float64 (identical absolute norms).

Per pair: median t_grok over grokked seeds (None when the cell has no grokking majority) and the
softmax-collapse rate, taken as the peak over logged steps of the seed-mean `softmax/collapse` curve (the
share of training points whose correct-class probability is exactly 1): collapse in float32 that
vanishes in float64 is a precision artefact. The paper's data holds no such pairs; our runs do.
"""
from __future__ import annotations

import pandas as pd

from analyses.cells import num


def precision_pair(c32: pd.Series, c64: pd.Series) -> dict:
    t = lambda c: num(c["t_grok"]) if c["majority"] else None  # noqa: E731
    return {"p": num(c32["p"]), "loss": c32["loss"], "model": c32["model"], "rho": num(c32["rho"]),
            "tau": num(c32["tau"]), "arm_float32": c32["arm"], "arm_float64": c64["arm"],
            "t_grok_float32": t(c32), "t_grok_float64": t(c64),
            "n_grokked_float32": int(c32["n_grokked"]), "n_grokked_float64": int(c64["n_grokked"]),
            "n_seeds": int(min(c32["n_seeds"], c64["n_seeds"])),
            "sc_float32": num(c32["sc_peak"]), "sc_float64": num(c64["sc_peak"])}
