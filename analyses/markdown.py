"""report.md: one section per design (tables at the paper's printed precision), the cells, the conventions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analyses.beyond import MODULES
from analyses.mediation import ASSUMPTIONS
from analyses.tables import est as _est
from analyses.tables import fmt as _f
from analyses.tables import table as _table
from tracking.conventions import GROK_THRESHOLD


CONVENTIONS = f"""## Conventions
- A cell is one arm; it counts when more than half of its seeds grok (test accuracy >= {GROK_THRESHOLD:.2f}).
- T = median over grokked seeds (numpy median; even counts average the two middle values); in a fork
  design T is the median delay from the fork (t_grok - fork_step).
- L at grok = the arm's seed-mean `logit/scale` curve at the logged step nearest the cell's median t_grok
  (tracking.conventions.l_at_grok: the engine derives the logit-matched tau from the same value).
- w_c = median over the control's grokked seeds of each seed's norm at the end of the control's run; its
  95% interval: 4000 smoothed resamples of the control's seeds (numpy default_rng(0)), each recomputing the
  end of the run (the last grok among the drawn seeds) and the median norm there from the seeds' norm curves.
- Recovery = (T1 - T2) / (T1 - T0); T2 linear in L between the two tau-sweep cells bracketing the baseline's
  L (no extrapolation); realized T2 = the logit-matched arm's median.
- Bootstrap CIs: 4000 paired resamples of seeds (one index draw per resample shared by all arms,
  numpy default_rng(0)), every cell median recomputed, L values held fixed; 95% percentile interval.
  At three decimals a bound can move by 0.001 with another seed (Monte-Carlo error).
- Collapse: OLS of ln median t_grok on L, on rho, on both (intercept); increment of rho = R^2 both - R^2 L.
- Dose law: ln T = c + alpha W over clamp cells with rho <= 1.15 up to the first 2.5x jump in L; AIC =
  n ln(RSS/n) + 2k against a power law with offset (k 3) and a saddle-node (k 2); delta AIC = best
  alternative - exponential.
- Memorization control: (delay(tau_min) - delay(tau_max)) / (t_grok(tau_min) - t_grok(tau_max)).
- Allocation swing: max / min median t_grok over gamma. Precision: softmax collapse = peak of the seed-mean
  `softmax/collapse` curve.
