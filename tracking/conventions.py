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
- `w_c_interval`: w_c's 95% interval, a smoothed bootstrap over the control's seeds that recomputes the end
  of the run (the last grok among the drawn seeds) and the median norm there from the per-seed norm curves.
"""
from __future__ import annotations

import math
import statistics
import warnings
from typing import Iterable

import numpy as np

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


# w_c's bootstrap: resamples, RNG seed and level, the same for the engine's arm params and the reports
W_C_BOOT = {"n_boot": 4000, "seed": 0, "level": 0.95}


def w_c_interval(results: list[dict], curves: list[Curve], retire: str = "arm", n_boot: int = W_C_BOOT["n_boot"],
                 seed: int = W_C_BOOT["seed"], level: float = W_C_BOOT["level"]) -> tuple[float, float] | None:
    """w_c's percentile interval (docs/statistics.md, w_c): `results` the control's member results, `curves`
    each member's norm curve [(step, weight_norm)] up to the end of its run; None without a grokking majority.

    Each resample draws n seeds with replacement (numpy default_rng(seed)). With `retire: arm` the run of the
    drawn seeds ends at their last t_grok (plus the control's margin), or at the control's own end if a drawn
    seed never grokked; each drawn grokked seed's norm is read there off its curve (linear between logged
    steps; past the curve's end, along its last 200 steps). With `retire: member` a seed's norm is its own
    end-of-run value. The bootstrap is smoothed (Gaussian kernel, Silverman's bandwidth, on the drawn t_grok
    and on the drawn norms): the plain bootstrap never draws a run longer than the observed one, so it misses
    the last grok's spread (it covered a simulated control's w_c 89% of the time for a nominal 95%).
    """
    n = len(results)
    ok = np.array([grokked(r) for r in results])
    if not majority(int(ok.sum()), n) or len(curves) != n:
        return None
    holds = np.array([not g and not r.get("diverged") for g, r in zip(ok, results)])   # never grokked: runs on
    t = np.array([float(r["t_grok"]) if g else np.nan for g, r in zip(ok, results)])
    pts = [np.array(sorted(dict(c).items()), float).reshape(-1, 2) for c in curves]
    run_end = max((p[-1, 0] for p in pts if len(p)), default=np.nanmax(t))
    margin = 0.0 if holds.any() else max(run_end - np.nanmax(t), 0.0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_boot, n))
    if retire == "member":
        vals = np.array([norm_at(p, p[-1, 0]) if len(p) else np.nan for p in pts])[idx]
    else:
        td = t[idx]
        end = np.nanmax(td + _bandwidth(td)[:, None] * rng.standard_normal(td.shape), axis=1) + margin
        end = np.where(holds[idx].any(axis=1), run_end, end)
        at = np.array([norm_at(p, end) if len(p) else np.full(n_boot, np.nan) for p in pts])   # (seed, draw)
        vals = at[idx, np.arange(n_boot)[:, None]]
    vals = np.where(ok[idx], vals, np.nan)
    vals = vals + _bandwidth(vals)[:, None] * rng.standard_normal(vals.shape)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # a draw without a grokked seed: NaN, dropped below
        stat = np.nanmedian(vals, axis=1)
    stat = stat[(2 * ok[idx].sum(axis=1) > n) & np.isfinite(stat)]
    if not len(stat):
        return None
    lo, hi = np.percentile(stat, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _bandwidth(x: np.ndarray) -> np.ndarray:
    """Silverman's rule per row (NaN left out): 0.9 min(sd, IQR / 1.34) m^-1/5; sd where the IQR is 0."""
    m = np.isfinite(x).sum(axis=1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # a row with < 2 values: no spread, no smoothing
        sd = np.nanstd(x, axis=1, ddof=1)
        q75, q25 = (_row_quantile(x, m, q) for q in (0.75, 0.25))
        spread = np.where(q75 > q25, np.minimum(sd, (q75 - q25) / 1.34), sd)
        h = 0.9 * spread * np.maximum(m, 1) ** -0.2
    return np.where(np.isfinite(h) & (m > 1), h, 0.0)


def _row_quantile(x: np.ndarray, m: np.ndarray, q: float) -> np.ndarray:
    """np.nanpercentile(x, 100 q, axis=1) (linear), ~100x faster on many short rows; m: finite values per row."""
    srt = np.sort(x, axis=1)   # NaN last
    pos = q * np.maximum(m - 1, 0)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, np.maximum(m - 1, 0))
    rows = np.arange(len(x))
    return srt[rows, lo] + (pos - lo) * (srt[rows, hi] - srt[rows, lo])


def norm_at(pts: np.ndarray, x):
    """A norm curve (sorted (step, value) rows) at step(s) x: linear between points; past the last point,
    along the line through it and the point about 200 steps earlier (the first point if the curve is shorter)."""
    steps, v = pts[:, 0], pts[:, 1]
    x = np.asarray(x, float)
    inside = np.interp(x, steps, v)
    if len(steps) < 2:
        return inside
    j = max(int(np.searchsorted(steps, steps[-1] - 200, side="right")) - 1, 0)
    j = min(j, len(steps) - 2)
    slope = (v[-1] - v[j]) / (steps[-1] - steps[j])
    return np.where(x > steps[-1], v[-1] + slope * (x - steps[-1]), inside)


def norm_curve(r: dict, curve: Curve) -> Curve:
    """A member's norm curve as the engine logs it (every log_every steps and its last step) with its exact
    norm at its own t_grok added (`weight_norm_at_grok`, read at that evaluation): the points w_c_interval
    reads between."""
    extra = [(int(r["t_grok"]), float(r["weight_norm_at_grok"]))] if grokked(r) and finite(
        [r.get("weight_norm_at_grok")]) else []
    return sorted({**dict(curve), **dict(extra)}.items())
