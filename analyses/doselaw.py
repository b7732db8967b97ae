"""Dose law: ln(median t_grok) = c + alpha * W over the collapse-free clamp cells, against two alternatives.

Cells (clamp at rho * w_c, tau 1), ordered by rho, kept while rho <= 1.15; the walk stops at the first
cell whose L at grok jumps > 2.5x over the previous cell's (softmax collapse sets in); cells without a
grokking majority are left out (their L still counts as "previous"). W = the cell's norm (cells.py).
Fits, each compared by AIC = n ln(RSS / n) + 2k:
- exponential: ln T = c + alpha W (OLS, k = 2);
- power law with offset: ln T = c + beta ln(W - w0), 0 <= w0 < min W (k = 3; w0 by bounded search);
- saddle-node: ln T = c - 0.5 ln(w0 - W), w0 > max W (k = 2; c in closed form, w0 by bounded search).
delta AIC = the better alternative's AIC minus the exponential's (positive favours the exponential).
The paper's p = 59 cells give alpha 0.140, R^2 0.991, n 7, delta AIC 6.40.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import optimize

from analyses.cells import num, why_left_out
from analyses.collapse import ols

RHO_MAX = 1.15
L_JUMP = 2.5


def dose_cells(cells: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """(the collapse-free, majority-grok cells of one dose series, [{arm, reason}] of the others): rho <= 1.15,
    stop at the first L jump."""
    keep, out, prev_L, stop = [], [], None, None
    for _, row in cells.sort_values("rho").iterrows():
        if stop is None and row["rho"] > RHO_MAX + 1e-9:
            stop = f"beyond rho {RHO_MAX}"
        if stop is None and prev_L is not None and np.isfinite(row["L"]) and row["L"] > L_JUMP * prev_L:
            stop = f"at or past the softmax-collapse jump (L {row['L']:.3g} > {L_JUMP} x {prev_L:.3g} at rho {row['rho']:g})"
        if stop is not None:
            out.append({"arm": row["arm"], "reason": stop})
            continue
        if np.isfinite(row["L"]):
            prev_L = row["L"]
        if row["majority"] and np.isfinite(row["W"]) and np.isfinite(row["t_grok"]):
            keep.append(row)
        else:
            out.append({"arm": row["arm"], "reason": why_left_out(row) if not row["majority"] else "no norm or t_grok"})
    return pd.DataFrame(keep), out


def aic(rss: float, n: int, k: int) -> float:
    return float(n * np.log(rss / n) + 2 * k)


def _bounded_min(f, lo: float, hi: float, n_grid: int = 200) -> tuple[float, float]:
    """Global-ish minimum of a 1-d function on [lo, hi]: a grid, then a bounded Brent refine around its best."""
    grid = np.linspace(lo, hi, n_grid)
    vals = np.array([f(x) for x in grid])
    i = int(np.nanargmin(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, n_grid - 1)]
    res = optimize.minimize_scalar(f, bounds=(a, b), method="bounded", options={"xatol": 1e-10})
    return (float(res.x), float(res.fun)) if res.fun <= vals[i] else (float(grid[i]), float(vals[i]))


def fit_dose(W: np.ndarray, T: np.ndarray) -> dict:
    """The exponential law and both alternatives on (W, median t_grok) pairs."""
    W, y = np.asarray(W, float), np.log(np.asarray(T, float))
    n = len(y)
    exp_fit = ols(y, W)
    aic_exp = aic(exp_fit.ssr, n, 2)

    def rss_power(w0):
        return ols(y, np.log(W - w0)).ssr

    def rss_saddle(w0):
        x = -0.5 * np.log(w0 - W)
        return float(np.sum((y - x - np.mean(y - x)) ** 2))  # c = mean(y - x) is the least-squares c

    eps = 1e-9 * max(1.0, W.max())
    w0_pow, rss_pow = _bounded_min(rss_power, 0.0, W.min() - eps)
    # the saddle's w0 ranges over (max W, max W + 100 x the span): past that the form is a straight line
    span = max(W.max() - W.min(), 1e-6)
    w0_sn, rss_sn = _bounded_min(rss_saddle, W.max() + eps, W.max() + 100 * span, n_grid=2000)
    aic_pow, aic_sn = aic(rss_pow, n, 3), aic(rss_sn, n, 2)
    return {"n": n, "alpha": float(exp_fit.params[1]), "c": float(exp_fit.params[0]), "r2": float(exp_fit.rsquared),
            "aic_exponential": aic_exp, "aic_power": aic_pow, "w0_power": w0_pow, "aic_saddle": aic_sn,
            "w0_saddle": w0_sn, "delta_aic": float(min(aic_pow, aic_sn) - aic_exp)}


def dose_law(cells: pd.DataFrame) -> dict:
    """Dose law on one dose series (clamp cells of one p, tau 1); the dose law's fields (docs/statistics.md) and more."""
    kept, out_cells = dose_cells(cells)
    first = cells.iloc[0]
    out = {"p": num(first["p"]), "loss": first["loss"], "model": first["model"]}
    if len(kept) < 4:
        raise ValueError(f"only {len(kept)} collapse-free majority-grok cells (the power law needs >= 4); left out: "
                         + "; ".join(f"{r['arm']}: {r['reason']}" for r in out_cells))
    out.update(fit_dose(kept["W"].to_numpy(float), kept["t_grok"].to_numpy(float)))
    out["cells"] = [{"arm": r.arm, "rho": num(r.rho), "W": num(r.W), "L": num(r.L), "t_grok": num(r.t_grok)}
                    for r in kept.itertuples()]
    out["excluded"] = [r["arm"] for r in out_cells]
    out["left_out"] = out_cells
    return out
