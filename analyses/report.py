"""Scripted mediation report: `python -m analyses.report EXPERIMENT [--tracking-uri URI] [--out DIR] [--json PATH]`.

Reads the experiment's member and arm runs back from MLflow (tracking.query), finds which designs it holds
(designs.py), computes each (one small module per design), and writes report.md (tables at the paper's
printed precision), PNG figures and a JSON object with one list per design found to DIR (default
reports/<experiment>), then logs the same files to a run tagged role=report under the study run.
Exit 0 on success; 2 for an unreachable store, an unknown experiment or no analysable design (message on
stderr). A design that is only partly there yields what it can, and the report says what is missing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analyses import figures
from analyses.allocation import allocation_swing
from analyses.cells import CURVE_KEYS, mean_member_curves, prepare_members, summarize
from analyses.collapse import collapse_fit
from analyses.designs import FINDERS, MEDIATION_SET, allowed_analyses
from analyses.doselaw import dose_law
from analyses.forks import fork_contrast
from analyses.mediation import mediation_fit
from analyses.memorization import delay_share
from analyses.precision import precision_pair
from analyses.recovery import recovery

ORDER = ["recovery", "memorization_control", "mediation", "collapse", "fork", "dose_law", "allocation", "precision"]


class ReportError(Exception):
    """No report can be made (unknown experiment, no members, no analysable design)."""


# ---------------------------------------------------------------- loading
def load(experiment: str, uri: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(members, cells, curves) of an experiment; curves are the arm runs' seed means (run_id = cell id)."""
    from tracking.query import load_curves, load_members
    try:
        raw = load_members(experiment, uri)
    except LookupError as e:
        raise ReportError(str(e)) from None
    if raw.empty:
        raise ReportError(f"experiment {experiment!r} in {uri} holds no member runs (tag role=member)")
    members = prepare_members(raw)
    cell_ids = list(members["cell"].unique())
    curves = load_curves(cell_ids, CURVE_KEYS, uri)
    bare = [c for c in cell_ids if not ((curves["run_id"] == c) & (curves["key"] == "logit/scale")).any()]
    if bare:  # arm runs without seed-mean curves: average the members' own curves
        member_ids = list(members.loc[members["cell"].isin(bare), "run_id"])
        curves = pd.concat([curves, mean_member_curves(members, load_curves(member_ids, CURVE_KEYS, uri))],
                           ignore_index=True)
    return members, summarize(members, curves), curves


# ---------------------------------------------------------------- analysis
def analyse(members: pd.DataFrame, cells: pd.DataFrame) -> tuple[dict[str, list[dict]], list[str]]:
    """Every design the cells hold -> {design: [result rows]}, plus notes on what could not be computed."""
    results: dict[str, list[dict]] = {}
    notes: list[str] = []
    allowed = allowed_analyses(cells)
    by_cell = cells.set_index("cell", drop=False)

    def attempt(design: str, label: str, fn):
        try:
            row = fn()
        except (ValueError, np.linalg.LinAlgError) as e:
            notes.append(f"{design} ({label}): {e}")
            return
        row["group"] = label
        if row.get("note"):
            notes.append(f"{design} ({label}): {row['note']}")
        results.setdefault(design, []).append(row)

    if "recovery" in allowed:
        specs, found = FINDERS["recovery"](cells)
        notes += found
        for s in specs:
            family = s["sweep"] + ([s["matched"]] if s["matched"] else [])
            attempt("recovery", s["group"], lambda: _recovery(members, cells, s))
            if "memorization_control" in allowed:
                attempt("memorization_control", s["group"], lambda: delay_share(by_cell.loc[s["sweep"]]))
            if "mediation" in allowed:
                attempt("mediation", s["group"],
                        lambda: mediation_fit(members, cells, s["base"], family, s["time"]))
    simple = {"collapse": lambda s: collapse_fit(by_cell.loc[s["cells"]]),
              "dose_law": lambda s: dose_law(by_cell.loc[s["cells"]]),
              "allocation": lambda s: allocation_swing(by_cell.loc[s["cells"]]),
              "fork": lambda s: _fork(members, s),
              "precision": lambda s: precision_pair(by_cell.loc[s["float32"]], by_cell.loc[s["float64"]])}
    for design, fn in simple.items():
        if design not in allowed:
            continue
        specs, found = FINDERS[design](cells)
        notes += found
        for s in specs:
            label = s.get("group") or by_cell.at[s["float32"], "group"].replace(" float32", "")
            attempt(design, label, lambda: fn(s))
    explained = {a for a in allowed for n in notes if n.startswith((a, a.replace("_", " ")))}
    if "recovery" in explained:  # memorization control and mediation need the recovery design's arms
        explained |= MEDIATION_SET
    absent = [a for a in allowed if a not in results and a not in explained]
    if absent:
        notes.append("not present in this experiment's params: " + ", ".join(absent))
    return {d: results[d] for d in ORDER if d in results}, notes


