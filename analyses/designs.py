"""Which designs an experiment holds, found from the cells' params, above all their `design_role`
(tracking.conventions.DESIGN_ROLES), never from file or arm names.

Each finder returns (specs, notes): a spec is what one analysis needs (cell ids); a note says plainly
why a design that is partly there cannot be computed. Cells are grouped by p, loss, model and precision.
- recovery / memorization_control / mediation: the `baseline` cell, the `norm_up` cell and the
  `tau_sweep` cells at its rho (the sweep is norm_up plus those; >= 2 tau values); a `logit_matched`
  cell at that rho is the realized T2. In a fork design: baseline = `fork_same`, norm-up = `fork_raised`,
  sweep = fork_raised plus the forked tau_sweep cells, delays from the fork.
- collapse: clamped cells spanning >= 2 rho and >= 2 tau values, >= 4 cells (a grid over params).
- dose_law: `dose_cell` cells (clamped, unforked, tau 1) over >= 4 rho values.
- allocation: `alloc_cell` cells (unforked) over >= 2 gamma values with a grokking majority.
- fork: forked cells of roles fork_same and fork_raised (fork_free and fork_lowered for the ordering).
- precision: the same cell in float32 and float64.
The `design` param narrows this: when every cell names a design known below, only that design's
analyses run (the paper's collapse grid also holds a tau sweep, but it is not the mediation design).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analyses.cells import FORK_ROLES, left_out, why_left_out

ANALYSES = ["recovery", "memorization_control", "mediation", "collapse", "fork", "dose_law", "allocation",
            "precision", "mediator_clamp", "loss_contrast", "accelerators"]   # the last three: analyses.beyond
MEDIATION_SET = {"recovery", "memorization_control", "mediation"}
BY_DESIGN = {"mediation": MEDIATION_SET, "transformer": MEDIATION_SET,
             "samestate": MEDIATION_SET | {"fork"}, "fork": MEDIATION_SET | {"fork"},
             "collapse": {"collapse"}, "dose": {"dose_law"}, "alloc": {"allocation"}, "precision": {"precision"},
             "mediator_clamp": {"mediator_clamp"}, "stablemax": MEDIATION_SET | {"loss_contrast"},
             "accelerators": {"accelerators"}}


def allowed_analyses(cells: pd.DataFrame) -> list[str]:
    designs = set(cells["design"].str.lower())
    if designs and all(d in BY_DESIGN for d in designs):
        wanted = set().union(*(BY_DESIGN[d] for d in designs))
        return [a for a in ANALYSES if a in wanted]
    return list(ANALYSES)


def _eq(x, v) -> np.ndarray:
    return np.isclose(x.astype(float), v, rtol=0, atol=1e-6)


def _plain_clamped(g: pd.DataFrame) -> pd.DataFrame:
    """Clamped, unforked, no allocation, given tau: the rho x tau cells."""
    return g[g["clamped"] & ~g["forked"] & _eq(g["gamma"], 0.0) & ~g["logit_matched"]]


def recovery_sets(cells: pd.DataFrame) -> tuple[list[dict], list[str]]:
    """Specs {group, base, up, sweep, matched, time} for recovery, memorization control and mediation."""
    specs, notes = [], []
    if not (cells["role"] != "").any():
        if cells["clamped"].any():
            notes.append("recovery: no arm records a design_role (runs logged before roles existed?); "
                         "designs are found by role, not by name")
        return specs, notes
    for label, g in cells.groupby("group", sort=False):
        for forked, (b_role, u_role) in ((False, ("baseline", "norm_up")), (True, ("fork_same", "fork_raised"))):
            h = g[g["forked"] == forked]
            base, ups = h[h["role"] == b_role], h[h["role"] == u_role]
            if not len(ups):
                continue
            if not len(base):
                notes.append(f"recovery ({label}): no {b_role} cell beside {u_role} {ups.iloc[0]['arm']}")
                continue
            for _, up in ups.iterrows():
                rho = up["rho"]
                sweep = h[h["role"].isin([u_role, "tau_sweep"]) & _eq(h["rho"], rho)].sort_values("tau")
                matched = h[(h["role"] == "logit_matched") & _eq(h["rho"], rho)]
                if sweep["tau"].nunique() < 2 and not len(matched):
                    if not forked:
                        notes.append(f"recovery ({label}): no tau sweep at rho {rho:g} (needs >= 2 tau values)")
                    continue  # a plain fork design: no recovery intended
                _add(specs, notes, label, base.iloc[0], up, sweep, matched, "fork_delay" if forked else "t_grok")
    return specs, notes


def _add(specs, notes, label, base, up, sweep, matched, time):
    for name, row in (("baseline", base), ("norm-up", up)):
        if not row["majority"]:
            notes.append(f"recovery ({label}): {name} arm {row['arm']} cannot count: {why_left_out(row)}")
            return
    for r in left_out(sweep, sweep[sweep["majority"]]):
        notes.append(f"recovery ({label}): sweep arm {r['arm']} left out: {r['reason']}")
    sweep = sweep[sweep["majority"]]
    if len(sweep) < 2:
        notes.append(f"recovery ({label}): fewer than 2 sweep arms with a grokking majority")
        return
    m = matched[matched["majority"]]
    if len(matched) and not len(m):
        notes.append(f"recovery ({label}): logit-matched arm {matched.iloc[0]['arm']} left out: "
                     f"{why_left_out(matched.iloc[0])}")
    specs.append({"group": label, "base": base["cell"], "up": up["cell"], "sweep": list(sweep["cell"]),
                  "matched": m.iloc[0]["cell"] if len(m) else None, "time": time})


def _per_group(cells: pd.DataFrame, find) -> tuple[list[dict], list[str]]:
    """(specs, notes) of find(label, group) -> (spec or None, [notes]) over the cell groups."""
    specs, notes = [], []
    for label, g in cells.groupby("group", sort=False):
        spec, why = find(label, g)
        specs += [spec] if spec is not None else []
        notes += why
    return specs, notes


def _collapse(label, g):
    plain = _plain_clamped(g)
    if plain["rho"].nunique() < 2 or plain["tau"].nunique() < 2:
        return None, []
    ok = plain[plain["majority"]]
    if len(ok) < 4:
        return None, [f"collapse ({label}): only {len(ok)} grid cells with a grokking majority (needs >= 4); left out: "
                      + "; ".join(f"{r['arm']}: {r['reason']}" for r in left_out(plain, ok))]
    return {"group": label, "cells": list(plain["cell"])}, []   # collapse_fit names the ones it leaves out


def _dose(label, g):
    plain = _plain_clamped(g[g["role"] == "dose_cell"])
    plain = plain[_eq(plain["tau"], 1.0)]
    if plain["rho"].nunique() >= 4:
        return {"group": label, "cells": list(plain["cell"])}, []
    if plain["rho"].nunique():
        return None, [f"dose law ({label}): {plain['rho'].nunique()} rho values of dose_cell arms at tau 1 "
                      "(needs >= 4)"]
    return None, []


def _allocation(label, g):
    alloc = g[~g["forked"] & (g["role"] == "alloc_cell")]
    if not len(alloc):
        return None, []
    if alloc.loc[alloc["majority"], "gamma"].nunique() < 2:
        return None, [f"allocation ({label}): fewer than 2 gamma values with a grokking majority; left out: "
                      + "; ".join(f"{r['arm']}: {r['reason']}" for r in left_out(alloc, alloc[alloc["majority"]]))]
    return {"group": label, "cells": list(alloc["cell"])}, []


def _fork(label, g):
    f = g[g["forked"] & g["role"].isin(list(FORK_ROLES))]
    if not len(f):
        return None, []
    arms = {FORK_ROLES[r]: f.loc[f["role"] == r, "cell"].iloc[0] for r in FORK_ROLES if (f["role"] == r).any()}
    if "clamp_same" not in arms or "clamp_raised" not in arms:
        return None, [f"fork ({label}): needs fork_same and fork_raised arms; found {sorted(arms)}"]
    pair = [f.loc[f["cell"] == arms[r]].iloc[0] for r in ("clamp_same", "clamp_raised")]
    weak = [r for r in pair if not r["majority"]]
    if weak:
        return None, [f"fork ({label}): " + "; ".join(f"{r['arm']} cannot count: {why_left_out(r)}" for r in weak)]
    return {"group": label, "arms": arms}, []


def collapse_sets(cells: pd.DataFrame) -> tuple[list[dict], list[str]]:
    return _per_group(cells, _collapse)


def dose_sets(cells: pd.DataFrame) -> tuple[list[dict], list[str]]:
    return _per_group(cells, _dose)


def allocation_sets(cells: pd.DataFrame) -> tuple[list[dict], list[str]]:
    return _per_group(cells, _allocation)


def fork_sets(cells: pd.DataFrame) -> tuple[list[dict], list[str]]:
    return _per_group(cells, _fork)


def precision_sets(cells: pd.DataFrame) -> tuple[list[dict], list[str]]:
    specs = []
    key = ["p", "loss", "model", "rho", "tau", "gamma", "clamp", "fork_step", "weight_decay", "role"]
    c = cells.assign(**{k: cells[k].astype(str) for k in key})
    for _, g in c.groupby(key, sort=False, dropna=False):
        f32, f64 = g[g["precision"] == "float32"], g[g["precision"] == "float64"]
        if len(f32) and len(f64):
            specs.append({"float32": f32.iloc[0]["cell"], "float64": f64.iloc[0]["cell"]})
    return specs, []


FINDERS = {"recovery": recovery_sets, "collapse": collapse_sets, "dose_law": dose_sets,
           "allocation": allocation_sets, "fork": fork_sets, "precision": precision_sets}
