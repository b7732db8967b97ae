"""`python -m analyses.report paper`: one report over the paper's experiments, three numbers per figure the
paper prints (docs/reproduction.md): the value the paper prints, the value computed from its published data (the importer's
`paper/<folder>` experiments) and the value from fresh runs (the `paper` suite's experiments, found by
name: `<study>-paper` and `<study>-paper_mse`, or `<study>` and `mediation-default_mse` for `--preset
default`), each with its relative difference from the printed value."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from analyses import wc
from analyses.html import report_html
from analyses.compute import ReportError, analyse, load

# (quantity, printed value (None: not reached), design, where (row filter), field; "a/b" nests,
# "sweep[tau=1.3]/T" picks the list item with tau 1.3). The paper's tables (docs/reproduction.md).
CE, MLP = {"p": 59, "loss": "ce", "model": "mlp", "time": "t_grok"}, {"p": 59, "model": "mlp"}
MSE = {"p": 59, "loss": "mse", "model": "mlp", "time": "t_grok"}
TF = {"p": 59, "model": "transformer_noln", "time": "t_grok"}
UP = {"rho": 1.15}   # figures of the norm-up arm: a fresh design raising the norm by another rho has none
FIGURES = [
    ("w_c (CE), p = 59", 54.49, "w_c", {"p": 59, "loss": "ce", "model": "mlp"}, "w_c"),
    ("w_c (CE), p = 97", 65.85, "w_c", {"p": 97, "loss": "ce", "model": "mlp"}, "w_c"),
    ("T0, median t_grok (CE)", 3675, "recovery", CE, "T0"),
    ("T1, median t_grok (CE)", 12600, "recovery", {**CE, **UP}, "T1"),
    ("recovery fraction (CE)", 0.833, "recovery", {**CE, **UP}, "estimate"),
    ("interpolated T2 (CE)", 5166, "recovery", {**CE, **UP}, "T2_interpolated"),
    *[(f"CE sweep at rho 1.15, tau {t}: median t_grok", v, "recovery", {**CE, **UP}, f"sweep[tau={t}]/T")
      for t, v in ((1.0, 12600), (1.15, 9100), (1.3, 6825), (1.5, 4700), (1.7, 3450))],
    *[(f"CE sweep at rho 1.15, tau {t}: L at grok", v, "recovery", {**CE, **UP}, f"sweep[tau={t}]/L")
      for t, v in ((1.0, 34.31), (1.15, 29.46), (1.3, 26.50), (1.5, 23.13), (1.7, 20.89))],
    ("baseline L at grok (CE)", 23.87, "recovery", CE, "L_baseline"),
    ("collapse R^2, L alone", 0.968, "collapse", MLP, "r2_logit"),
    ("collapse R^2, rho alone", 0.407, "collapse", MLP, "r2_rho"),
    ("collapse R^2, both", 0.988, "collapse", MLP, "r2_both"),
    ("collapse, increment of rho", 0.020, "collapse", MLP, "delta_r2_rho"),
    *[(f"same-state median delay from the fork, {a}", v, "fork", MLP, f"delays/{a}")
      for a, v in (("clamp_lowered", 1525), ("free", 4225), ("clamp_same", 7200), ("clamp_raised", 24162))],
    ("same-state ratio raised / same", 3.36, "fork", MLP, "ratio_raised_same"),
    ("same-state ordering, seeds", 12, "fork", MLP, "ordered_seeds"),
    ("memorization control, delay share (CE)", 1.003, "memorization_control", {**CE, "time": None},
     "delay_share"),
    ("dose law p = 59: alpha", 0.140, "dose_law", MLP, "alpha"),
    ("dose law p = 59: R^2", 0.991, "dose_law", MLP, "r2"),
    ("dose law p = 59: n", 7, "dose_law", MLP, "n"),
    ("dose law p = 59: delta AIC", 6.40, "dose_law", MLP, "delta_aic"),
    ("dose law p = 43: alpha", 0.173, "dose_law", {"p": 43, "model": "mlp"}, "alpha"),
    ("dose law p = 43: R^2", 0.987, "dose_law", {"p": 43, "model": "mlp"}, "r2"),
    ("dose law p = 43: n", 6, "dose_law", {"p": 43, "model": "mlp"}, "n"),
    ("dose law p = 43: delta AIC", 0.4, "dose_law", {"p": 43, "model": "mlp"}, "delta_aic"),
    ("layer allocation swing", 2.2, "allocation", MLP, "swing"),
    ("MSE: T0", 1175, "recovery", MSE, "T0"),
    ("MSE: T1", 2225, "recovery", {**MSE, **UP}, "T1"),
    *[(f"MSE sweep at rho 1.15, tau {t}: median t_grok", v, "recovery", {**MSE, **UP}, f"sweep[tau={t}]/T")
      for t, v in ((1.15, 2088), (1.3, 1900), (1.5, 1700), (1.7, 1550))],
    ("no-LN transformer: baseline t_grok", 1238, "recovery", TF, "T0"),
    ("no-LN transformer: baseline L at grok", 208, "recovery", TF, "L_baseline"),
    *[(f"no-LN transformer sweep at rho 1.15, tau {t}: t_grok", v, "recovery", {**TF, **UP}, f"sweep[tau={t}]/T")
      for t, v in ((1.0, 16112), (1.15, 9525), (1.3, 6525), (1.5, 4712), (1.7, 3462))],
    ("float64 audit rho 1.15: T32", 12750, "precision", {"p": 59, "rho": 1.15}, "t_grok_float32"),
    ("float64 audit rho 1.15: T64", 12160, "precision", {"p": 59, "rho": 1.15}, "t_grok_float64"),
    ("float64 audit rho 1.15: sc32", 0.0, "precision", {"p": 59, "rho": 1.15}, "sc_float32"),
    ("float64 audit rho 1.15: sc64", 0.0, "precision", {"p": 59, "rho": 1.15}, "sc_float64"),
    ("float64 audit rho 1.25: T32", 25400, "precision", {"p": 59, "rho": 1.25}, "t_grok_float32"),
    ("float64 audit rho 1.25: T64 (not grokked by 60k)", None, "precision", {"p": 59, "rho": 1.25},
     "t_grok_float64"),
    ("float64 audit rho 1.25: sc32", 0.31, "precision", {"p": 59, "rho": 1.25}, "sc_float32"),
    ("float64 audit rho 1.25: sc64", 0.0, "precision", {"p": 59, "rho": 1.25}, "sc_float64"),
]


def _close(a, b) -> bool:
    return isinstance(a, (int, float)) and math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-6)


def pick(rows: list[dict], where: dict, field: str):
    """The field of the first row matching `where` (None: no row, or no such value)."""
    where = {k: v for k, v in where.items() if v is not None}
    row = next((r for r in rows if all(_close(r.get(k), v) if isinstance(v, (int, float)) else r.get(k) == v
                                       for k, v in where.items())), None)
    for part in field.split("/") if row is not None else []:
        if "[" in part:
            name, cond = part[:-1].split("[")
            key, value = cond.split("=")
            row = next((x for x in row.get(name) or [] if _close(x.get(key), float(value))), None)
        else:
            row = row.get(part) if isinstance(row, dict) else None
        if row is None:
            return None
    return row


def experiments(names: list[str], preset: str) -> tuple[list[str], list[str]]:
    """(published, fresh) experiment names of a store: `paper/<folder>`, and the suite's at `preset`."""
    published = sorted(n for n in names if n.startswith("paper/"))
    if preset == "default":
        fresh = [n for n in names if "/" not in n and n != "Default" and ("-" not in n or n.endswith("-default_mse"))]
    else:
        fresh = [n for n in names if "/" not in n and (n.endswith(f"-{preset}") or n.endswith(f"-{preset}_mse"))]
    return published, sorted(fresh)


