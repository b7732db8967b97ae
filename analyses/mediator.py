"""The mediator clamp, do(L) (study mediator_clamp): does the norm still delay grokking when the logit scale
is held?

Cells (by design_role): `free_L`, clamp cells at rho x w_c with L free; `held_L`, the same clamp cells with
L held at L* (levers/logit_norm.py); `dose_L`, held cells at one rho with L* varied. Per series, the dose
slope in the norm is the paper's dose law's: alpha = the OLS slope of ln(median T) on W (the cell's norm,
cells.py) across its cells; the dose response in L alone is the slope of ln(median T) on L* across the
held cells at the dose cells' rho. T = t_grok (delay from the fork in a forked design). Intervals: one paired
bootstrap over seeds for every cell of the design (cells.bootstrap_medians: 4000 resamples,
default_rng(0)), each slope refitted on the resampled medians with W and L* held fixed; 95% percentile.
The paper's reading predicts alpha held ~ 0 (the norm acts through L) and alpha free > 0.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analyses.cells import bootstrap_medians, left_out, num, percentile_ci, seed_matrix
from analyses.figures import save
from analyses.tables import fmt as _f
from analyses.tables import table as _table

NAME, TITLE = "mediator_clamp", "Mediator clamp: the norm's dose slope with L free and with L held"
N_BOOT = 4000
BOOTSTRAP_SEED = 0
L_STAR = "logit_norm.L_star"


def slope(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """OLS slope of each column of Y (n, k) on x (n,), with intercept: cov(x, y) / var(x); NaN where a
    column has a NaN or x does not vary."""
    x = np.asarray(x, float)
    xc = x - x.mean()
    var = float(xc @ xc)
    Y = np.asarray(Y, float).reshape(len(x), -1)
    return (xc @ (Y - Y.mean(0))) / var if var > 0 else np.full(Y.shape[1], np.nan)


def find(cells: pd.DataFrame) -> tuple[list[dict], list[str]]:
    specs, notes = [], []
    for label, g in cells.groupby("group", sort=False):
        free, held = g[g["role"] == "free_L"], g[g["role"] == "held_L"]
        if not len(held):
            continue
        if not len(free):
            notes.append(f"mediator clamp ({label}): held_L cells without free_L cells beside them")
            continue
        specs.append({"group": label, "free": list(free["cell"]), "held": list(held["cell"]),
                      "dose": list(g.loc[g["role"] == "dose_L", "cell"])})
    return specs, notes


def _series(c: pd.DataFrame, ids: list[str], x: str, boot: dict, name: str) -> dict:
    """Slope of ln median T on column x over the majority cells `ids`, with its bootstrap interval."""
    ok = [i for i in ids if c.at[i, "majority"] and np.isfinite(c.at[i, x]) and np.isfinite(c.at[i, "T"])]
    out = {"series": name, "x": x, "n_cells": len(ok), "slope": None, "ci": [None, None], "boot": None,
           "cells": [{"arm": c.at[i, "arm"], "rho": num(c.at[i, "rho"]), x: num(c.at[i, x]), "T": num(c.at[i, "T"]),
                      "L": num(c.at[i, "L"]), "grokked": f"{int(c.at[i, 'n_grokked'])}/{int(c.at[i, 'n_seeds'])}",
                      "counts": i in ok} for i in ids]}
    if len(ok) < 2 or c.loc[ok, x].nunique() < 2:
        return out
    xs = c.loc[ok, x].to_numpy(float)
    out["slope"] = num(slope(xs, np.log(c.loc[ok, "T"].to_numpy(float)))[0])
    out["boot"] = slope(xs, np.log(np.stack([boot[i] for i in ok])))
    out["ci"] = [num(v) for v in percentile_ci(out["boot"])]
    return out


def compute(members: pd.DataFrame, cells: pd.DataFrame, spec: dict, n_boot: int = N_BOOT,
            seed: int = BOOTSTRAP_SEED) -> dict:
    ids = spec["free"] + spec["held"] + spec["dose"]
    c = cells.set_index("cell", drop=False).loc[ids].copy()
    time = "fork_delay" if c["forked"].any() else "t_grok"
    c["T"] = c[time]
    star = members.groupby("cell")[L_STAR].first() if L_STAR in members else pd.Series(dtype=float)
    c["L_star"] = pd.to_numeric(c["cell"].map(star), errors="coerce")
    values, seeds = seed_matrix(members, ids, time)
    boot = dict(zip(ids, bootstrap_medians(values, n_boot, seed)))
    free = _series(c, spec["free"], "W", boot, "L free")
    held = _series(c, spec["held"], "W", boot, "L held")
    rho0 = c.loc[spec["dose"], "rho"].iloc[0] if spec["dose"] else None
    at_rho = [i for i in spec["held"] if rho0 is not None and np.isclose(c.at[i, "rho"], rho0)] + spec["dose"]
    dose = _series(c, at_rho, "L_star", boot, f"L* varied at rho {rho0:g}") if spec["dose"] else None
    diff = [None, None]
    if free["boot"] is not None and held["boot"] is not None:
        diff = [num(v) for v in percentile_ci(held["boot"] - free["boot"])]
    first = c.iloc[0]
    kept = c[c["majority"]]
    row = {"p": num(first["p"]), "loss": first["loss"], "model": first["model"], "time": time,
           "n_seeds": int(len(seeds)), "free": free, "held": held, "dose": dose, "held_minus_free_ci": diff,
           "left_out": left_out(c, kept)}
    for s in (free, held, dose):
        if s is not None:
            s.pop("boot")
    row["verdict"] = verdict(row)
    return row


def verdict(r: dict) -> str:
    f, h = r["free"], r["held"]
    if f["slope"] is None or h["slope"] is None:
        return "not enough cells with a grokking majority for both slopes"
    held_zero = h["ci"][0] is not None and h["ci"][0] <= 0 <= h["ci"][1]
    free_pos = f["ci"][0] is not None and f["ci"][0] > 0
    say = (f"with L free the norm's slope is {f['slope']:.3g} [{_g(f['ci'][0])}, {_g(f['ci'][1])}]; with L held "
           f"{h['slope']:.3g} [{_g(h['ci'][0])}, {_g(h['ci'][1])}]: ")
    if held_zero and free_pos:
        return say + "the norm's delay vanishes when L is held (the paper's reading: the norm acts through L)"
    if held_zero:
        return say + "the held slope's interval contains 0, but the free slope's does too: no contrast to read"
    share = f" ({h['slope'] / f['slope']:.0%} of the free slope)" if free_pos else ""
    return say + f"the norm still delays grokking with L held{share}: not all of its effect runs through L"


def _g(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def markdown(rows: list[dict]) -> list[str]:
    out = [f"## {TITLE}", ""]
    for r in rows:
        what = "median delay from the fork" if r["time"] == "fork_delay" else "median t_grok"
        series = [s for s in (r["free"], r["held"], r["dose"]) if s is not None]
        out += [_table(["group", "series", "slope of ln T on", "slope [95% CI]", "cells"],
                       [[r["group"], s["series"], "L*" if s["x"] == "L_star" else "W (the norm)",
                         f"{_g(s['slope'])} [{_g(s['ci'][0])}, {_g(s['ci'][1])}]", s["n_cells"]] for s in series]),
                "", f"Held minus free slope, 95% CI [{_g(r['held_minus_free_ci'][0])}, "
                f"{_g(r['held_minus_free_ci'][1])}] ({r['n_seeds']} paired seeds). {r['verdict'][0].upper()}"
                f"{r['verdict'][1:]}.", "",
                _table(["arm", "series", "rho", "W or L*", f"T ({what})", "L at grok", "grokked"],
                       [[x["arm"], s["series"], _f(x["rho"], 2), _f(x.get("W", x.get("L_star")), 2), _f(x["T"], 0),
                         _f(x["L"], 2), x["grokked"]] for s in series for x in s["cells"]]), ""]
    return out


def figure(r: dict, path) -> str | None:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2 if r["dose"] else 1, figsize=(10 if r["dose"] else 5.5, 4), squeeze=False)
    ax = axes[0][0]
    for s, color in ((r["free"], "tab:red"), (r["held"], "tab:blue")):
        pts = [(x["W"], x["T"]) for x in s["cells"] if x["counts"]]
        if pts:
            ax.plot(*zip(*sorted(pts)), "o-", color=color, label=f"{s['series']}: slope {_g(s['slope'])}")
        weak = [(x["W"], x["T"]) for x in s["cells"] if not x["counts"] and x["T"] is not None]
        if weak:   # no grokking majority: the median of the seeds that grokked, outside the fit
            ax.plot(*zip(*weak), "o", mfc="none", color=color, label=f"{s['series']}: no majority (not fitted)")
    ax.set_yscale("log")
    ax.set(xlabel="weight norm W", ylabel="median T (log scale)", title=f"do(L), {r['group']}")
    ax.legend(fontsize=7)
    if r["dose"]:
        ax = axes[0][1]
        pts = [(x["L_star"], x["T"]) for x in r["dose"]["cells"] if x["counts"]]
        if pts:
            ax.plot(*zip(*sorted(pts)), "s-", color="tab:purple")
        ax.set_yscale("log")
        ax.set(xlabel="held logit scale L*", ylabel="median T (log scale)",
               title=f"{r['dose']['series']}: slope {_g(r['dose']['slope'])}")
    return save(fig, path)
