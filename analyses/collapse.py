"""Collapse regression: does the logit scale alone carry the delay across a rho x tau grid?

OLS (statsmodels, with intercept) of ln(median t_grok) over the grid's cells on L at grok, on rho, and on
both; R^2 of each and the increment of rho beyond L (R^2 both - R^2 L). Majority-grok cells only; the
others are listed with the reason (`left_out`). The
paper's p = 59 grid gives 0.968 / 0.407 / 0.988 / 0.020.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.api as sm

from analyses.cells import left_out, num, why_left_out


def ols(y: np.ndarray, X: np.ndarray):
    return sm.OLS(y, sm.add_constant(X, has_constant="add")).fit()


def collapse_fit(cells: pd.DataFrame) -> dict:
    """Fit the three regressions on `cells` (columns t_grok, L, rho); returns the collapse fields (docs/statistics.md)."""
    c = cells[cells["majority"] & np.isfinite(cells["L"]) & np.isfinite(cells["t_grok"])]
    y = np.log(c["t_grok"].to_numpy(float))
    L, rho = c["L"].to_numpy(float), c["rho"].to_numpy(float)
    fit_L, fit_rho, fit_both = ols(y, L), ols(y, rho), ols(y, np.column_stack([L, rho]))
    first = c.iloc[0]
    return {"p": num(first["p"]), "loss": first["loss"], "model": first["model"], "n_cells": int(len(c)),
            "r2_logit": float(fit_L.rsquared), "r2_rho": float(fit_rho.rsquared),
            "r2_both": float(fit_both.rsquared), "delta_r2_rho": float(fit_both.rsquared - fit_L.rsquared),
            "slope_logit": float(fit_L.params[1]), "intercept_logit": float(fit_L.params[0]),
            "cells": [{"arm": r.arm, "rho": num(r.rho), "tau": num(r.tau), "L": num(r.L), "t_grok": num(r.t_grok)}
                      for r in c.itertuples()],
            "left_out": left_out(cells, c, lambda r: why_left_out(r) if not r["majority"] else "no L at grok")}