def _recovery(members, cells, s) -> dict:
    r = recovery(members, cells, s["base"], s["up"], s["sweep"], s["matched"], s["time"])
    if r["T2_interpolated"] is None:
        Ls = [x["L"] for x in r["sweep"] if x["L"] is not None]
        r["note"] = (f"T2 not interpolated: the baseline's L at grok {_f(r['L_baseline'], 2)} lies outside the "
                     f"sweep's L range [{_f(min(Ls), 2)}, {_f(max(Ls), 2)}] (no extrapolation)"
                     + ("; the realized logit-matched T2 is reported" if r["matched"] else ""))
    return r


def _fork(members, s) -> dict:
    r = fork_contrast(members, s["arms"])
    if r["missing_arms"]:
        r["note"] = f"seed ordering needs the {' and '.join(r['missing_arms'])} arm(s); ratio computed"
    return r


# ---------------------------------------------------------------- markdown
def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _est(x, lo, hi, digits: int = 3) -> str:
    """'0.833 [0.818, 0.852]', or 'n/a' when there is no estimate."""
    return "n/a" if x is None else f"{_f(x, digits)} [{_f(lo, digits)}, {_f(hi, digits)}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


MEDIATION_LIMITS = (
    "Limits: effects are on ln t_grok from two linear models (mediator ln L ~ exposure [+ ln tau]; outcome "
    "ln T ~ exposure + ln L). tau is assumed to act on the delay only through L (not tested here). When the "
    "mediator is the arm-level L at grok (all the paper's data holds: it has no per-seed logit scale), "
    "the L -> delay slope is identified only by the few distinct L values of the tau sweep and the seeds "
    "replicate the outcome, not the mediator, so the intervals are too narrow; per-seed L at grok (our "
    "engine) is measured at the outcome's own time. The exposure (the clamp) is assigned; the mediator is "
    "not randomised, so sequential ignorability is an assumption. Read the recovery fraction as the "
    "design-based answer and this as a model-based cross-check.")

CONVENTIONS = """## Conventions
- A cell is one arm; it counts when more than half of its seeds grok (test accuracy >= 0.90).
- T = median over grokked seeds (numpy median; even counts average the two middle values); in a fork
  design T is the median delay from the fork (t_grok - fork_step).
- L at grok = the arm's seed-mean `logit/scale` curve at the logged step nearest the cell's median t_grok.
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
             figs: dict[str, list[str]]) -> str:
    out = [f"# Report: {experiment}", "",
           f"Store `{uri}`: {int(cells['n_seeds'].sum())} member runs in {len(cells)} arms. "
           f"Designs found: {', '.join(results) if results else 'none'}.", ""]
    for design in results:
        out += SECTIONS[design](results[design]) + [""]
        out += [f"![{design}]({Path(p).name})" for p in figs.get(design, [])] + [""]
    if figs.get("curves"):
        out += ["## Accuracy curves per arm", ""] + [f"![curves]({Path(p).name})" for p in figs["curves"]] + [""]
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
    return ["## Causal mediation (statsmodels Mediation, effects on ln t_grok)", "", _table(
        ["group", "ACME", "ADE", "total", "prop. mediated [95% CI]", "n", "mediator"],
        [[r["group"], f"{_f(r['acme'])} {ci(r['acme_ci'])}", f"{_f(r['ade'])} {ci(r['ade_ci'])}",
          f"{_f(r['total'])} {ci(r['total_ci'])}", _est(r["prop_mediated"], r["ci_low"], r["ci_high"]),
          r["n"], r["mediator"]] for r in rows]), "", MEDIATION_LIMITS]


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
        ["group", "swing (max/min median t_grok)", "gamma: median t_grok"],
        [[r["group"], _f(r["swing"], 1),
          ", ".join(f"{g:+.2f}: {_f(t, 0)}" for g, t in zip(r["gamma"], r["t_grok"]))] for r in rows])]


def _precision_md(rows):
    return ["## Float64 audit", "", _table(
        ["group", "rho", "tau", "t_grok float32", "t_grok float64", "softmax collapse float32", "float64"],
        [[r["group"], _f(r["rho"], 2), _f(r["tau"], 2), _f(r["t_grok_float32"], 0), _f(r["t_grok_float64"], 0),
          _f(r["sc_float32"]), _f(r["sc_float64"])] for r in rows])]


SECTIONS = {"recovery": _recovery_md, "memorization_control": _memorization_md, "mediation": _mediation_md,
            "collapse": _collapse_md, "fork": _fork_md, "dose_law": _dose_md, "allocation": _allocation_md,
            "precision": _precision_md}


def _cells_table(cells: pd.DataFrame) -> str:
    """Every cell; 'L per-seed median' (the engine's logit_scale_at_grok, the value its logit-matched tau is
    derived from) is shown beside the report's curve-based L at grok when the runs have it."""
    c = cells.sort_values(["group", "rho", "tau", "gamma", "arm"])
    per_seed = bool(np.isfinite(c["L_seed_median"]).any())
    header = ["arm", "group", "rho", "tau", "gamma", "grokked", "median t_grok", "median delay", "L at grok"]
    rows = [[r.arm, r.group, _f(r.rho, 2), _f(r.tau, 3), _f(r.gamma, 2), f"{r.n_grokked}/{r.n_seeds}",
             _f(r.t_grok, 0), _f(r.delay, 0), _f(r.L, 2)] + ([_f(r.L_seed_median, 2)] if per_seed else [])
            for r in c.itertuples()]
    return _table(header + (["L per-seed median"] if per_seed else []), rows)


