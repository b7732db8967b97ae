"""Scripted mediation report: `python -m analyses.report EXPERIMENT [--tracking-uri URI] [--out DIR] [--json PATH]`.

Reads the experiment's member and arm runs back from MLflow (tracking.query), finds which designs it holds
(designs.py), computes each (one small module per design), and writes report.md (tables at the paper's
printed precision), report.html (the same page, self-contained), PNG figures and a JSON object with one
list per design found to DIR (default reports/<experiment>), then logs the same files to a run tagged role=report under the study run.
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

from analyses import beyond, figures
from analyses.allocation import allocation_swing
from analyses.cells import CURVE_KEYS, mean_member_curves, prepare_members, summarize
from analyses.collapse import collapse_fit
from analyses.designs import FINDERS, MEDIATION_SET, allowed_analyses
from analyses.doselaw import dose_law
from analyses.forks import fork_contrast
from analyses.html import report_html
from analyses.markdown import _f, markdown
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


# ---------------------------------------------------------------- output
def member_embeddings(members: pd.DataFrame, uri: str) -> dict[str, tuple[str, dict]]:
    """{cell: ("<arm> seed <s>", embeddings)} for the first grokked seed of each arm that kept its
    checkpoints (tracking.query.load_embeddings; none without the study's `save:`)."""
    from tracking.query import load_embeddings
    first = members[members["ok"]].sort_values("seed").groupby("cell").head(1)
    got = load_embeddings(list(first["run_id"]), uri)
    return {r.cell: (f"{r.arm} seed {int(r.seed)}", got[r.run_id]) for r in first.itertuples() if r.run_id in got}


def make_figures(results: dict, cells: pd.DataFrame, curves: pd.DataFrame, out: Path,
                 embeddings: dict | None = None) -> dict[str, list[str]]:
    figs: dict[str, list[str]] = {}
    embeddings = embeddings or {}
    makers = {"recovery": figures.sweep_figure, "collapse": figures.collapse_figure,
              "fork": figures.fork_figure, "dose_law": figures.dose_figure}
    makers.update({name: mod.figure for name, mod in beyond.MODULES.items()})
    for design, fn in makers.items():
        for r in results.get(design, []):
            path = fn(r, out / f"{design}_{figures.slug(r['group'])}.png")
            if path:
                figs.setdefault(design, []).append(path)
    for label, g in cells.groupby("group", sort=True):
        path = figures.curves_figure(curves, g, f"accuracy per arm, {label}",
                                     out / f"curves_{figures.slug(label)}.png")
        if path:
            figs.setdefault("curves", []).append(path)
        path = figures.structure_figure(curves, g, f"Fourier structure per arm, {label}",
                                        out / f"structure_{figures.slug(label)}.png")
        if path:
            figs.setdefault("structure", []).append(path)
        path = figures.embedding_figure([embeddings[c] for c in g["cell"] if c in embeddings],
                                        f"embedding E, first two principal components, {label}",
                                        out / f"embedding_{figures.slug(label)}.png")
        if path:
            figs.setdefault("embedding", []).append(path)
    return figs


def log_report(uri: str, experiment: str, files: list[Path], summary: str) -> str:
    """Log the report files to the experiment's report run (role=report, child of the study run)."""
    from tracking.query import load_runs
    from tracking.recorder import Recorder
    studies = load_runs(experiment, uri, role="study")
    parent = studies["run_id"].iloc[0] if len(studies) == 1 else None
    study = studies["study"].iloc[0] if len(studies) == 1 else experiment
    rec = Recorder(uri, experiment)
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
    figs = make_figures(results, cells, curves, out, member_embeddings(members, uri))
    md = out / "report.md"
    md.write_text(markdown(experiment, uri, cells, results, notes, figs))
    page = out / "report.html"
    page.write_text(report_html(md.read_text(), out, f"Report: {experiment}"))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(jsonable(results), indent=2, allow_nan=False))
    files = [md, page, json_path] + [Path(p) for ps in figs.values() for p in ps]
    if log:
        log_report(uri, experiment, files, f"analyses.report: {', '.join(results)}")
    return {"results": results, "notes": notes, "files": [str(f) for f in files]}


def paper_report(uri: str, preset: str, out: Path, json_path: Path) -> dict:
    """`analyses.report paper`: analysis.paper's three-way table over every experiment it finds."""
    from analyses import paper
    from tracking.store import client
    names = [e.name for e in client(uri).search_experiments()]
    published, fresh = paper.experiments(names, preset)
    merged: dict[str, dict[str, list[dict]]] = {"published": {}, "fresh": {}}
    notes: list[str] = []
    for side, exps in (("published", published), ("fresh", fresh)):
        for x in exps:
            try:
                members, cells, _ = load(x, uri)
            except ReportError as e:
                notes.append(str(e))
                continue
            results, why = analyse(members, cells)
            notes += [f"{x}: {n}" for n in why]
            for design, rows in results.items():
                merged[side].setdefault(design, []).extend({**r, "experiment": x} for r in rows)
    if not published and not fresh:
        raise ReportError(f"no paper experiments in {uri}: import the published data (python -m "
                          "tracking.import_npz) or run the suite (python -m interventions.run paper)")
    fresh_p = paper.scale_of(merged["fresh"], preset)
    rows = paper.table(merged["published"], merged["fresh"], fresh_p)
    out.mkdir(parents=True, exist_ok=True)
    md = paper.markdown(rows, published, fresh, notes, fresh_p, merged["fresh"].get("recovery", []))
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(report_html(md, out, "Report: the paper"))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"figures": rows, "published": published, "fresh": fresh, "fresh_p": fresh_p,
                                     "notes": notes},
                                    indent=2, allow_nan=False, default=float))
    return {"results": {"paper": rows}, "notes": notes,
            "files": [str(out / "report.md"), str(out / "report.html"), str(json_path)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analyses.report", description=__doc__.split("\n")[0])
    ap.add_argument("experiment", help="MLflow experiment name, e.g. fork_study or paper/mediation; `paper`: "
                                       "one report over the paper's published data and the paper suite's runs")
    ap.add_argument("--preset", default="paper", help="with `paper`: the suite preset of the fresh runs "
                                                      "(paper | default; default paper)")
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
        made = (paper_report(uri, args.preset, out, json_path) if args.experiment == "paper"
                else make_report(args.experiment, uri, out, json_path))
    except (StoreError, ReportError) as e:
        print(f"analyses.report: {e}", file=sys.stderr)
        return 2
    for n in made["notes"]:
        print(f"not computed: {n}", file=sys.stderr)
    print(f"report: {out / 'report.md'}\njson: {json_path}\ndesigns: {', '.join(made['results'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