# quantities that can sit near zero, where a relative difference says nothing (-5430% for a delta AIC of
# -21.3 against 0.4): the table gives their absolute difference instead
NEAR_ZERO = ("delta_aic", "delta_r2_rho")


def rel(value, printed) -> float | None:
    if value is None or printed is None or not isinstance(value, (int, float)) or printed == 0:
        return None
    return (float(value) - printed) / abs(printed)


def diff(value, printed) -> float | None:
    return None if value is None or printed is None or not isinstance(value, (int, float)) else float(value) - printed


def table(published: dict[str, list[dict]], fresh: dict[str, list[dict]], fresh_p: int | None = None) -> list[dict]:
    """One row per figure: quantity, paper, published (and its relative difference), fresh (and its).
    fresh_p: the modulus the fresh runs use for the paper's p = 59 (a reduced scale: `--preset default`);
    figures of other moduli then have no fresh value."""
    out = []
    for quantity, printed, design, where, field in FIGURES:
        a = pick(published.get(design, []), where, field)
        mine = where if fresh_p is None else ({**where, "p": fresh_p} if where.get("p") == 59 else None)
        b = pick(fresh.get(design, []), mine, field) if mine is not None else None
        near_zero = field in NEAR_ZERO
        ci = {f"{side}_ci": pick(rows.get(design, []), w, f"{field}_ci") if w is not None and "/" not in field
              else None for side, rows, w in (("published", published, where), ("fresh", fresh, mine))}
        out.append({"quantity": quantity, "design": design, "paper": printed, "published": a, **ci,
                    "published_rel": None if near_zero else rel(a, printed),
                    "published_diff": diff(a, printed) if near_zero else None, "fresh": b,
                    "fresh_rel": None if near_zero else rel(b, printed),
                    "fresh_diff": diff(b, printed) if near_zero else None})
    return out


