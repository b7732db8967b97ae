"""w_c in the reports (docs/statistics.md, w_c): each control cell's w_c with its 95% interval, the w_c every
clamped cell held (given, or derived and from which arm), and fresh clamped cells against the release's dose
cells at the same held norm, which tells a w_c sampling effect from an engine that trains differently.

The interval is tracking.conventions.w_c_interval, the one the engine logs beside a derived w_c. It reads
each control seed's norm curve; the paper's release has none (seed means only), so there a seed's curve is
its end-of-run norm times the shape of the seed-mean curve (`curves_from: seed-mean shape`)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analyses.cells import num
from tracking.conventions import grokked, norm_at, norm_curve, w_c, w_c_interval

RESULT = ["t_grok", "grokked", "diverged", "weight_norm_at_grok", "weight_norm_final"]


def _results(g: pd.DataFrame) -> list[dict]:
    return [{k: (None if pd.isna(r.get(k)) else r.get(k)) for k in RESULT} for _, r in g.iterrows()]


def _member_curves(g: pd.DataFrame, curves: pd.DataFrame, results: list[dict]) -> list | None:
    """Each member's norm/total curve with its norm at t_grok added, or None if a member has none stored."""
    out = []
    for (_, m), r in zip(g.iterrows(), results):
        c = curves[(curves["run_id"] == m["run_id"]) & (curves["key"] == "norm/total")]
        if c.empty:
            return None
        out.append(norm_curve(r, list(zip(c["step"].astype(int), c["value"].astype(float)))))
    return out


def _shape_curves(cell: str, curves: pd.DataFrame, results: list[dict], budget: float) -> list | None:
    """The release's stand-in: seed i's curve = its end-of-run norm x m(t) / m(end), m the cell's seed-mean
    norm curve, end the run's end (the last t_grok, or the budget if a seed never grokked)."""
    c = curves[(curves["run_id"] == cell) & (curves["key"] == "norm/total")].sort_values("step")
    ts = [r["t_grok"] for r in results if grokked(r)]
    if len(c) < 2 or not ts:
        return None
    end = budget if any(not grokked(r) and not r.get("diverged") for r in results) else max(ts)
    steps, m = c["step"].to_numpy(float), c["value"].to_numpy(float)
    m_end = float(norm_at(np.column_stack([steps, m]), end))   # past the last logged step: along its last 200
    out = []
    for r in results:
        w = r.get("weight_norm_final")
        w = np.nan if w is None else float(w)
        out.append([(int(s), w * v / m_end) for s, v in zip(steps, m) if s < end] + [(int(end), w)])
    return out


def control_rows(members: pd.DataFrame, cells: pd.DataFrame, curves: pd.DataFrame | None) -> list[dict]:
    """One row per control cell (design_role control): w_c, its 95% interval and what the interval read."""
    curves = curves if curves is not None else pd.DataFrame(columns=["run_id", "key", "step", "value"])
    rows = []
    for _, cell in cells[cells["role"] == "control"].iterrows():
        g = members[members["cell"] == cell["cell"]].sort_values("seed")
        results = _results(g)
        seeds = _member_curves(g, curves, results)
        how = "per-seed curves"
        if seeds is None:
            seeds, how = _shape_curves(cell["cell"], curves, results, float(g["budget"].max())), "seed-mean shape"
        ci = w_c_interval(results, seeds, cell["retire"] or "arm") if seeds is not None else None
        rows.append({"group": cell["group"], "arm": cell["arm"], "p": num(cell["p"]), "loss": cell["loss"],
                     "model": cell["model"], "precision": cell["precision"], "w_c": num(w_c(results)),
                     "ci_low": ci and ci[0], "ci_high": ci and ci[1],
                     "w_c_ci": list(ci) if ci else None, "n_seeds": len(g), "n_grokked": int(g["ok"].sum()),
                     "curves_from": how if ci else "none (no grokking majority or no norm curve)"})
    return rows