"""


def markdown(experiment: str, uri: str, cells: pd.DataFrame, results: dict, notes: list[str],
             figs: dict[str, list[str]], w_c: list[str] = ()) -> str:
    retire = sorted(set(cells["retire"]) - {"", "none", "nan"})
    how = {"arm": "retire: arm (every seed of an arm trained until all had grokked, as the paper's runner)",
           "member": "retire: member (each seed stopped at its own t_grok: seed-mean curves thin out after "
                     "the first grok, so L at grok is over the seeds still running)"}
    out = [f"# Report: {experiment}", "",
           f"Store `{uri}`: {int(cells['n_seeds'].sum())} member runs in {len(cells)} arms. "
           f"Designs found: {', '.join(results) if results else 'none'}.",
           "Retirement: " + ("; ".join(how.get(r, r) for r in retire) if retire else "not recorded") + ".", ""]
    for design in results:
        out += (SECTIONS[design] if design in SECTIONS else MODULES[design].markdown)(results[design]) + [""]
        out += [f"![{design}]({Path(p).name})" for p in figs.get(design, [])] + [""]
    for key, title in (("curves", "Accuracy curves per arm"), ("structure", "Fourier structure of the embedding"),
                       ("embedding", "The embedding at the fork, at t_grok and at the end (PCA)")):
        if figs.get(key):
            out += [f"## {title}", ""] + [f"![{key}]({Path(p).name})" for p in figs[key]] + [""]
    out += list(w_c)
    out += ["## Not computed (or only in part)", ""]
    out += [f"- {n}" for n in notes] if notes else ["- nothing: every design found was computed."]
    out += ["", "## Cells", "", _cells_table(cells), "", CONVENTIONS]
    return "\n".join(out)


def _recovery_md(rows):
    out = ["## Recovery fraction", "", _table(
        ["group", "rho", "T0", "T1", "T2 interpolated", "recovery [95% CI]", "T2 realized", "realized recovery [95% CI]",
         "seeds"],
        [[r["group"], _f(r["rho"], 2), _f(r["T0"], 0), _f(r["T1"], 0), _f(r["T2_interpolated"], 0),
          _est(r["estimate"], r["ci_low"], r["ci_high"]),
          _f(r["T2_realized"], 0) if r["matched"] else "no logit-matched arm",
          _est(r["realized_estimate"], r["realized_ci_low"], r["realized_ci_high"]) if r["matched"] else "-",
          r["n_seeds"]] for r in rows])]
    for r in rows:
        what = "median delay from the fork" if r["time"] == "fork_delay" else "median t_grok"
        out += ["", f"Tau sweep, {r['group']} (norm-up arm {r['norm_up_arm']}; T = {what}; baseline "
                f"{r['baseline_arm']}: L at grok {_f(r['L_baseline'], 2)}):", "",
                _table(["tau", "T", "L at grok"],
                       [[f"{x['tau']:g}", _f(x["T"], 0), _f(x["L"], 2)] for x in r["sweep"]]
                       + ([[f"{r['matched']['tau']:.4g} (logit-matched)", _f(r["matched"]["T"], 0),
                            _f(r["matched"]["L"], 2)]] if r["matched"] else []))]
        for extra in (r.get("note"), r.get("caveat")):
            if extra:
                out += ["", extra[0].upper() + extra[1:] + "."]
    return out


def _memorization_md(rows):
    return ["## Memorization control (delay share)", "", _table(
        ["group", "rho", "tau range", "delay share", "median delays", "median t_grok"],
        [[r["group"], _f(r["rho"], 2), f"{r['tau_low']:g} -> {r['tau_high']:g}", _f(r["delay_share"]),
          " / ".join(_f(x, 0) for x in r["delays"]), " / ".join(_f(x, 0) for x in r["t_grok"])] for r in rows])]


def _mediation_md(rows):
    ci = lambda c: f"[{_f(c[0])}, {_f(c[1])}]"  # noqa: E731
    out = ["## Causal mediation (statsmodels Mediation, effects on ln t_grok)", "", _table(
        ["group", "ACME", "ADE", "total", "prop. mediated [95% CI]", "ln tau in the outcome [95% CI]", "n (seeds)",
         "mediator"],
        [[r["group"], f"{_f(r['acme'])} {ci(r['acme_ci'])}", f"{_f(r['ade'])} {ci(r['ade_ci'])}",
          f"{_f(r['total'])} {ci(r['total_ci'])}", _est(r["prop_mediated"], r["ci_low"], r["ci_high"]),
          _est(r["tau_coef"], *r["tau_ci"]), f"{r['n']} ({r['n_seeds']})", r["mediator"]] for r in rows]),
        "", ASSUMPTIONS]
    for r in rows:
        if r["exclusion_holds"] is False:
            arm_level = r["mediator"].startswith("arm-level")
            out += ["", f"{r['group']}: ln tau has an effect on the delay beyond L (coefficient "
                    f"{_est(r['tau_coef'], *r['tau_ci'])}): the exclusion restriction fails in this linear model, "
                    "so the mediated share is not the effect of L alone"
                    + ("; with arm-level L the test rests on the arms alone, so a curved ln T - ln L relation "
                       "also reads as a tau effect." if arm_level else ".")]
    return out


def _collapse_md(rows):
    return ["## Collapse regression (ln median t_grok)", "", _table(
        ["group", "cells", "R^2 L", "R^2 rho", "R^2 both", "increment of rho"],
        [[r["group"], r["n_cells"], _f(r["r2_logit"]), _f(r["r2_rho"]), _f(r["r2_both"]), _f(r["delta_r2_rho"])]
         for r in rows])]


def _fork_md(rows):
    return ["## Same-state fork (delays from the fork)", "", _table(
        ["group", "fork step", "lowered", "free", "same", "raised", "raised / same [95% CI]", "ordered seeds"],
        [[r["group"], _f(r["fork_step"], 0)] + [_f(r["delays"].get(a), 0) for a in
                                                ("clamp_lowered", "free", "clamp_same", "clamp_raised")]
         + [_est(r["ratio_raised_same"], r["ci_low"], r["ci_high"], 2),
            f"{r['ordered_seeds']}/{r['n_seeds']}" if r["ordered_seeds"] is not None
            else "needs " + ", ".join(r["missing_arms"])] for r in rows]),
        "", "Ordered: lowered < free < same < raised in a seed (delays from the fork)."]


def _dose_md(rows):
    return ["## Dose law (ln T = c + alpha W)", "", _table(
        ["group", "alpha", "R^2", "n", "delta AIC", "power-law w0", "saddle-node w0", "left out"],
        [[r["group"], _f(r["alpha"]), _f(r["r2"]), r["n"], _f(r["delta_aic"], 2), _f(r["w0_power"], 2),
          _f(r["w0_saddle"], 2), ", ".join(r["excluded"]) or "-"] for r in rows])]


def _allocation_md(rows):
    return ["## Layer allocation swing", "", _table(
        ["group", "swing (max/min median t_grok)", "gamma: median t_grok (L at grok)"],
        [[r["group"], _f(r["swing"], 1),
          ", ".join(f"{g:+.2f}: {_f(t, 0)} ({_f(L, 2)})" for g, t, L in zip(r["gamma"], r["t_grok"], r["L"]))]
         for r in rows])]


def _precision_md(rows):
    return ["## Float64 audit", "", _table(
        ["group", "rho", "tau", "t_grok float32", "t_grok float64", "softmax collapse float32", "float64"],
        [[r["group"], _f(r["rho"], 2), _f(r["tau"], 2), _f(r["t_grok_float32"], 0), _f(r["t_grok_float64"], 0),
          _f(r["sc_float32"]), _f(r["sc_float64"])] for r in rows]), ""] + [f"- {_verdict(r)}" for r in rows]


def _verdict(r) -> str:
    """One line per float32/float64 pair: is the float32 delay a precision artefact?"""
    t32, t64, sc32, sc64 = r["t_grok_float32"], r["t_grok_float64"], r["sc_float32"], r["sc_float64"]
    head = f"rho {_f(r['rho'], 2)} ({r['group']}): "
    if t32 is not None and t64 is not None and abs(t32 - t64) <= 0.1 * max(t32, t64):
        return head + f"float64 agrees (T32 {t32:.0f}, T64 {t64:.0f}, within 10%): no precision artefact"
    if (sc32 or 0) > 0 and not (sc64 or 0) > 0:
        return head + (f"softmax collapse in float32 only (sc {_f(sc32)} vs {_f(sc64)}) and T differs "
                       f"({_f(t32, 0)} vs {_f(t64, 0)}): the float32 delay is a precision artefact")
    return head + f"T32 {_f(t32, 0)} vs T64 {_f(t64, 0)}, sc {_f(sc32)} vs {_f(sc64)}: they differ"


SECTIONS = {"recovery": _recovery_md, "memorization_control": _memorization_md, "mediation": _mediation_md,
            "collapse": _collapse_md, "fork": _fork_md, "dose_law": _dose_md, "allocation": _allocation_md,
            "precision": _precision_md}


def _cells_table(cells: pd.DataFrame) -> str:
    """Every cell; 'L per-seed median' (median of each seed's logit scale at its own t_grok) is shown beside
    L at grok (the seed-mean curve's, the one the engine derives the logit-matched tau from) when the runs
    have it."""
    c = cells.sort_values(["group", "rho", "tau", "gamma", "arm"])
    per_seed = bool(np.isfinite(c["L_seed_median"]).any())
    header = ["arm", "group", "rho", "tau", "gamma", "grokked", "median t_grok", "median delay", "L at grok"]
    rows = [[r.arm, r.group, _f(r.rho, 2), _f(r.tau, 3), _f(r.gamma, 2), f"{r.n_grokked}/{r.n_seeds}",
             _f(r.t_grok, 0), _f(r.delay, 0), _f(r.L, 2)] + ([_f(r.L_seed_median, 2)] if per_seed else [])
            for r in c.itertuples()]
    return _table(header + (["L per-seed median"] if per_seed else []), rows)
