"""Scripted mediation report: `python -m analyses.report EXPERIMENT [--tracking-uri URI] [--out DIR] [--json PATH]
[--release EXPERIMENT]`.

Reads the experiment's member and arm runs back from MLflow (tracking.query), finds which designs it holds
(designs.py), computes each (compute.py; one small module per design), adds w_c as its clamped cells held it
(wc.py; with --release, beside an imported release's dose law at the same held norm), and writes report.md (tables at the paper's
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

import pandas as pd

from analyses import beyond, figures, wc
from analyses.compute import ReportError, analyse, load
from analyses.html import report_html
from analyses.markdown import markdown
from analyses.paper import printed_cells


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


def release_cells(names: list[str], uri: str) -> pd.DataFrame:
    """The cells of the experiments holding an imported release: each name an experiment, or a prefix whose
    `<name>/<folder>` experiments are taken (`paper`: every paper/<folder>)."""
    from tracking.query import list_experiments
    have = list_experiments(uri)
    picked = [n for name in names for n in ([name] if name in have else
                                             sorted(x for x in have if x.startswith(name.rstrip("/") + "/")))]
    if not picked:
        raise ReportError(f"--release {', '.join(names)}: no such experiment in {uri} (import the release with "
                          "python -m tracking.import_npz)")
    return pd.concat([load(x, uri)[1].assign(experiment=x) for x in picked], ignore_index=True)


def w_c_section(experiment: str, members, cells, curves, release: pd.DataFrame | None,
                printed: dict | None = None) -> tuple[dict, list[str]]:
    """({controls, held, dose_law_comparison}, markdown lines) of analyses.wc."""
    controls = wc.control_rows(members, cells, curves)
    held = wc.held_rows(cells, controls)
    doses = wc.dose_rows(cells.assign(experiment=experiment), release, printed) if release is not None else []
    return ({"controls": controls, "held": held, "dose_law_comparison": doses},
            wc.markdown(controls, held, doses))


def make_report(experiment: str, uri: str, out: Path, json_path: Path, log: bool = True,
                release: list[str] | None = None) -> dict:
    members, cells, curves = load(experiment, uri)
    results, notes = analyse(members, cells)
    w_c, w_c_md = w_c_section(experiment, members, cells, curves, release_cells(release, uri) if release else None,
                              printed_cells())
    if not results:
        why = "; ".join(notes) if notes else (
            "none of recovery/mediation (baseline + norm-up + tau sweep), collapse grid, dose series, "
            "allocation, same-state fork or float32/float64 pairs was found in its params")
        raise ReportError(f"experiment {experiment!r} has no analysable design: {why}")
    out.mkdir(parents=True, exist_ok=True)
    figs = make_figures(results, cells, curves, out, member_embeddings(members, uri))
    md = out / "report.md"
    md.write_text(markdown(experiment, uri, cells, results, notes, figs, w_c_md))
    page = out / "report.html"
    page.write_text(report_html(md.read_text(), out, f"Report: {experiment}"))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    w_c = {"w_c": w_c} if any(w_c.values()) else {}   # beside the designs: w_c as the clamped cells held it
    json_path.write_text(json.dumps(jsonable({**results, **w_c}), indent=2, allow_nan=False))
    files = [md, page, json_path] + [Path(p) for ps in figs.values() for p in ps]
    if log:
        log_report(uri, experiment, files, f"analyses.report: {', '.join(results)}")
    return {"results": results, "notes": notes, "files": [str(f) for f in files]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analyses.report", description=__doc__.split("\n")[0])
    ap.add_argument("experiment", help="MLflow experiment name, e.g. fork_study or paper/mediation; `paper`: "
                                       "one report over the paper's published data and the paper suite's runs")
    ap.add_argument("--preset", default="paper", help="with `paper`: the suite preset of the fresh runs "
                                                      "(paper | default; default paper)")
    ap.add_argument("--tracking-uri", help="store URI (default $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)")
    ap.add_argument("--out", help="output folder (default reports/<experiment>)")
    ap.add_argument("--json", help="JSON path (default <out>/report.json)")
    ap.add_argument("--release", action="append", metavar="EXPERIMENT",
                    help="compare the fresh clamped cells with an imported release's dose cells at the same held "
                         "norm: an experiment, or a prefix (`paper`: every paper/<folder>); repeatable")
    args = ap.parse_args(argv)
    from tracking.credentials import write_refusal
    from tracking.store import EXPERIMENT_KIND, StoreError, check_uri, resolve_uri
    uri = resolve_uri(args.tracking_uri)
    out = Path(args.out or Path("reports") / args.experiment.replace("/", "_"))
    json_path = Path(args.json) if args.json else out / "report.json"
    try:
        check_uri(uri)
        if args.experiment != "paper" and (why := write_refusal(uri, args.experiment, EXPERIMENT_KIND)):
            raise StoreError(uri, f"{why} (the report is logged as a run of the experiment)")
        if args.experiment == "paper":
            from analyses.paper import report as paper_report
            made = paper_report(uri, args.preset, out, json_path)
        else:
            made = make_report(args.experiment, uri, out, json_path, release=args.release)
    except (StoreError, ReportError) as e:
        print(f"analyses.report: {e}", file=sys.stderr)
        return 2
    for n in made["notes"]:
        print(f"not computed: {n}", file=sys.stderr)
    print(f"report: {out / 'report.md'}\njson: {json_path}\ndesigns: {', '.join(made['results'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