def scale_of(fresh: dict[str, list[dict]], preset: str) -> int | None:
    """The modulus standing in for p = 59 at a reduced preset: the most common one among the fresh rows."""
    ps = [r.get("p") for rows in fresh.values() for r in rows if r.get("p") is not None]
    return None if preset == "paper" or not ps else max(set(ps), key=ps.count)


def recovery_table(rows: list[dict]) -> list[str]:
    """Every fresh recovery design at its own settings (modulus, loss, model, the norm-up arm's rho),
    also those with no paper figure to stand beside (a reduced preset's other rho)."""
    def n(v, fmt):
        return "-" if v is None or v != v else format(v, fmt)
    out = ["", "## Fresh recovery designs at their own settings", "",
           "| experiment | design | rho | T0 | T1 | T2 interpolated | recovery [95% CI] | realized (logit-matched) |",
           "|---|---|---|---|---|---|---|---|"]
    for x in rows:
        out.append(f"| {x.get('experiment')} | {x.get('group')} | {n(x.get('rho'), 'g')} | "
                   f"{n(x.get('T0'), '.0f')} | {n(x.get('T1'), '.0f')} | "
                   f"{n(x.get('T2_interpolated'), '.0f')} | {n(x.get('estimate'), '.3f')} "
                   f"[{n(x.get('ci_low'), '.3f')}, {n(x.get('ci_high'), '.3f')}] | "
                   f"{n(x.get('realized_estimate'), '.3f')} |")
    return out if rows else []


