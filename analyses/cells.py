"""Members -> cell summaries (one row per cell = one arm run).

Conventions, pinned by reproducing the paper's published p = 59 figures from its raw data; the
statistics themselves are tracking.conventions' (the engine derives its levers with the same ones):
- A cell is one arm: the members sharing `parent_run_id` (the arm run), or the `arm` name when absent.
- A seed has grokked when `grokked == 1` and `t_grok` is finite (diverged members never count).
- A cell counts ("majority") when more than half of its seeds grok, and every member run is complete in
  the store (FINISHED, with its summaries); `why_left_out` says which of the two a cell lacks.
- Medians are over the grokked seeds (mean of the two middle values for an even count).
- "L at grok" (conventions.l_at_grok): the arm's seed-mean `logit/scale` curve at the logged step
  nearest the cell's median t_grok (a tie goes to the earlier step); never interpolated in time.
- `fork_delay` = t_grok - fork_step per seed (the same-state design measures delays from the fork).
- W (the dose law's norm) = median `weight_norm_at_grok` over grokked seeds, else rho * w_c.
- A cell's part in its design is its `design_role` param (tracking.conventions.DESIGN_ROLES), never
  its name.
- Params the paper data lacks take the value that the experiment used: tau 1 (no temperature), gamma 0.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from tracking.conventions import l_at_grok, majority, median, nearest_logged

NUMERIC = ["p", "rho", "tau", "gamma", "seed", "fork_step", "t_int", "w_c", "w_c_ci_low", "w_c_ci_high",
           "weight_decay", "budget", "weight_norm_final",
           "t_mem", "t_grok", "delay", "grokked", "diverged", "logit_scale_at_grok", "weight_norm_at_grok",
           "N0", "target"]
TEXT = ["arm", "study", "loss", "model", "precision", "clamp", "design", "tau_source", "design_role", "retire",
        "w_c_source"]
DEFAULTS = {"tau": 1.0, "gamma": 0.0}
UNCLAMPED = {"", "none", "free", "nan", "alloc"}
# the same-state fork's arms by design_role, and the names the report and its JSON give them (docs/statistics.md)
FORK_ROLES = {"fork_lowered": "clamp_lowered", "fork_free": "free", "fork_same": "clamp_same",
              "fork_raised": "clamp_raised"}
FORK_ARMS = tuple(FORK_ROLES.values())
GROUP = ["p", "loss", "model", "precision"]
CURVE_KEYS = ["logit/scale", "softmax/collapse", "test/acc", "train/acc", "repr/fourier_top5", "norm/total"]


def prepare_members(members: pd.DataFrame) -> pd.DataFrame:
    """Typed copy of a members frame (tracking.query.load_members): numbers parsed, text filled, cell ids."""
    m = members.copy()
    for col in NUMERIC:
        m[col] = pd.to_numeric(m[col], errors="coerce") if col in m else np.nan
    for col, value in DEFAULTS.items():
        m[col] = m[col].fillna(value)
    for col in TEXT:
        m[col] = m[col].astype("string").fillna("").astype(str) if col in m else ""
    if "parent_run_id" in m and m["parent_run_id"].notna().all():
        m["cell"] = m["parent_run_id"].astype(str)
    else:
        m["cell"] = m["study"] + "/" + m["arm"]
    m["ok"] = (m["grokked"].fillna(0) == 1) & np.isfinite(m["t_grok"]) & (m["diverged"].fillna(0) != 1)
    m["status"] = m["status"].astype(str) if "status" in m else "FINISHED"
    # every member run of a finished study has `grokked` (0 or 1)
    m["summarized"] = members["grokked"].notna().to_numpy() if "grokked" in members else True
    m["fork_delay"] = m["t_grok"] - m["fork_step"]
    return m


def _curve(curves: pd.DataFrame | None, cell: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    if curves is None or curves.empty:
        return np.array([]), np.array([])
    c = curves[(curves["run_id"] == cell) & (curves["key"] == key)]
    return c["step"].to_numpy(float), c["value"].to_numpy(float)


def mean_member_curves(members: pd.DataFrame, member_curves: pd.DataFrame) -> pd.DataFrame:
    """Seed-mean curves per cell from member curves (fallback when an arm run holds no curves)."""
    cell_of = members.set_index("run_id")["cell"]
    c = member_curves[member_curves["run_id"].isin(cell_of.index)].copy()
    c["run_id"] = c["run_id"].map(cell_of)
    return c.groupby(["run_id", "key", "step"], as_index=False)["value"].mean()


def summarize(members: pd.DataFrame, curves: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per cell: params, n_seeds, n_grokked, majority, medians, L at grok, peak softmax collapse.

    `members` comes from prepare_members; `curves` is long (run_id = cell id, key, step, value).
    """
    rows = []
    for cell, g in members.groupby("cell", sort=False):
        first = g.iloc[0]
        ok = g[g["ok"]]
        t_grok = float(np.median(ok["t_grok"])) if len(ok) else np.nan
        row = {"cell": cell, **{c: first[c] for c in TEXT}, **{c: first[c] for c in
               ["p", "rho", "tau", "gamma", "fork_step", "t_int", "w_c", "w_c_ci_low", "w_c_ci_high", "weight_decay"]}}
        incomplete = _incomplete(g)
        row.update(n_seeds=len(g), n_grokked=len(ok), majority=majority(len(ok), len(g)) and not incomplete,
                   incomplete=incomplete, t_grok=t_grok,
                   t_mem=float(np.nanmedian(g["t_mem"])) if g["t_mem"].notna().any() else np.nan,
                   delay=_median(ok["t_grok"] - ok["t_mem"]), fork_delay=_median(ok["fork_delay"]))
        w = _median(ok["weight_norm_at_grok"])
        row["W"] = w if np.isfinite(w) else row["rho"] * row["w_c"]
        row["L"] = _nan(l_at_grok(list(zip(*_curve(curves, cell, "logit/scale"))), t_grok))
        row["L_seed_median"] = _median(ok["logit_scale_at_grok"])
        sc_steps, sc = _curve(curves, cell, "softmax/collapse")
        row["sc_peak"] = float(np.nanmax(sc)) if len(sc) else np.nan
        row["sc_at_grok"] = _nan(nearest_logged(list(zip(sc_steps, sc)), t_grok))
        rows.append(row)
    cells = pd.DataFrame(rows)
    cells["clamped"] = ~cells["clamp"].str.lower().isin(UNCLAMPED)
    cells["forked"] = np.isfinite(cells["fork_step"])
    cells["role"] = cells["design_role"].replace({"none": "", "nan": "", "None": ""})
    cells["fork_role"] = cells["role"].map(FORK_ROLES).fillna("")
    cells["logit_matched"] = cells["role"] == "logit_matched"
    cells["group"] = [group_label(r) for _, r in cells.iterrows()]
    return cells


