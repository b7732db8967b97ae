"""Derived settings and each arm's resolved levers: w_c, the logit-matched tau and an arm's L at grok from
finished arms' results (statistics: tracking.conventions, the ones the analyses score the arms with), the defaults that
need the fork step (each lever's `resolve`), and `levers`, which the plan hands unchanged to the engine."""
from __future__ import annotations

import numpy as np

from tracking import conventions

from interventions.registry import LEVERS
from interventions.study.graph import ArmNode, Graph
from interventions.study.types import LogitAtGrok, LogitMatched, NormAtGrok
from interventions.vocab import Levers


def _key(lever: str, setting: str) -> str:
    """A setting as the study file writes it: by name for a flat lever, lever.setting otherwise."""
    return setting if LEVERS.get(lever).flat else f"{lever}.{setting}"


def levers(graph: Graph, name: str, derived: dict, fork_step: int | None) -> Levers:
    """Arm `name`'s levers, resolved: derived values (`derive`) in, and what each lever fills once the fork
    step is known (the clamp's first step, its held total rho x w_c)."""
    a = graph.arms[name]
    got: dict[str, dict] = {n: {} for n in a.levers}
    for n, s in a.levers.items():
        for k in (*type(s).model_fields, *(f"{f}_source" for f in type(s).model_fields)):
            if _key(n, k) in derived:
                got[n][k] = derived[_key(n, k)]
    return Levers({n: LEVERS.get(n).resolve(s, got[n], fork_step, a) for n, s in a.levers.items()})


def derive(graph: Graph, name: str, done: dict[str, dict]) -> dict:
    """Resolve the derived settings of arm `name` from finished arms (`done`: arm -> its state entry, with
    `results` and `summary`): {setting (as the study file writes it): value, <setting>_source: how, ...,
    w_c_at_grok, w_c_source, w_c_ci_low, w_c_ci_high}; raises RuntimeError if impossible. Statistics:
    tracking.conventions (the analyses score the arms with the same ones)."""
    a, out = graph.arms[name], {}
    for lever, setting in a.derived:
        spec, key = getattr(a.levers[lever], setting), _key(lever, setting)
        if isinstance(spec, LogitMatched):
            out[key], out[f"{key}_source"] = logit_matched_tau(graph, a, done, f"{lever}.{setting}")
        elif isinstance(spec, NormAtGrok):
            ref = a.derive_from[f"{lever}.{setting}"][0]
            results = done[ref]["results"]
            w = conventions.w_c(results)
            if w is None:
                raise RuntimeError(f"arm {name}: {key} needs {ref} to grok in a majority of seeds; it did not")
            out[key] = float(w)
            out[_key(lever, "alloc_base")] = conventions.alloc_base(results)   # an allocation clamp's base
            out["w_c_at_grok"] = conventions.median(r.get("weight_norm_at_grok") for r in results
                                                    if conventions.grokked(r))
            summary = done[ref]["summary"]   # its interval (summary.w_c_summary), where the source logged one
            out.update(w_c_source=f"derived:median_norm_at_grok({ref})", w_c_ci_low=summary.get("w_c_ci_low"),
                       w_c_ci_high=summary.get("w_c_ci_high"))
        elif isinstance(spec, LogitAtGrok):
            ref = a.derive_from[f"{lever}.{setting}"][0]
            L = _cell_L(done[ref]["summary"])
            if L is None:
                raise RuntimeError(f"arm {name}: {key} needs {ref} to grok in a majority of seeds; it did not")
            out[key], out[f"{key}_source"] = float(L), f"derived:logit_scale_at_grok({ref})"
    return out


def w_c_sources(graph: Graph) -> set[str]:
    """The arms some arm derives w_c from (`{derive: median_norm_at_grok, arm: ...}`): their summaries carry
    w_c and its interval (summary.w_c_summary)."""
    return {graph.arms[a.name].derive_from[f"{lever}.{setting}"][0] for a in graph.arms.values()
            for lever, setting in a.derived if isinstance(getattr(a.levers[lever], setting), NormAtGrok)}


def _cell_L(summary: dict) -> float | None:
    """The cell's "L at grok" (tracking.conventions.l_at_grok), None without a grokking majority."""
    return summary.get("logit_scale_at_grok") if summary.get("majority") else None


def logit_matched_tau(graph: Graph, node: ArmNode, done: dict[str, dict], key: str = "tau.tau") -> tuple[float, str]:
    """Interpolate tau at the target's "L at grok" over the sweep arms' (L at grok, tau) points."""
    target, sweep = node.derive_from[f"{key}@target"][0], node.derive_from[key]
    L_target = _cell_L(done[target]["summary"])
    if L_target is None:
        raise RuntimeError(f"arm {node.name}: {target} did not grok in a majority of seeds; "
                           "no logit_scale to match")
    pts = []
    for s in sweep:
        L = _cell_L(done[s]["summary"])
        if L is not None:
            pts.append((L, float(graph.arms[s].tau)))
    if len(pts) < 2:
        raise RuntimeError(f"arm {node.name}: fewer than two sweep arms grokked in a majority of seeds "
                           f"({len(pts)}); cannot interpolate tau")
    pts.sort()
    L, tau = np.array([x for x, _ in pts]), np.array([t for _, t in pts])
    how = "interpolated"
    if L_target < L[0] or L_target > L[-1]:
        # outside the sweep: extend the nearest segment linearly (said in tau_source)
        i = 0 if L_target < L[0] else len(L) - 2
        value = tau[i] + (tau[i + 1] - tau[i]) * (L_target - L[i]) / (L[i + 1] - L[i])
        how = "extrapolated"
    else:
        value = float(np.interp(L_target, L, tau))
    value = float(value)
    if not value > 0:
        raise RuntimeError(f"arm {node.name}: logit-matched tau came out {value:.3g} (not > 0)")
    src = (f"derived:logit_matched(target={target} L={L_target:.4g}, {how} over "
           f"{len(pts)} sweep arms {','.join(sweep)})")
    return round(value, 6), src
