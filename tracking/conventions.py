"""The paper's measurement conventions (docs/statistics.md), defined once.

Both sides use them: the engine to derive levers from finished arms (w_c, the logit-matched tau) and the
analyses to score the same arms (report, figures). They live here, on the floor both may import (plain
Python, no torch, no MLflow), so an arm matched on one statistic is never scored on another.

- A seed has grokked when it has a t_grok and did not diverge. A cell counts ("majority") when more
  than half of its seeds grok. Medians are over the grokked seeds (the mean of the two middle values
  for an even count).
- Seed-mean curve: at each logged step, the mean over the members that have a value there. With
  `retire: arm` every member of an arm trains until its last seed has grokked, so every point is a
  mean over all of the arm's seeds.
- `l_at_grok` ("L at grok" of a cell): its seed-mean `logit/scale` curve at the logged step nearest the
  cell's median t_grok (a tie goes to the earlier step; values are never interpolated in time).
- `w_c`: the median, over the control's grokked seeds, of each seed's weight_norm at the end of its run
  (`weight_norm_final`). With `retire: arm` that end is the step at which the control's last seed
  grokked, the paper's definition; with `retire: member` it is each seed's own t_grok.
- `alloc_base`: the allocation clamp's base per-layer norms, the same way per layer (`layer_norms_final`).
"""
from __future__ import annotations

import math
import statistics
from typing import Iterable

Curve = list[tuple[int, float]]

# An arm's part in its design (param and tag `design_role`), set in the study file; the analyses find
# designs by these, never by arm names. A sweep over tau adds arms of role tau_sweep. Beyond the paper:
# free_L / held_L / dose_L (the mediator clamp: clamp cells with L free, with L held at L*, and at one rho
# with L* varied), lever_control / lever (an intervention beside the control it is compared with).
DESIGN_ROLES = ("control", "baseline", "norm_up", "tau_sweep", "logit_matched", "fork_trunk", "fork_free",
                "fork_same", "fork_raised", "fork_lowered", "collapse_cell", "dose_cell", "alloc_cell",
                "precision_cell", "free_L", "held_L", "dose_L", "lever_control", "lever")
# t_mem / t_grok: the first evaluated step with train accuracy >= MEM_THRESHOLD / test accuracy >= GROK_THRESHOLD
MEM_THRESHOLD, GROK_THRESHOLD = 0.99, 0.90
RETIRE = ("arm", "member")  # `retire: arm` (the paper's runner) | `member` (each seed at its own t_grok)


def finite(values: Iterable) -> list[float]:
    out = []
    for v in values:
        if v is None:
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x):
            out.append(x)
    return out


def median(values: Iterable) -> float | None:
    """Median of the finite values; None when there are none."""
    vals = finite(values)
    return float(statistics.median(vals)) if vals else None


def grokked(r: dict) -> bool:
    """A member result (engine record or query row) that reached t_grok without diverging."""
    t = r.get("t_grok")
    return bool(finite([t])) and not bool(r.get("diverged")) and r.get("grokked", True) not in (0, False)


def majority(n_grokked: int, n_seeds: int) -> bool:
    return 2 * n_grokked > n_seeds


def seed_mean_curve(curves: Iterable[Curve]) -> Curve:
    """Mean over the members that have a value at each logged step."""
    acc: dict[int, list[float]] = {}
    for pts in curves:
        for step, v in pts:
            acc.setdefault(int(step), []).append(float(v))
    return [(s, math.fsum(v) / len(v)) for s, v in sorted(acc.items())]


def nearest_logged(curve: Curve, t: float | None) -> float | None:
    """Curve value at the logged step nearest t (ties -> the earlier step); None without t or points."""
    if t is None or not math.isfinite(t) or not curve:
        return None
    step, value = min(sorted(curve), key=lambda sv: abs(sv[0] - t))
    return float(value)


def l_at_grok(mean_logit_scale: Curve, t_grok_median: float | None) -> float | None:
    """"L at grok" of a cell (docs/statistics.md): its seed-mean logit/scale at the logged step nearest the median t_grok."""
    return nearest_logged(mean_logit_scale, t_grok_median)


def w_c(results: list[dict]) -> float | None:
    """Median over grokked seeds of weight_norm_final; None without a grokking majority."""
    ok = [r for r in results if grokked(r)]
    if not majority(len(ok), len(results)):
        return None
    return median(r.get("weight_norm_final") for r in ok)


def alloc_base(results: list[dict]) -> dict[str, float] | None:
    """Per-layer median, over the control's grokked seeds, of each seed's layer norm at the end of its run
    (the allocation clamp's base shares, docs/statistics.md); None without a grokking majority."""
    ok = [r for r in results if grokked(r) and r.get("layer_norms_final")]
    if not majority(len(ok), len(results)):
        return None
    return {k: median(r["layer_norms_final"].get(k) for r in ok) for k in ok[0]["layer_norms_final"]}
