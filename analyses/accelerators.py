"""Interventions against their controls, and how much of each one's effect on the delay runs through the
logit scale (study accelerators: Grokfast, ⊥Grad, StableMax from a shared trunk at two weight decays;
Omnigrok's init scale from initialisation).

Cells (by design_role): `lever_control` and `lever`. A lever cell's control is the control cell with the
same start (forked from the same fork step, or from init) and weight decay. What the lever changed is read
off the params that differ between the two (loss, optimizer, a lever's settings), never off names.
T = the delay from the fork for forked cells, t_grok from init.
- Change in T: median T (lever) - median T (control); 95% interval from a paired bootstrap over seeds
  (cells.bootstrap_medians: 4000 resamples, default_rng(0)).
- Mediation through L, seed-paired: over every member of the part (forked or from init) that grokked,
  OLS ln T = arm effects + seed effects + b ln L (L = its logit scale at grok; the product-of-coefficients
  model: the arm effects take up each lever's own route, so b is how ln T moves with ln L between seeds of
  one arm, beyond what the seed shares across arms). Per lever, over the seeds grokked in both arms:
  total = mean (ln T_lever - ln T_control), through L = b x mean (ln L_lever - ln L_control), proportion
  mediated = through L / total. Intervals: 2000
  resamples of whole seeds (default_rng(0)), b refitted in each. b is fitted over the cells that train with
  the controls' loss: a lever that changes the loss (StableMax) has its L on that loss's own scale, so it
  gets its total effect only.
- Route (`route`), from the intervals: total's contains 0: no effect this design can tell; through L's
  contains 0: no part through L it can tell; else by the proportion's interval: >= 0.5 mostly through L, < 0.5 mostly
  outside L, across 0.5 partly; above 1 through L more than its whole effect (another route opposes it).
  Where the lever's or the control's cell has no grokking majority, the grokked seeds of each are named.
Assumes what the paper's mediation does (ASSUMPTIONS in mediation.py), and that one ln L -> ln T slope holds
in every arm. L at grok is read at t_grok, so a seed that groks later has had longer to grow L: b carries
that too, and the part through L is an association, not an intervention on L (study mediator_clamp holds L).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analyses.cells import bootstrap_medians, left_out, num, percentile_ci, seed_matrix
from analyses.figures import save
from analyses.tables import est, fmt, table

NAME, TITLE = "accelerators", "Interventions against their controls, and their route through L"
N_BOOT, N_BOOT_MEDIATION = 4000, 2000
SEED = 0
SETTINGS = ("loss", "optimizer")   # besides every `<lever>.<setting>`, `loss.*` and `optimizer.*` param
INTERNAL = ("on", "target_source")  # params that record how a setting came about, not what it is
NOT_L = ("acts on the delay; no part through L", "acts mostly outside L")


def find(cells: pd.DataFrame) -> tuple[list[dict], list[str]]:
    specs, notes = [], []
    for (p, model, precision), g in cells.groupby(["p", "model", "precision"], sort=False):   # across losses
        label = f"p={p:g} {model} {precision}"
        controls, levers = g[g["role"] == "lever_control"], g[g["role"] == "lever"]
        if not len(levers):
            continue
        pairs = []
        for _, lv in levers.iterrows():
            same = controls[(controls["forked"] == lv["forked"]) & _same(controls["fork_step"], lv["fork_step"])
                            & _same(controls["weight_decay"], lv["weight_decay"])]
            if not len(same):
                notes.append(f"accelerators ({label}): lever arm {lv['arm']} has no control with the same start "
                             f"and weight decay {lv['weight_decay']:g}")
                continue
            pairs.append((same.iloc[0]["cell"], lv["cell"]))
        if pairs:
            specs.append({"group": label, "pairs": pairs})
    return specs, notes


def _same(col: pd.Series, v) -> pd.Series:
    return (col.isna() & pd.isna(v)) | np.isclose(col.astype(float), float(v) if pd.notna(v) else np.nan)


def changed(members: pd.DataFrame, control: str, lever: str) -> str:
    """What the lever arm sets differently from its control, from their params: `loss stablemax (bits 64)`,
    `grokfast_ema (alpha 0.98, lamb 2)`: each loss, optimizer or lever with a differing param, with the
    arm's settings of the lever, and of the loss or optimizer those that differ."""
    a, b = (members[members["cell"] == c].iloc[0] for c in (control, lever))
    keys = [k for k in members.columns if k in SETTINGS or ("." in k and not k.startswith("metric."))]
    differ = [k for k in keys if not (pd.isna(a[k]) and pd.isna(b[k])) and str(a[k]) != str(b[k])]
    out = []
    for head in dict.fromkeys(k.split(".")[0] for k in differ):
        own = [(k.split(".", 1)[1], b[k]) for k in keys if k.startswith(head + ".") and pd.notna(b[k])
               and k.split(".", 1)[1] not in INTERNAL and (head not in SETTINGS or k in differ)]
        words = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in own)
        name = f"{head} {b[head]}" if head in SETTINGS else head
        out.append(f"{name} ({words})" if words else name)
    return ", ".join(out) or "nothing in its params"


