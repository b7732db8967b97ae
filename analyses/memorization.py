"""Memorization control: is the tau effect on t_grok carried by the delay, or by earlier memorization?

delay share = (delay(tau_min) - delay(tau_max)) / (t_grok(tau_min) - t_grok(tau_max)) across one tau sweep
(tau 1 and 1.7 in the paper), with cell medians over grokked seeds of delay = t_grok - t_mem and of t_grok.
A share near 1 means memorization time did not move. The paper's p = 59 CE sweep gives 1.003.
"""
from __future__ import annotations

import pandas as pd

from analyses.cells import num


def delay_share(cells: pd.DataFrame) -> dict:
    """`cells`: the sweep's cells (one rho, several tau)."""
    c = cells.sort_values("tau")
    lo, hi = c.iloc[0], c.iloc[-1]
    return {"p": num(lo["p"]), "loss": lo["loss"], "model": lo["model"], "rho": num(lo["rho"]),
            "tau_low": num(lo["tau"]), "tau_high": num(hi["tau"]),
            "delay_share": num((lo["delay"] - hi["delay"]) / (lo["t_grok"] - hi["t_grok"])),
            "delays": [num(x) for x in c["delay"]], "t_grok": [num(x) for x in c["t_grok"]],
            "tau": [num(x) for x in c["tau"]]}