def held_rows(cells: pd.DataFrame, controls: list[dict]) -> list[dict]:
    """One row per w_c the clamped cells held (per group): value, how it came (given | derived from an arm
    | as recorded), its interval (the arm params', else a control cell of the same group with that w_c)."""
    held = cells[cells["clamped"] & cells["w_c"].notna()]
    rows = []
    for (group, value), g in held.groupby(["group", "w_c"], sort=True):
        first = g.iloc[0]
        source = str(first.get("w_c_source") or "")
        source = "" if source in ("nan", "none", "None", "<NA>") else source
        lo, hi = num(first.get("w_c_ci_low")), num(first.get("w_c_ci_high"))
        if lo is None:
            match = [c for c in controls if c["group"] == group and c["w_c"] is not None
                     and abs(c["w_c"] - value) <= 1e-4 * abs(value)]
            if match and match[0]["ci_low"] is not None:
                lo, hi = match[0]["ci_low"], match[0]["ci_high"]
                source = source or f"the control {match[0]['arm']}'s (as recorded)"
        rows.append({"group": group, "w_c": float(value), "source": source or "as recorded (no source logged)",
                     "given": source == "given", "ci_low": lo, "ci_high": hi, "arms": sorted(g["arm"])})
    return rows


def dose_points(release: pd.DataFrame, p: float, loss: str, model: str) -> tuple[np.ndarray, np.ndarray]:
    """(held norm W, median t_grok) of the release's dose cells at modulus p (majority cells), sorted by W."""
    d = release[(release["role"] == "dose_cell") & (release["p"] == p) & (release["loss"] == loss)
                & (release["model"] == model) & release["majority"] & np.isfinite(release["W"])]
    d = d.sort_values("W")
    return d["W"].to_numpy(float), d["t_grok"].to_numpy(float)


def predicted(W: np.ndarray, T: np.ndarray, w: float) -> float | None:
    """The t_grok the dose cells give at held norm w: linear in ln t_grok over W, within their range only."""
    if len(W) < 2 or not (W[0] <= w <= W[-1]):
        return None
    return float(np.exp(np.interp(w, W, np.log(T))))


def dose_rows(fresh: pd.DataFrame, release: pd.DataFrame, printed: dict | None = None) -> list[dict]:
    """Every fresh clamped cell (tau 1, no allocation) with release dose cells at its modulus: fresh t_grok,
    the release's own cell of the same role and rho (its w_c is the release's), the paper's printed value
    where `printed` {(p, loss, model, role): t_grok} has one, and the dose cells' t_grok at the fresh held
    norm; `explained` = (predicted - release) / (fresh - release), the share of the fresh-vs-release
    difference that the held norm (so w_c) accounts for."""
    rows = []
    keep = fresh["clamped"] & (fresh["clamp"] != "alloc") & np.isclose(fresh["tau"], 1.0) & fresh["majority"]
    for _, c in fresh[keep].iterrows():
        W, T = dose_points(release, c["p"], c["loss"], c["model"])
        if len(W) < 2:
            continue
        twin = release[(release["role"] == c["role"]) & (release["p"] == c["p"]) & (release["loss"] == c["loss"])
                       & (release["model"] == c["model"]) & np.isclose(release["rho"], c["rho"])
                       & np.isclose(release["tau"], 1.0) & release["majority"]]
        pub = num(twin["t_grok"].iloc[0]) if len(twin) else None
        pred = predicted(W, T, float(c["W"]))
        F = float(c["t_grok"])
        rows.append({"experiment": c.get("experiment"), "arm": c["arm"], "group": c["group"], "p": num(c["p"]),
                     "role": c["role"], "rho": num(c["rho"]), "held_norm": num(c["W"]), "fresh": F,
                     "release": pub, "release_w_c": num(twin["w_c"].iloc[0]) if len(twin) else None,
                     "printed": (printed or {}).get((int(c["p"]), c["loss"], c["model"], c["role"])),
                     "predicted": pred, "fresh_vs_predicted": None if pred is None else F / pred - 1,
                     "fresh_vs_release": None if pub is None else F / pub - 1,
                     "explained": None if pred is None or pub is None or F == pub else (pred - pub) / (F - pub),
                     "dose_range": [float(W[0]), float(W[-1])]})
    return rows