def _ln(members: pd.DataFrame, cells: list[str], column: str) -> np.ndarray:
    v, _ = seed_matrix(members, cells, column)
    with np.errstate(all="ignore"):
        return np.log(np.where(v > 0, v, np.nan))


def _fit_b(lnT: np.ndarray, lnL: np.ndarray) -> float:
    """Slope of ln T on ln L with arm and seed effects (cells x seeds arrays; NaN: not grokked): the
    product-of-coefficients mediation model, whose arm effects take up each lever's own route to T."""
    ok = np.isfinite(lnT) & np.isfinite(lnL)
    cell, seed = np.nonzero(ok)
    if len(cell) < 3:
        return np.nan
    D = np.concatenate([np.eye(lnT.shape[0])[cell], np.eye(lnT.shape[1])[seed][:, 1:]], axis=1)
    resid = lambda v: v - D @ np.linalg.lstsq(D, v, rcond=None)[0]
    rT, rL = resid(lnT[ok]), resid(lnL[ok])
    var = float(rL @ rL)
    return float(rL @ rT / var) if var > 1e-12 * len(rL) else np.nan


def _effects(lnT, lnL, pairs: list[tuple[int, int]], fit: list[int]) -> np.ndarray:
    """(levers, 3): total, through L, proportion mediated (index pairs into the cells axis; b fitted over the
    cells `fit`, a lever outside them gets its total only)."""
    b = _fit_b(lnT[fit], lnL[fit])
    out = np.full((len(pairs), 3), np.nan)
    with np.errstate(all="ignore"):
        for k, (c, lv) in enumerate(pairs):
            dT, dL = lnT[lv] - lnT[c], lnL[lv] - lnL[c]
            ok = np.isfinite(dT) & np.isfinite(dL)
            if ok.any():
                total, through = dT[ok].mean(), b * dL[ok].mean() if lv in fit else np.nan
                out[k] = total, through, through / total if total else np.nan
    return out


def compute(members: pd.DataFrame, cells: pd.DataFrame, spec: dict, n_boot: int = N_BOOT, seed: int = SEED,
            n_boot_mediation: int = N_BOOT_MEDIATION) -> dict:
    c = cells.set_index("cell", drop=False)
    parts = []
    for forked in (True, False):
        pairs = [p for p in spec["pairs"] if bool(c.at[p[1], "forked"]) == forked]
        if not pairs:
            continue
        ids = list(dict.fromkeys(x for p in pairs for x in p))
        time = "fork_delay" if forked else "t_grok"
        values, seeds = seed_matrix(members, ids, time)
        boot = bootstrap_medians(values, n_boot, seed)
        lnT, lnL = _ln(members, ids, time), _ln(members, ids, "logit_scale_at_grok")
        idx = [(ids.index(a), ids.index(b)) for a, b in pairs]
        losses = {c.at[a, "loss"] for a, _ in pairs}
        fit = [i for i, x in enumerate(ids) if c.at[x, "loss"] in losses]
        point = _effects(lnT, lnL, idx, fit)
        draws = np.random.default_rng(seed).integers(0, lnT.shape[1], (n_boot_mediation, lnT.shape[1]))
        boots = np.stack([_effects(lnT[:, d], lnL[:, d], idx, fit) for d in draws])
        rows = []
        for k, (ctrl, lv) in enumerate(pairs):
            i, j = idx[k]
            ci = [list(map(num, percentile_ci(boots[:, k, m]))) for m in range(3)]
            rows.append({"arm": c.at[lv, "arm"], "control": c.at[ctrl, "arm"], "changed": changed(members, ctrl, lv),
                         "weight_decay": num(c.at[lv, "weight_decay"]), "T_control": num(c.at[ctrl, time]),
                         "T": num(c.at[lv, time]), "change": num(c.at[lv, time] - c.at[ctrl, time]),
                         "change_ci": list(map(num, percentile_ci(boot[j] - boot[i]))),
                         "L_control": num(c.at[ctrl, "L"]), "L": num(c.at[lv, "L"]),
                         "total": num(point[k, 0]), "total_ci": ci[0], "through_L": num(point[k, 1]),
                         "through_L_ci": ci[1], "prop_mediated": num(point[k, 2]), "prop_ci": ci[2],
                         "same_loss": j in fit, "grokked": _grokked(c.loc[lv]), "grokked_control": _grokked(c.loc[ctrl]),
                         "majority": bool(c.at[lv, "majority"]), "majority_control": bool(c.at[ctrl, "majority"])})
            rows[-1]["route"] = route(rows[-1])
        parts.append({"start": "fork" if forked else "init", "time": time, "b": num(_fit_b(lnT[fit], lnL[fit])),
                      "n_seeds": int(len(seeds)), "levers": rows,
                      "left_out": left_out(c.loc[ids], c.loc[ids][c.loc[ids, "majority"]])})
    first = c.loc[spec["pairs"][0][1]]
    return {"p": num(first["p"]), "model": first["model"], "parts": parts,
            "left_out": [x for p in parts for x in p["left_out"]]}


