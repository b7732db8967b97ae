"""Reading the paper's released metrics: one validated .npz (a cell) -> params, member summaries, curves.

The release (paper-metrics README, docs/reproduction.md) is read into the run schema the engine writes
(docs/study-files.md, where results go), nothing written yet; tracking.import_npz writes it as runs. A file with missing
fields, unexpected shapes or a broken archive raises BadFile, its message saying why.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .conventions import l_at_grok

CURVES = {"train_loss": "train/loss", "test_loss": "test/loss", "train_acc": "train/acc",
          "test_acc": "test/acc", "weight_norm": "norm/total", "wn_E": "norm/E", "wn_W1": "norm/W1",
          "wn_W2": "norm/W2", "logit_scale": "logit/scale", "sc_frac": "softmax/collapse",
          "frac_saturated": "softmax/saturated", "structure": "repr/fourier_top5"}
MODELS = {"mlp": "mlp", "tfnoln": "transformer_noln"}
LOSSES = ("ce", "mse")
# Param keys, identical on every arm and member run (members add `seed`); "none" where not defined.
PARAM_KEYS = ("arm", "p", "model", "loss", "precision", "rho", "tau", "clamp", "gamma", "train_fraction",
              "lr", "weight_decay", "t_int", "w_c", "budget", "eval_every", "fork_from", "fork_step",
              "tau_source", "design", "design_role", "retire")
# file key -> param key, for config scalars copied as they are
CONFIG = {"p": "p", "rho": "rho", "tau": "tau", "gamma": "gamma", "alpha": "train_fraction", "lr": "lr",
          "lam": "weight_decay", "t_int": "t_int", "wc_used": "w_c", "max_steps": "budget",
          "t_fork": "fork_step"}
# Every released run was evaluated every 25 steps, in float32, and a cell's seeds trained until all had
# grokked (paper-metrics README; docs/reproduction.md, "The paper's setup").
RELEASE = {"eval_every": 25, "precision": "float32", "retire": "arm"}
# The release's `arm` field names the same-state fork's arms; its README names the other designs' roles
# by file-name token (ctrl, base, up). The design_role each becomes (tracking.conventions.DESIGN_ROLES):
FORK_ROLES = {"free": "fork_free", "clamp_same": "fork_same", "clamp_raised": "fork_raised",
              "clamp_lowered": "fork_lowered"}
# Fields a design's files omit, filled only where the paper leaves no doubt:
# dose clamps at rho x w_c with tau 1 and no allocation (README); the same-state fork is the main MLP/CE
# setup with four clamp levels and no temperature or allocation (docs/statistics.md, "Same-state fork").
DESIGN_DEFAULTS = {"dose": {"tau": 1.0, "gamma": 0.0},
                   "samestate": {"tau": 1.0, "gamma": 0.0, "model": "mlp", "loss": "ce"}}
# wn_at_grok is "the norm at the end of the run" (README): the engine's weight_norm_final, from which
# conventions.w_c takes w_c; it stays weight_norm_at_grok too, where the dose law reads it
PER_SEED = {"wn_at_grok": "weight_norm_at_grok", "N0": "N0", "target": "target",
            "norm_before_int": "norm_before_int", "norm_after_int": "norm_after_int"}
ARM_SCALARS = ("steps_run", "wall_s")   # run-level facts, logged as arm metrics
SUMMARY_KEYS = ("t_mem", "t_grok", "delay", "grokked", "diverged", "weight_norm_at_grok", "weight_norm_final",
                "N0", "target",
                "norm_before_int", "norm_after_int")


class BadFile(Exception):
    """The .npz cannot be imported; the message says why."""


@dataclass
class Cell:
    """One validated .npz: everything the runs need, nothing written yet."""
    path: Path
    params: dict
    members: list[dict]                    # per seed: summary metrics (absent = not reached)
    curves: dict[str, list[tuple[int, float]]]
    arm_metrics: dict
    description: str
    notes: list[str] = field(default_factory=list)


def _load(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise BadFile("bad archive (not a .npz: no zip header)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise BadFile(f"bad archive ({type(e).__name__}: {e})") from None


def _scalar(d: dict, key: str):
    a = d[key]
    if a.shape != ():
        raise BadFile(f"field {key!r}: expected a scalar, got shape {a.shape}")
    return a.item()


def _per_seed(d: dict, key: str, n: int | None) -> np.ndarray:
    a = d[key]
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        want = f"({n},)" if n is not None else "(S,)"
        raise BadFile(f"field {key!r}: expected shape {want} (one value per seed), got {a.shape}")
    if not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
        raise BadFile(f"field {key!r}: expected numbers, got dtype {a.dtype}")
    return a


def _times(d: dict, weights: Path | None, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    has = [k for k in ("T_mem_per_seed", "T_grok_per_seed") if k in d]
    src = d
    if len(has) < 2 and weights is not None:
        try:
            src = _load(weights)
        except BadFile as e:
            raise BadFile(f"per-seed times missing and {weights.name} unreadable: {e}") from None
        notes.append(f"per-seed times from {weights.name}")
    missing = [k for k in ("T_mem_per_seed", "T_grok_per_seed") if k not in src]
    if missing:
        raise BadFile(f"missing field {missing[0]!r} (per-seed times)")
    t_mem = _per_seed(src, "T_mem_per_seed", None)
    t_grok = _per_seed(src, "T_grok_per_seed", len(t_mem))
    if len(t_mem) == 0:
        raise BadFile("no seeds (T_grok_per_seed is empty)")
    return t_mem.astype(np.int64), t_grok.astype(np.int64)


def _stem_token(stem: str, options) -> str | None:
    tokens = stem.split("_")
    return next((t for t in tokens if t in options), None)


def design_role(design: str, stem: str, arm: str, tau) -> str:
    """The release's cell -> its design_role ("none" where the design gives it none, e.g. free_wd runs)."""
    tokens = stem.split("_")
    if design == "samestate":
        return FORK_ROLES.get(arm, "none")
    if "ctrl" in tokens:
        return "control"
    if design in ("mediation", "transformer"):
        if "base" in tokens:
            return "baseline"
        if "up" in tokens:
            return "norm_up" if tau == 1.0 else "tau_sweep"
    return {"collapse": "collapse_cell", "dose": "dose_cell" if arm == "clamp" else "none",
            "alloc": "alloc_cell"}.get(design, "none")