def _incomplete(g: pd.DataFrame) -> str:
    """'' when every member run of the cell is FINISHED with its summaries; else what is missing."""
    unfinished = g[g["status"] != "FINISHED"]
    bare = int((~g["summarized"]).sum())
    if not len(unfinished) and not bare:
        return ""
    parts = []
    if len(unfinished):
        states = ", ".join(f"{n} {s}" for s, n in unfinished["status"].value_counts().items())
        parts.append(f"{len(unfinished)} of {len(g)} member runs not FINISHED ({states})")
    if bare:
        parts.append(f"{bare} of {len(g)} without summaries (t_grok, grokked)")
    return " and ".join(parts) + ": its study has not completed in the store (rerun the study's command)"


def why_left_out(row) -> str:
    """Why a cell cannot count in a design: incomplete member runs, or no grokking majority."""
    if row["incomplete"]:
        return row["incomplete"]
    return f"no grokking majority ({int(row['n_grokked'])}/{int(row['n_seeds'])} seeds grokked)"


def left_out(cells: pd.DataFrame, kept: pd.DataFrame, reason=None) -> list[dict]:
    """[{arm, reason}] of the cells not in `kept`; reason(row) or why_left_out."""
    return [{"arm": r["arm"], "reason": (reason or why_left_out)(r)} for _, r in cells.iterrows()
            if r["cell"] not in set(kept["cell"])]


def _nan(x: float | None) -> float:
    return np.nan if x is None else float(x)


def _median(x: pd.Series) -> float:
    return _nan(median(pd.to_numeric(x, errors="coerce")))


def group_label(row) -> str:
    """Human label of a cell's family: 'p=59 ce mlp float32' (blank parts dropped)."""
    p = f"p={int(row['p'])}" if np.isfinite(row["p"]) else ""
    return " ".join(x for x in [p, row["loss"], row["model"], row["precision"]] if x and x != "none")


def seed_matrix(members: pd.DataFrame, cells: list[str], column: str) -> tuple[np.ndarray, np.ndarray]:
    """(cells x seeds) values of `column` over the seeds present in every cell; NaN where a seed did not grok.

    Rows follow `cells`; seeds are paired across cells by their `seed` value (same init in every arm).
    """
    sub = members[members["cell"].isin(cells)]
    seeds = sorted(set.intersection(*[set(sub.loc[sub["cell"] == c, "seed"]) for c in cells]))
    table = sub.assign(v=sub[column].where(sub["ok"])).groupby(["cell", "seed"])["v"].first().unstack()
    table = table.reindex(index=cells, columns=seeds)
    return table.to_numpy(float), np.asarray(seeds, float)


def bootstrap_medians(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Paired bootstrap over seeds: (cells x seeds) -> (cells x n_boot) medians of the resampled seeds.

    One draw of seed indices per resample, shared by every cell (seeds are paired across arms):
    numpy default_rng(seed).integers(0, n, (n_boot, n)). Seeds that did not grok (NaN) are left out of
    each resample's median, as in the point estimate.
    """
    n = values.shape[1]
    if n == 0:  # no seed present in every cell: no interval
        return np.full((values.shape[0], n_boot), np.nan)
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples give NaN, dropped from the CI
        return np.nanmedian(values[:, idx], axis=2)


def percentile_ci(stats: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval (numpy linear interpolation) of bootstrap statistics, NaN resamples dropped."""
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return np.nan, np.nan
    lo, hi = np.percentile(stats, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def num(x) -> float | None:
    """Plain float for the JSON; None for NaN or missing (JSON has no NaN)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None