def markdown(rows: list[dict], published: list[str], fresh: list[str], notes: list[str],
             fresh_p: int | None = None, fresh_recovery: list[dict] = (), doses: list[dict] = ()) -> str:
    def f(v):
        if v is None:
            return "-"
        return f"{v:.0f}" if isinstance(v, float) and abs(v) >= 100 else (f"{v:.4g}" if isinstance(v, float)
                                                                          else str(v))

    def r(x, source):
        relative, absolute, ci = x[f"{source}_rel"], x.get(f"{source}_diff"), x.get(f"{source}_ci")
        ci = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        return ci + (f" ({relative:+.1%})" if relative is not None else ("" if absolute is None else f" ({absolute:+.3g})"))
    lines = ["# The paper, three ways", "",
             "Each figure of the paper (docs/reproduction.md): the value the paper prints, the value from its published data "
             "(imported), and from fresh runs; in brackets the relative difference from the printed value (the "
             "absolute one for delta AIC and the increment of rho's R^2, which can sit near zero); w_c with its "
             "95% interval (a bootstrap over the control's seeds, docs/statistics.md). "
             "'-': not in that source (not run yet, not released, or not reached).", "",
             f"Published data: {', '.join(published) or 'none imported'}. Fresh runs: {', '.join(fresh) or 'none'}.",
             *([f"Fresh runs at a reduced scale: p = {fresh_p} stands in for the paper's p = 59 (other "
                "moduli: no fresh value), so their differences measure the scale, not a reproduction. A "
                "design that raises the norm by another rho than 1.15 fills no rho-1.15 row."]
               if fresh_p is not None else []),
             "", "| quantity | paper | published data | fresh runs |", "|---|---|---|---|"]
    lines += [f"| {x['quantity']} | {f(x['paper'])} | {f(x['published'])}{r(x, 'published')} | "
              f"{f(x['fresh'])}{r(x, 'fresh')} |" for x in rows]
    lines += recovery_table(list(fresh_recovery))
    if doses:
        lines += [""] + wc.markdown([], [], list(doses))[:-1]
    if notes:
        lines += ["", "## Not computed", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def printed_cells() -> dict[tuple, float]:
    """{(p, loss, model, design_role): the t_grok the paper prints}: the recovery design's T0 (its baseline)
    and T1 (its norm-up arm) among FIGURES."""
    roles = {"T0": "baseline", "T1": "norm_up"}
    return {(w["p"], w["loss"], w["model"], roles[f]): v for _, v, d, w, f in FIGURES
            if d == "recovery" and f in roles and "loss" in w}


def report(uri: str, preset: str, out: Path, json_path: Path) -> dict:
    """`analyses.report paper`: the three-way table over every experiment it finds, each control's w_c with
    its interval, and every fresh clamped cell against the release's dose cells at its held norm."""
    from tracking.store import client
    names = [e.name for e in client(uri).search_experiments()]
    published, fresh = experiments(names, preset)
    merged: dict[str, dict[str, list[dict]]] = {"published": {}, "fresh": {}}
    all_cells: dict[str, list] = {"published": [], "fresh": []}
    notes: list[str] = []
    for side, exps in (("published", published), ("fresh", fresh)):
        for x in exps:
            try:
                members, cells, curves = load(x, uri)
            except ReportError as e:
                notes.append(str(e))
                continue
            results, why = analyse(members, cells)
            results["w_c"] = wc.control_rows(members, cells, curves)
            notes += [f"{x}: {n}" for n in why]
            all_cells[side].append(cells.assign(experiment=x))
            for design, rows in results.items():
                merged[side].setdefault(design, []).extend({**r, "experiment": x} for r in rows)
    if not published and not fresh:
        raise ReportError(f"no paper experiments in {uri}: import the published data (python -m "
                          "tracking.import_npz) or run the suite (python -m interventions.run paper)")
    fresh_p = scale_of(merged["fresh"], preset)
    rows = table(merged["published"], merged["fresh"], fresh_p)
    doses = wc.dose_rows(pd.concat(all_cells["fresh"], ignore_index=True),
                         pd.concat(all_cells["published"], ignore_index=True), printed_cells()) \
        if all_cells["fresh"] and all_cells["published"] else []
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, published, fresh, notes, fresh_p, merged["fresh"].get("recovery", []), doses)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(report_html(md, out, "Report: the paper"))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"figures": rows, "published": published, "fresh": fresh, "fresh_p": fresh_p,
                                     "w_c": {s: merged[s].get("w_c", []) for s in merged},
                                     "dose_law_comparison": doses, "notes": notes},
                                    indent=2, allow_nan=False, default=float))
    return {"results": {"paper": rows}, "notes": notes,
            "files": [str(out / "report.md"), str(out / "report.html"), str(json_path)]}