def read_cell(path: Path, design: str, weights: Path | None = None) -> Cell:
    """Validate one .npz and turn it into params, member summaries, seed-mean curves. Raises BadFile."""
    d = _load(path)
    notes: list[str] = []
    for key in ("p", "arm"):
        if key not in d:
            raise BadFile(f"missing field {key!r}")
    t_mem, t_grok = _times(d, weights, notes)
    n = len(t_mem)
    params = _params(d, path, design, notes)
    members = _members(d, t_mem, t_grok)
    curves = _curves(d)
    arm_metrics = {k: float(_scalar(d, k)) for k in ARM_SCALARS if k in d}
    arm_metrics.update(_medians(members))
    arm_metrics.update(n_seeds=float(n), n_grokked=float((t_grok >= 0).sum()))
    L = l_at_grok(curves.get("logit/scale", []), arm_metrics.get("t_grok"))
    if L is not None:
        arm_metrics["logit_scale_at_grok"] = L
    desc = (f"paper data {design}/{path.name}: {n} seeds, p={params['p']}, {params['model']}, {params['loss']}, "
            f"clamp={params['clamp']}, rho={params['rho']}, tau={params['tau']}, gamma={params['gamma']}"
            + (f", fork at {params['fork_step']}" if params["fork_step"] != "none" else ""))
    return Cell(path, params, members, curves, arm_metrics, desc, notes)


