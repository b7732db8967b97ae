"""Causal mediation (statsmodels `Mediation`, Imai-Keele-Tingley): norm -> logit scale -> delay.

Data: the members that grokked in the baseline cell (exposure 0) and in the norm-up family (exposure 1:
the norm-up arm at every tau of its sweep, and a logit-matched arm when present).
- outcome: ln t_grok (in a fork design ln(t_grok - fork_step));
- mediator: ln logit_scale at grok. Per seed (`logit_scale_at_grok`) when every member has it (our
  engine logs it); otherwise the arm-level L at grok (cells.py) repeated over the arm's seeds, which is
  all the paper's data holds;
- mediator model: ln L ~ exposure (+ ln tau when tau varies): tau moves L at a fixed norm;
- outcome model: ln T ~ exposure + ln L. tau is left out of it: the temperature is assumed to act on the
  delay only through the logit scale (the exclusion the tau lever is built on; assumed here, not tested).
Effects are on the log scale (ln t_grok), linear models, so ACME (control) = ACME (treated); we report
the averages, the total effect and the proportion mediated, with statsmodels' parametric simulation
intervals (1000 draws, rng 0); ci_low / ci_high are those of the proportion mediated.

Limits (repeated in the report): with arm-level L the mediator has no within-arm variance, so the
L -> delay slope is identified only by the tau sweep (a handful of distinct L values), and the 12 seeds
per arm act as replicates of the outcome, not of the mediator: intervals are too narrow. Per-seed L at
grok is measured at the outcome's own time, so it is not strictly pre-outcome. Sequential ignorability
holds by design only for the exposure (the clamp is assigned); the mediator is not randomised.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.api as sm
from statsmodels.stats.mediation import Mediation

from analyses.cells import num

N_REP = 1000
SEED = 0


def mediation_data(members: pd.DataFrame, cells: pd.DataFrame, base: str, family: list[str],
                   time: str = "t_grok") -> tuple[pd.DataFrame, str]:
    """One row per grokked member: exposure, ln_T, ln_L, ln_tau; and where the mediator came from."""
    m = members[members["cell"].isin([base, *family]) & members["ok"]].copy()
    m["exposure"] = (m["cell"] != base).astype(float)
    m["ln_T"] = np.log(m[time].astype(float))
    per_seed = m["logit_scale_at_grok"].astype(float)
    if len(m) and np.isfinite(per_seed).all() and (per_seed > 0).all():
        m["ln_L"], source = np.log(per_seed), "per-seed logit_scale_at_grok"
    else:
        m["ln_L"] = np.log(m["cell"].map(cells.set_index("cell")["L"]).astype(float))
        source = "arm-level L at grok (no per-seed logit scale in the data)"
    m["ln_tau"] = np.log(m["tau"].astype(float))
    return m[["cell", "seed", "exposure", "ln_T", "ln_L", "ln_tau"]].dropna(), source


def mediation_fit(members: pd.DataFrame, cells: pd.DataFrame, base: str, family: list[str],
                  time: str = "t_grok", n_rep: int = N_REP, seed: int = SEED) -> dict:
    """ACME, ADE, total effect and proportion mediated of the norm-up exposure through ln L."""
    data, source = mediation_data(members, cells, base, family, time)
    treated = data[data["exposure"] == 1]
    if data["exposure"].nunique() < 2:
        raise ValueError("needs grokked seeds in both the baseline and the norm-up arms")
    if data.groupby("exposure")["ln_L"].nunique().max() < 2:
        raise ValueError("the mediator is constant within each exposure group (arm-level L and no tau sweep): "
                         "the L -> delay slope is not identified")
    # array models (not formulas): statsmodels re-evaluates formulas at every simulation draw, ~100x slower
    with_tau = treated["ln_tau"].nunique() > 1
    mediator_cols = ["exposure", "ln_tau"] if with_tau else ["exposure"]
    outcome = sm.OLS(data["ln_T"].to_numpy(), sm.add_constant(data[["exposure", "ln_L"]].to_numpy()))
    mediator = sm.OLS(data["ln_L"].to_numpy(), sm.add_constant(data[mediator_cols].to_numpy()))
    # exposure: column 1 in both models; mediator: column 2 of the outcome model
    table = Mediation(outcome, mediator, (1, 1), 2).fit(n_rep=n_rep, rng=seed).summary()
    mediator_formula = "ln_L ~ " + " + ".join(mediator_cols)

    def row(name):
        r = table.loc[name]
        return float(r["Estimate"]), [float(r["Lower CI bound"]), float(r["Upper CI bound"])]

    acme, acme_ci = row("ACME (average)")
    ade, ade_ci = row("ADE (average)")
    total, total_ci = row("Total effect")
    prop, prop_ci = row("Prop. mediated (average)")
    first = cells.set_index("cell").loc[base]
    return {"p": num(first["p"]), "loss": first["loss"], "model": first["model"], "time": time,
            "acme": acme, "ade": ade, "total": total, "prop_mediated": prop,
            "ci_low": prop_ci[0], "ci_high": prop_ci[1], "acme_ci": acme_ci, "ade_ci": ade_ci,
            "total_ci": total_ci, "n": int(len(data)), "n_arms": int(data["cell"].nunique()),
            "mediator": source, "mediator_model": mediator_formula, "outcome_model": "ln_T ~ exposure + ln_L"}
