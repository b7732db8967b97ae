"""Causal mediation (statsmodels `Mediation`, Imai-Keele-Tingley): norm -> logit scale -> delay.

Data: the members that grokked in the baseline cell (exposure 0) and in the norm-up family (exposure 1:
the norm-up arm at every tau of its sweep, and a logit-matched arm when present).
- outcome: ln t_grok (in a fork design ln(t_grok - fork_step));
- mediator: ln logit_scale at grok. Per seed (`logit_scale_at_grok`) when every member has it (our
  engine logs it); otherwise the arm-level L at grok (cells.py) repeated over the arm's seeds, which is
  all the paper's data holds;
- mediator model: ln L ~ exposure (+ ln tau when tau varies): tau moves L at a fixed norm;
- outcome model: ln T ~ exposure + ln L (tau acts on the delay only through L: the exclusion
  restriction the tau lever is built on). It is tested: the outcome model refitted with ln tau added,
  its coefficient and a seed-clustered 95% CI reported; a CI that excludes 0 is flagged.
Effects are on the log scale, linear models, so ACME (control) = ACME (treated). Point estimates are
statsmodels' (1000 simulation draws, rng 0). Intervals respect the pairing of seeds across arms (a seed
shares its init and split in every arm): a bootstrap that draws seeds (2000 draws, default_rng(0)),
each draw refitting both OLS models and taking their effects (ACME = a b, ADE = c', total = ACME +
ADE); 95% percentile intervals; ci_low / ci_high are those of the proportion mediated.

Limits (ASSUMPTIONS in the report): the clamp is assigned, the mediator is not randomised (sequential
ignorability is assumed); with arm-level L the L -> delay slope rests on the few distinct L values of
the tau sweep, and per-seed L is measured at the outcome's own time.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.api as sm
from statsmodels.stats.mediation import Mediation

from analyses.cells import num, percentile_ci

N_REP = 1000
N_BOOT = 2000
SEED = 0
ASSUMPTIONS = ("Assumes that neither the clamp (assigned by design) nor the logit scale (not randomised) "
               "shares an unmeasured cause with the delay, and that tau reaches the delay only through L "
               "(tested: the ln tau column). Effects are on ln t_grok from two linear models, with 95% "
               "intervals from a bootstrap that draws whole seeds (a seed shares its init across arms).")


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
    cols = ["cell", "seed", "exposure", "ln_T", "ln_L", "ln_tau"]
    # rows in an order fixed by the data, not by run ids or names (statsmodels' simulation follows it)
    return m[cols].dropna().sort_values(["exposure", "ln_tau", "seed", "ln_L", "ln_T"]), source


def _ols(y: np.ndarray, X: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(np.column_stack([np.ones(len(y)), X]), y, rcond=None)[0]


def seed_bootstrap(data: pd.DataFrame, mediator_cols: list[str], n_boot: int = N_BOOT,
                   seed: int = SEED) -> np.ndarray:
    """(n_boot, 4) ACME, ADE, total, proportion mediated over resamples of whole seeds (every arm's row
    of a drawn seed comes along); draws in which the models are not identified are NaN."""
    seeds = np.array(sorted(data["seed"].unique()))
    rows = [np.flatnonzero(data["seed"].to_numpy() == s) for s in seeds]
    T, L, E = (data[k].to_numpy(float) for k in ("ln_T", "ln_L", "exposure"))
    M = data[mediator_cols].to_numpy(float)
    rng = np.random.default_rng(seed)
    out = np.full((n_boot, 4), np.nan)
    for i in range(n_boot):
        idx = np.concatenate([rows[j] for j in rng.integers(0, len(seeds), len(seeds))])
        e, l_ = E[idx], L[idx]
        if e.min() == e.max() or max(np.ptp(l_[e == 0]) if (e == 0).any() else 0, np.ptp(l_[e == 1])) == 0:
            continue
        a = _ols(l_, M[idx])[1]                                   # exposure -> ln L
        _, ade, b = _ols(T[idx], np.column_stack([e, l_]))         # outcome: exposure, ln L
        acme = a * b
        out[i] = acme, ade, acme + ade, acme / (acme + ade) if acme + ade else np.nan
    return out


def exclusion_test(data: pd.DataFrame) -> dict:
    """Outcome model with ln tau added: its coefficient and seed-clustered 95% CI (statsmodels OLS)."""
    X = sm.add_constant(data[["exposure", "ln_L", "ln_tau"]].to_numpy())
    if data["ln_tau"].nunique() < 2:
        return {"tau_coef": None, "tau_ci": [None, None], "exclusion_holds": None}
    fit = sm.OLS(data["ln_T"].to_numpy(), X).fit(cov_type="cluster", cov_kwds={"groups": data["seed"].to_numpy()})
    lo, hi = fit.conf_int()[3]
    return {"tau_coef": float(fit.params[3]), "tau_ci": [float(lo), float(hi)],
            "exclusion_holds": bool(lo <= 0.0 <= hi)}


def mediation_fit(members: pd.DataFrame, cells: pd.DataFrame, base: str, family: list[str],
                  time: str = "t_grok", n_rep: int = N_REP, seed: int = SEED, n_boot: int = N_BOOT) -> dict:
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

    acme, ade, total, prop = (row(k)[0] for k in ("ACME (average)", "ADE (average)", "Total effect",
                                                     "Prop. mediated (average)"))
    boot = seed_bootstrap(data.reset_index(drop=True), mediator_cols, n_boot, seed)
    acme_ci, ade_ci, total_ci, prop_ci = (list(percentile_ci(boot[:, j])) for j in range(4))
    first = cells.set_index("cell").loc[base]
    return {"p": num(first["p"]), "loss": first["loss"], "model": first["model"], "time": time,
            "acme": acme, "ade": ade, "total": total, "prop_mediated": prop,
            "ci_low": prop_ci[0], "ci_high": prop_ci[1], "acme_ci": acme_ci, "ade_ci": ade_ci,
            "total_ci": total_ci, "n": int(len(data)), "n_arms": int(data["cell"].nunique()),
            "mediator": source, "mediator_model": mediator_formula, "outcome_model": "ln_T ~ exposure + ln_L",
            "n_seeds": int(data["seed"].nunique()), "interval": f"seed bootstrap ({n_boot} draws)",
            **exclusion_test(data)}
