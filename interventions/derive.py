"""Derived levers and each arm's resolved lever record: w_c and the logit-matched tau from finished arms'
results (statistics: tracking.conventions, the ones the analyses score the arms with), the t_int default,
and `lever`, which the plan hands unchanged to the engine."""
from __future__ import annotations

import numpy as np

from tracking import conventions

from .graph import ArmNode, Graph
from .levers import Lever
from .schema import LogitMatched, NormAtGrok


def lever(graph: Graph, name: str, derived: dict, fork_step: int | None) -> Lever:
    """Arm `name`'s levers, resolved: derived values (`derive`) in, the clamp's first step (ArmNode.clamp_start)
    at the fork step now known, the held total rho x w_c filled in by the Lever."""
    a = graph.arms[name]
    w_c = derived.get("w_c", a.w_c if isinstance(a.w_c, (int, float)) else None)
    return Lever(clamp=a.clamp, rho=a.rho, tau=float(derived.get("tau", a.tau)), gamma=a.gamma,
                 t_int=0 if a.clamp == "none" else a.clamp_start(fork_step),
                 target=a.target if a.clamp == "absolute" else None, w_c=w_c,
                 alloc_base=derived.get("alloc_base"), tau_source=derived.get("tau_source", a.tau_source))


def derive(graph: Graph, name: str, done: dict[str, dict]) -> dict:
    """Resolve the derived levers of arm `name` from finished arms (`done`: arm -> its state entry, with
    `results` and `summary`). Returns {lever: value, ...} with how each was derived; raises RuntimeError
    if impossible. Statistics: tracking.conventions (the analyses score the arms with the same ones)."""
    a, out = graph.arms[name], {}
    if isinstance(a.tau, LogitMatched):
        out["tau"], out["tau_source"] = logit_matched_tau(graph, a, done)
    if isinstance(a.w_c, NormAtGrok):
        ref = a.derive_from["w_c"][0]
        results = done[ref]["results"]
        w = conventions.w_c(results)
        if w is None:
            raise RuntimeError(f"arm {name}: w_c needs {ref} to grok in a majority of seeds; it did not")
        out["w_c"] = float(w)
        out["w_c_at_grok"] = conventions.median(r.get("weight_norm_at_grok") for r in results
                                                if conventions.grokked(r))
        if a.clamp == "alloc":          # the control's own allocation is the base the gammas move from
            out["alloc_base"] = conventions.alloc_base(results)
    return out


def _cell_L(summary: dict) -> float | None:
    """The cell's "L at grok" (tracking.conventions.l_at_grok), None without a grokking majority."""
    return summary.get("logit_scale_at_grok") if summary.get("majority") else None


def logit_matched_tau(graph: Graph, node: ArmNode, done: dict[str, dict]) -> tuple[float, str]:
    """Interpolate tau at the target's "L at grok" over the sweep arms' (L at grok, tau) points."""
    target, sweep = node.derive_from["tau_target"][0], node.derive_from["tau"]
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