def _params(d: dict, path: Path, design: str, notes: list[str]) -> dict:
    """The arm's params (PARAM_KEYS, "none" where not defined), from the file, its name and the design."""
    defaults = DESIGN_DEFAULTS.get(design, {})
    params = {k: "none" for k in PARAM_KEYS}
    params.update(RELEASE, arm=path.stem, design=design, clamp=str(_scalar(d, "arm")))
    for src, dst in CONFIG.items():
        if src in d:
            params[dst] = _scalar(d, src)
    p = params["p"]
    if isinstance(p, float) and p.is_integer():
        p = params["p"] = int(p)
    if not isinstance(p, int) or p < 3:
        raise BadFile(f"field 'p': expected an integer >= 3, got {p!r}")
    if params["w_c"] == 0.0:   # the release writes 0 where no reference norm was used (free runs)
        params["w_c"] = "none"
    if params["fork_step"] != "none":
        params["fork_from"] = "trunk"
    arch = _scalar(d, "arch") if "arch" in d else _stem_token(path.stem, MODELS) or defaults.get("model")
    if arch is not None and arch not in MODELS and arch not in MODELS.values():
        raise BadFile(f"field 'arch': unknown architecture {arch!r} (known: {', '.join(MODELS)})")
    params["model"] = MODELS.get(arch, arch) or "none"
    loss = _scalar(d, "loss") if "loss" in d else _stem_token(path.stem, LOSSES) or defaults.get("loss")
    if loss is not None and loss not in LOSSES:
        raise BadFile(f"field 'loss': unknown loss {loss!r} (known: {', '.join(LOSSES)})")
    params["loss"] = loss or "none"
    for key in ("tau", "gamma"):
        if params[key] == "none" and key in defaults:
            params[key] = defaults[key]
            notes.append(f"{key}={defaults[key]} (design default)")
    params["design_role"] = design_role(design, path.stem, params["clamp"], params["tau"])
    params["tau_source"] = "given" if "tau" in d else (
        f"default:{design} design" if params["tau"] != "none" else "none")
    return params


def _members(d: dict, t_mem: np.ndarray, t_grok: np.ndarray) -> list[dict]:
    """Per seed: summary metrics (None = not reached, or not recorded)."""
    n = len(t_mem)
    per_seed = {name: _per_seed(d, key, n).astype(float) for key, name in PER_SEED.items() if key in d}
    diverged = [None] * n   # the release records it for some cells only, as one flag or per seed
    if "diverged" in d:
        flag = d["diverged"]
        diverged = ([float(bool(flag.item()))] * n if flag.shape == () else
                    _per_seed(d, "diverged", n).astype(bool).astype(float).tolist())
    members = []
    for s in range(n):
        m = {"t_mem": float(t_mem[s]) if t_mem[s] >= 0 else None,
             "t_grok": float(t_grok[s]) if t_grok[s] >= 0 else None,
             "grokked": float(t_grok[s] >= 0), "diverged": diverged[s]}
        m["delay"] = m["t_grok"] - m["t_mem"] if m["t_grok"] is not None and m["t_mem"] is not None else None
        m.update({name: float(v[s]) for name, v in per_seed.items()})
        if "weight_norm_at_grok" in m:
            m["weight_norm_final"] = m["weight_norm_at_grok"]
        members.append(m)
    return members


def _curves(d: dict) -> dict[str, list[tuple[int, float]]]:
    """Seed-mean curves under the engine's keys, as (step, value) lists."""
    curves = {}
    present = [k for k in CURVES if k in d]
    if present:
        if "steps" not in d:
            raise BadFile(f"curve {present[0]!r} without field 'steps'")
        steps = d["steps"]
        if steps.ndim != 1:
            raise BadFile(f"field 'steps': expected shape (K,), got {steps.shape}")
        for k in present:
            if d[k].shape != steps.shape:
                raise BadFile(f"field {k!r}: expected shape {steps.shape} like 'steps', got {d[k].shape}")
            curves[CURVES[k]] = list(zip(steps.astype(np.int64).tolist(), d[k].astype(float).tolist()))
    return curves


def _medians(members: list[dict]) -> dict:
    """Seed medians over the seeds where each summary is defined (t_grok, delay: grokked seeds only)."""
    out = {}
    for key in SUMMARY_KEYS:
        vals = [m[key] for m in members if m.get(key) is not None]
        if vals:
            out[key] = float(np.median(vals))
    return out

