"""Reading an experiment back and computing every design it holds: the part of the report the scripted
report (report.py) and the paper report (paper.py) share."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analyses import beyond
from analyses.allocation import allocation_swing
from analyses.cells import CURVE_KEYS, mean_member_curves, prepare_members, summarize
from analyses.collapse import collapse_fit
from analyses.designs import FINDERS, MEDIATION_SET, allowed_analyses
from analyses.doselaw import dose_law
from analyses.forks import fork_contrast
from analyses.markdown import _f
from analyses.mediation import mediation_fit
from analyses.memorization import delay_share
from analyses.precision import precision_pair
from analyses.recovery import recovery

ORDER = ["recovery", "memorization_control", "mediation", "collapse", "fork", "dose_law", "allocation", "precision",
         *beyond.MODULES]


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
    cells = summarize(members, curves)
    ctrl = members.loc[members["cell"].isin(cells.loc[cells["role"] == "control", "cell"]), "run_id"]
    if len(ctrl):   # the controls' per-seed norm curves, for w_c's interval (analyses.wc)
        curves = pd.concat([curves, load_curves(list(ctrl), ["norm/total"], uri)], ignore_index=True)
    return members, cells, curves


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
        notes.extend(f"{design} ({label}): left out {r['arm']}: {r['reason']}" for r in row.get("left_out", ()))
        results.setdefault(design, []).append(row)

    if "recovery" in allowed:
        specs, found = FINDERS["recovery"](cells)
        notes += found
        for s in specs:
            family = s["sweep"] + ([s["matched"]] if s["matched"] else [])
            attempt("recovery", s["group"], lambda: _recovery(members, cells, s))
            # in a fork design every arm inherits the trunk's t_mem: the control only means something where
            # arms memorize on their own
            if "memorization_control" in allowed and s["time"] != "fork_delay":
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
    for design, mod in beyond.MODULES.items():
        if design in allowed:
            specs, found = mod.find(cells)
            notes += found
            for s in specs:
                attempt(design, s["group"], lambda: mod.compute(members, cells, s))
    explained = {a for a in allowed for n in notes if n.startswith((a, a.replace("_", " ")))}
    if results.get("recovery") and all(r["time"] == "fork_delay" for r in results["recovery"]):
        explained.add("memorization_control")
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