def _n(v, fmt: str) -> str:
    return "-" if v is None or v != v else format(v, fmt)


def markdown(controls: list[dict], held: list[dict], doses: list[dict] = ()) -> list[str]:
    """The report's w_c section (and its dose-law comparison, where there is one)."""
    out = []
    if controls or held:
        out += ["## w_c, the reference norm", "",
                "w_c = median over the control's grokked seeds of each seed's norm at the end of the control's "
                "run (its last grok), a statistic of an order statistic: the 95% interval is a smoothed bootstrap "
                "over the control's seeds that recomputes that end and the median there (docs/statistics.md, "
                "w_c). Every clamped cell moves with w_c through the dose law.", ""]
    if controls:
        out += ["| control | group | w_c [95% CI] | seeds grokked | interval read |", "|---|---|---|---|---|"]
        out += [f"| {c['arm']} | {c['group']} | {_n(c['w_c'], '.2f')} [{_n(c['ci_low'], '.2f')}, "
                f"{_n(c['ci_high'], '.2f')}] | {c['n_grokked']}/{c['n_seeds']} | {c['curves_from']} |" for c in controls]
        out.append("")
    if held:
        out += ["| group | w_c held by the clamped arms [95% CI] | how | arms |", "|---|---|---|---|"]
        out += [f"| {h['group']} | {h['w_c']:.2f}" + (f" [{h['ci_low']:.2f}, {h['ci_high']:.2f}]" if h["ci_low"]
                                                      is not None else "")
                + f" | {'given (a number in the study file or --set)' if h['given'] else h['source']} | "
                f"{', '.join(h['arms'])} |" for h in held]
        out.append("")
    if doses:
        out += ["## Fresh clamped cells against the release's dose law", "",
                "At the fresh cell's held norm (rho x its w_c), the t_grok the release's dose cells give "
                "(interpolated in ln t_grok over their held norms, within their range). The release's own cell "
                "held rho x the release's w_c; `w_c explains` = (predicted - release) / (fresh - release), the share "
                "of the fresh-vs-release difference that the held norm accounts for. A fresh value close to the "
                "prediction means the engine trains as the paper's at the norm it held.", "",
                "| experiment | arm | p | rho | held norm | fresh t_grok | release (its w_c) | printed | "
                "predicted at the held norm | fresh vs predicted | fresh vs release | w_c explains |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {d['experiment'] or '-'} | {d['arm']} | {_n(d['p'], '.0f')} | {_n(d['rho'], 'g')} | "
                f"{_n(d['held_norm'], '.2f')} | {_n(d['fresh'], '.0f')} | "
                + (f"{d['release']:.0f} ({_n(d['release_w_c'], '.2f')})" if d["release"] is not None else "-")
                + f" | {_n(d['printed'], '.0f')} | {_n(d['predicted'], '.0f')} | "
                f"{_n(d['fresh_vs_predicted'], '+.1%')} | {_n(d['fresh_vs_release'], '+.1%')} | "
                f"{_n(d['explained'], '.0%')} |" for d in doses]
        out += [""] + [f"- {d['arm']} (p = {d['p']:.0f}, rho {d['rho']:g}): fresh {d['fresh_vs_release']:+.1%} against "
                       f"the release; the held norm (w_c) accounts for {d['explained']:.0%} of that difference, and at "
                       f"the same held norm fresh and release differ by {d['fresh_vs_predicted']:+.1%}."
                       for d in doses if d["explained"] is not None]
        out.append("")
    return out