# ---------------------------------------------------------------- output
def make_figures(results: dict, cells: pd.DataFrame, curves: pd.DataFrame, out: Path) -> dict[str, list[str]]:
    figs: dict[str, list[str]] = {}
    makers = {"recovery": figures.sweep_figure, "collapse": figures.collapse_figure,
              "fork": figures.fork_figure, "dose_law": figures.dose_figure}
    for design, fn in makers.items():
        for r in results.get(design, []):
            figs.setdefault(design, []).append(fn(r, out / f"{design}_{figures.slug(r['group'])}.png"))
    for label, g in cells.groupby("group", sort=True):
        path = figures.curves_figure(curves, g, f"accuracy per arm, {label}",
                                     out / f"curves_{figures.slug(label)}.png")
        if path:
            figs.setdefault("curves", []).append(path)
    return figs


def log_report(uri: str, experiment: str, files: list[Path], summary: str) -> str:
    """Log the report files to the experiment's report run (role=report, child of the study run)."""
    from tracking.query import load_runs
    from tracking.recorder import Recorder
    studies = load_runs(experiment, uri, role="study")
    parent = studies["run_id"].iloc[0] if len(studies) == 1 else None
    study = studies["study"].iloc[0] if len(studies) == 1 else experiment
    rec = Recorder(uri, experiment, background=False)
    try:
        run_id = rec.run("report", "report", parent_id=parent, tags={"study": study}, description=summary)
        for f in files:
            rec.log_artifact(run_id, str(f))
        rec.finish(run_id)
    finally:
        rec.close()
    return run_id


def jsonable(results: dict) -> dict:
    return json.loads(json.dumps(results, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def make_report(experiment: str, uri: str, out: Path, json_path: Path, log: bool = True) -> dict:
    members, cells, curves = load(experiment, uri)
    results, notes = analyse(members, cells)
    if not results:
        why = "; ".join(notes) if notes else (
            "none of recovery/mediation (baseline + norm-up + tau sweep), collapse grid, dose series, "
            "allocation, same-state fork or float32/float64 pairs was found in its params")
        raise ReportError(f"experiment {experiment!r} has no analysable design: {why}")
    out.mkdir(parents=True, exist_ok=True)
    figs = make_figures(results, cells, curves, out)
    md = out / "report.md"
    md.write_text(markdown(experiment, uri, cells, results, notes, figs))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(jsonable(results), indent=2, allow_nan=False))
    files = [md, json_path] + [Path(p) for ps in figs.values() for p in ps]
    if log:
        log_report(uri, experiment, files, f"analyses.report: {', '.join(results)}")
    return {"results": results, "notes": notes, "files": [str(f) for f in files]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analyses.report", description=__doc__.split("\n")[0])
    ap.add_argument("experiment", help="MLflow experiment name, e.g. fork_study or paper/mediation")
    ap.add_argument("--tracking-uri", help="store URI (default $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)")
    ap.add_argument("--out", help="output folder (default reports/<experiment>)")
    ap.add_argument("--json", help="JSON path (default <out>/report.json)")
    args = ap.parse_args(argv)
    from tracking.store import StoreError, check_uri, resolve_uri
    uri = resolve_uri(args.tracking_uri)
    out = Path(args.out or Path("reports") / args.experiment.replace("/", "_"))
    json_path = Path(args.json) if args.json else out / "report.json"
    try:
        check_uri(uri)
        made = make_report(args.experiment, uri, out, json_path)
    except (StoreError, ReportError) as e:
        print(f"analyses.report: {e}", file=sys.stderr)
        return 2
    for n in made["notes"]:
        print(f"not computed: {n}", file=sys.stderr)
    print(f"report: {out / 'report.md'}\njson: {json_path}\ndesigns: {', '.join(made['results'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