def _grokked(cell: pd.Series) -> str:
    return f"{int(cell['n_grokked'])}/{int(cell['n_seeds'])}"


def route(r: dict) -> str:
    """The lever's route to the delay, in words, from its intervals (module docstring)."""
    (tlo, thi), (llo, lhi), (plo, phi) = r["total_ci"], r["through_L_ci"], r["prop_ci"]
    seeds = f"{r['grokked']} against {r['grokked_control']} seeds grokked"
    if r["majority"] and not r["majority_control"]:
        return f"groks where its control does not ({seeds})"
    if not r["majority"] and r["majority_control"]:
        return f"stops grokking where its control groks ({seeds})"
    if tlo is None:
        return f"not estimable ({seeds})"
    if tlo <= 0 <= thi:
        return "no effect on the delay that the interval can tell from none"
    if not r["same_loss"]:
        return "changes the loss, whose L is on its own scale: total effect only"
    if llo is None or llo <= 0 <= lhi:
        return "acts on the delay; no part through L that the interval can tell from none"
    share = f"proportion mediated {est(r['prop_mediated'], plo, phi, 2)}"
    if plo > 1:
        return f"through L more than its whole effect: another route opposes it ({share})"
    if plo >= 0.5:
        return f"acts mostly through L ({share})"
    if phi < 0.5:
        return f"acts mostly outside L ({share})"
    return f"acts partly through L ({share})"


def markdown(rows: list[dict]) -> list[str]:
    out = [f"## {TITLE}", ""]
    for r in rows:
        for part in r["parts"]:
            what = "median delay from the fork" if part["time"] == "fork_delay" else "median t_grok"
            out += [f"{r['group']}, from the {part['start']} (T = {what}; ln T on ln L with arm and seed "
                    f"effects: b = {fmt(part['b'])}; {part['n_seeds']} paired seeds):", "",
                    table(["arm", "what it changes", "wd", "T (control)", "change in T [95% CI]", "L at grok (control)",
                           "total on ln T [95% CI]", "through L [95% CI]", "route"],
                          [[x["arm"], x["changed"], fmt(x["weight_decay"], 1), f"{fmt(x['T'], 0)} ({fmt(x['T_control'], 0)})",
                            est(x["change"], *x["change_ci"], 0), f"{fmt(x['L'], 2)} ({fmt(x['L_control'], 2)})",
                            est(x["total"], *x["total_ci"], 2), est(x["through_L"], *x["through_L_ci"], 2), x["route"]]
                           for x in part["levers"]]), ""]
        not_L = [x["arm"] for p in r["parts"] for x in p["levers"] if x["route"].startswith(NOT_L)]
        if not_L:
            out += [f"Levers whose effect does not run through L: {', '.join(not_L)}.", ""]
    return out


def figure(r: dict, path) -> str | None:
    import matplotlib.pyplot as plt
    rows = [x for p in r["parts"] for x in p["levers"] if x["total"] is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(rows) + 1.5))
    y = np.arange(len(rows))
    ax.barh(y + 0.2, [x["total"] for x in rows], 0.38, label="total effect on ln T", color="tab:grey")
    ax.barh(y - 0.2, [np.nan if x["through_L"] is None else x["through_L"] for x in rows], 0.38, label="through L",
            color="tab:blue")   # none for a lever that changes the loss
    ax.set_yticks(y, [x["arm"] for x in rows], fontsize=7)
    ax.axvline(0, color="k", lw=0.6)
    ax.set(xlabel="effect on ln T (vs control)", title=f"levers and their route through L, {r['group']}")
    ax.legend(fontsize=7)
    return save(fig, path)
