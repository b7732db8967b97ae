"""Recovery fraction: how much of the norm's delay a matched logit scale takes back.

T0 = baseline (rho 1, tau 1), T1 = norm-up (rho_up, tau 1), T2 = the delay the norm-up arm would have at
the baseline's logit scale. Recovery = (T1 - T2) / (T1 - T0). Conventions (they reproduce the paper's
p = 59 figures 3675 / 12600 / 5166 / 0.833 [0.818, 0.852]):
- T are cell medians over grokked seeds of t_grok (or, in a fork design, of t_grok - fork_step; the
  fraction is the same either way since a common shift cancels).
- T2 interpolated: the sweep cells (norm-up arm at every tau) sorted by their L at grok; T2 is linear in
  L between the two sweep points that bracket the baseline's L at grok. No extrapolation: a baseline L
  outside the sweep's range leaves T2 undefined (said so in the report).
- T2 realized: the median of a `logit_matched` arm (norm-up with tau chosen to match the baseline's L).
- CI: paired bootstrap over seeds (cells.bootstrap_medians: 4000 resamples, default_rng(0)); each
  resample recomputes every cell median and T2 with the L values held fixed (so the bracket and its
  weight are fixed); 95% percentile interval.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analyses.cells import bootstrap_medians, num, percentile_ci, seed_matrix

N_BOOT = 4000
BOOTSTRAP_SEED = 0


def bracket(L_sweep: np.ndarray, L0: float) -> tuple[int, int, float] | None:
    """(lo, hi, w) with L0 = L[lo] + w * (L[hi] - L[lo]) for the sweep points bracketing L0, else None."""
    L_sweep = np.asarray(L_sweep, float)
    if not np.isfinite(L0) or not np.isfinite(L_sweep).all() or len(L_sweep) < 2:
        return None
    order = np.argsort(L_sweep, kind="stable")
    Ls = L_sweep[order]
    if L0 < Ls[0] or L0 > Ls[-1]:
        return None
    j = min(int(np.searchsorted(Ls, L0, side="left")), len(Ls) - 1)
    j = max(j, 1)
    lo, hi = order[j - 1], order[j]
    w = 0.0 if Ls[j] == Ls[j - 1] else (L0 - Ls[j - 1]) / (Ls[j] - Ls[j - 1])
    return int(lo), int(hi), float(w)


def interpolate_T2(L_sweep, T_sweep, L0: float) -> float:
    """T at L0, linear in L between the bracketing sweep points; NaN outside the sweep's L range."""
    b = bracket(L_sweep, L0)
    if b is None:
        return np.nan
    lo, hi, w = b
    T_sweep = np.asarray(T_sweep, float)
    return float(T_sweep[lo] + w * (T_sweep[hi] - T_sweep[lo]))


def fraction(T0, T1, T2):
    return (T1 - T2) / (T1 - T0)


def recovery(members: pd.DataFrame, cells: pd.DataFrame, base: str, up: str, sweep: list[str],
             matched: str | None = None, time: str = "t_grok", n_boot: int = N_BOOT,
             seed: int = BOOTSTRAP_SEED) -> dict:
    """Recovery fraction with its paired bootstrap CI; `sweep` lists the norm-up cells (tau 1 included).

    `time` is the cell column the T's are taken from ('t_grok', or 'fork_delay' in a fork design).
    Returns the fields docs/statistics.md lists plus the sweep, the bracket and the realized (logit-matched) recovery.
    """
    c = cells.set_index("cell")
    T = c[time]
    L0, L_sweep = c.at[base, "L"], c.loc[sweep, "L"].to_numpy(float)
    T0, T1, T_sweep = T[base], T[up], T.loc[sweep].to_numpy(float)
    b = bracket(L_sweep, L0)
    T2 = interpolate_T2(L_sweep, T_sweep, L0)
    T2r = float(T[matched]) if matched else np.nan
    rows = [base, *sweep] + ([matched] if matched else [])
    values, seeds = seed_matrix(members, rows, time)
    med = bootstrap_medians(values, n_boot, seed)
    boot_T0, boot_sweep = med[0], med[1:1 + len(sweep)]
    boot_T1 = boot_sweep[sweep.index(up)]
    ci = (np.nan, np.nan)
    if b is not None:
        lo, hi, w = b
        ci = percentile_ci(fraction(boot_T0, boot_T1, boot_sweep[lo] + w * (boot_sweep[hi] - boot_sweep[lo])))
    ci_r = percentile_ci(fraction(boot_T0, boot_T1, med[-1])) if matched else (np.nan, np.nan)
    first = c.loc[up]
    by_tau = c.loc[sweep].sort_values("tau")["L"].to_numpy(float)
    caveat = None if np.all(np.diff(by_tau) < 0) else (
        "L at grok does not fall monotonically with tau across the sweep, so L does not order the sweep "
        "cells as tau does; T2 is interpolated between the L-sorted cells")
    return {
        "p": num(first["p"]), "loss": first["loss"], "model": first["model"], "rho": num(first["rho"]),
        "time": time, "T0": num(T0), "T1": num(T1), "T2_interpolated": num(T2),
        "T2_realized": num(T2r) if matched else None,
        "estimate": num(fraction(T0, T1, T2)), "ci_low": num(ci[0]), "ci_high": num(ci[1]),
        "n_seeds": int(len(seeds)),
        "realized_estimate": num(fraction(T0, T1, T2r)) if matched else None,
        "realized_ci_low": num(ci_r[0]) if matched else None,
        "realized_ci_high": num(ci_r[1]) if matched else None,
        "L_baseline": num(L0),
        "sweep": [{"arm": c.at[s, "arm"], "tau": num(c.at[s, "tau"]), "L": num(c.at[s, "L"]),
                   "T": num(T[s])} for s in sweep],
        "bracket_tau": [num(c.at[sweep[b[0]], "tau"]), num(c.at[sweep[b[1]], "tau"])] if b else None,
        "matched": {"arm": c.at[matched, "arm"], "tau": num(c.at[matched, "tau"]),
                    "L": num(c.at[matched, "L"]), "T": num(T2r)} if matched else None,
        "baseline_arm": c.at[base, "arm"], "norm_up_arm": c.at[up, "arm"], "caveat": caveat,
    }
