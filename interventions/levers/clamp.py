"""The norm clamp (docs/statistics.md, rho): after every optimizer step t >= t_int, rescale each clamped member's weight
matrices (one scalar per member) so that weight_norm equals its target: absolute, rho * w_c, or rho * N0
(N0 = the member's own weight_norm entering its first clamped step, i.e. at t_int - 1, or at the fork when
it was forked later than that).

Allocation (clamp: alloc, gamma): base per-layer norms b_l (the free control's allocation at the end of its
run, alloc_base, derived like w_c; default: the member's own allocation entering its first clamped step)
are scaled so that the total is the target T, giving B_l. Then squared norm moves between the embedding
and the readout at fixed total: with theta0 = B_read^2 / (B_E^2 + B_read^2) and theta = clip(theta0 (1 +
gamma), 0.02, 0.98), |W_read|^2 = theta (B_E^2 + B_read^2), |E|^2 = (1 - theta) (B_E^2 + B_read^2), other
layers B_l (read = W2 for the MLP, W_U for the transformer); unclipped, |W_read|^2 = (1 + gamma) B_read^2.
This reproduces the released alloc/ cells (p=59: |W1| stays 43.80 for every gamma).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator

from interventions.engine.tensors import squared_norms
from interventions.kinds import INTERNAL, Lever, LeverSettings
from interventions.registry import register_lever
from interventions.study.types import PositiveOrDerived, is_derived

CLAMPS = ("none", "w_c", "n0", "absolute", "alloc")
THETA_CLIP = (0.02, 0.98)  # the allocation clamp's bounds on the readout's share (docs/statistics.md)
_KIND = {"none": 0, "w_c": 1, "n0": 1, "absolute": 1, "alloc": 2}  # engine code: none, total norm, per layer


class ClampSettings(LeverSettings):
    """clamp: none | w_c (hold rho x w_c) | n0 (hold rho x N0, the own norm at the fork) | absolute (hold
    `target`) | alloc (per-layer allocation gamma at total rho x w_c, or rho x N0 without w_c). t_int: the
    first clamped step (default: the fork step for a forked arm, else 0)."""
    clamp: Literal[CLAMPS] = Field(  # type: ignore[valid-type]
        "none", description="what the weight norm is held at: none (free), w_c (rho x w_c), n0 (rho x N0, a forked "
                            "arm's own norm entering its first clamped step), absolute (`target`), alloc (rho x "
                            "w_c, or rho x N0 without w_c, allocated across layers by gamma)")
    rho: float = Field(1.0, gt=0, description="the dose: the held norm is rho x w_c or rho x N0 (not used by "
                                              "absolute)")
    gamma: float = Field(0.0, gt=-1, lt=1, description="alloc: the readout's share theta0 of the embedding + "
                                                       "readout squared norm becomes clip(theta0 (1 + gamma), 0.02, "
                                                       "0.98) at a fixed total")
    t_int: int | None = Field(None, ge=0, description="first clamped step (null: the fork step of a forked arm, "
                                                      "else 0)")
    target: float | None = Field(None, gt=0, description="clamp absolute: the weight norm held")
    w_c: PositiveOrDerived | None = Field(None, description="clamp w_c and alloc: the free control's norm at "
                                                            "grok, a number or `{derive: median_norm_at_grok, "
                                                            "arm: <free arm>}`")
    alloc_base: dict[str, float] | None = Field(None, json_schema_extra=INTERNAL)  # the control's layer norms

    @model_validator(mode="after")
    def _held_total(self):
        # w_c and alloc hold rho x w_c once w_c is a number; n0 (and alloc without w_c) fix it at t_int
        if self.target is None and self.clamp in ("w_c", "alloc") and self.w_c is not None \
                and not is_derived(self.w_c):
            object.__setattr__(self, "target", self.rho * self.w_c)
        return self

    def active(self) -> bool:
        return self.clamp != "none"

    def total(self, n0: float) -> float:
        """The total weight_norm held, given the norm N0 entering the first clamped step."""
        return self.target if self.target is not None else self.rho * n0


def alloc_targets(base: list[float], total: float, gamma: float, i_embed: int, i_read: int) -> list[float]:
    """Per-layer targets (docs/statistics.md, "Layer allocation"): base per-matrix norms scaled to `total`; the
    readout's share theta0 of the embedding + readout power becomes clip(theta0 (1 + gamma), 0.02, 0.98),
    every other layer keeps its scaled norm."""
    scale = total / math.sqrt(sum(b * b for b in base))
    sq = [(b * scale) ** 2 for b in base]
    rem = sq[i_embed] + sq[i_read]
    theta = min(max(sq[i_read] / rem * (1.0 + gamma), THETA_CLIP[0]), THETA_CLIP[1])
    sq[i_read], sq[i_embed] = theta * rem, (1.0 - theta) * rem
    return [math.sqrt(x) for x in sq]


@register_lever("clamp")
class Clamp(Lever):
    """Hold the weight norm (module doc); per-member state: kind, first clamped step, total target, N0 and
    per-layer targets (alloc), vectors over the cohort's members (compacted with them)."""

    Settings = ClampSettings
    flat = True
    hooks = ("after_step",)
    fork_state = False   # a forked arm's clamp starts anew (its own N0)

    # ---- the study side
    @classmethod
    def check(cls, s, arm):
        if arm.trunk and s.clamp != "none":
            return "clamp", "a trunk trains free (clamp none); clamp its children"
        if s.clamp == "n0" and not arm.forked:
            return "clamp", "clamp n0 holds a multiple of the norm at the fork: the arm needs `from`"
        if s.clamp == "absolute" and s.target is None:
            return "target", "clamp absolute needs a target weight_norm"
        if s.clamp in ("w_c", "alloc") and s.w_c is None:
            return "w_c", f"clamp {s.clamp} needs w_c (a number or {{derive: median_norm_at_grok, arm: <free arm>}})"
        return None

    @classmethod
    def incomplete(cls, s):
        if s.clamp in ("absolute", "w_c") and s.target is None:
            return f"target: clamp={s.clamp} needs a target > 0 ({'w_c' if s.clamp == 'w_c' else 'target'})"
        return None

    @classmethod
    def derivable(cls, s):
        return ["w_c"] if s.clamp in ("w_c", "alloc") and is_derived(s.w_c) else []

    @classmethod
    def resolve(cls, s, derived, fork_step, arm):
        w_c = derived.get("w_c", s.w_c if s.clamp in ("w_c", "alloc") and not is_derived(s.w_c) else None)
        return ClampSettings(clamp=s.clamp, rho=s.rho, gamma=s.gamma,
                             t_int=0 if s.clamp == "none" else arm.first_step(s.t_int, fork_step),
                             target=s.target if s.clamp == "absolute" else None, w_c=w_c,
                             alloc_base=derived.get("alloc_base") if s.clamp == "alloc" else None)

    @classmethod
    def params(cls, s):
        return {"rho": s.rho, "clamp": s.clamp, "gamma": s.gamma, "t_int": None if s.clamp == "none" else s.t_int,
                "w_c": None if is_derived(s.w_c) else s.w_c}

    @classmethod
    def label(cls, s):
        return "free" if s.clamp == "none" else f"{s.clamp} x{s.rho:.4g}"

    @classmethod
    def describe(cls, s, arm, fork_step):
        start = arm.first_step(s.t_int, fork_step)
        ref = {"n0": "N0", "w_c": "w_c", "alloc": "w_c"}.get(s.clamp)
        if s.clamp == "none":
            return "free (no clamp)"
        if s.clamp == "absolute":
            return f"clamp at weight_norm {s.target:g} from step {start}"
        if s.clamp == "alloc":
            return f"allocation clamp gamma {s.gamma:g} at {s.rho:g} x w_c from step {start}"
        return f"clamp at {s.rho:g} x {ref} from step {start}"

    # ---- the engine side
    def __init__(self, settings, cohort, state=None):
        super().__init__(settings, cohort, state)
        c, dev = cohort, cohort.device
        self.matrices, self.alloc_layers = c.matrices, c.model.alloc_layers
        M, L = len(self.settings), len(self.matrices)
        self.kind = torch.tensor([_KIND[s.clamp] for s in self.settings], dtype=torch.long, device=dev)
        self.first = torch.tensor([max(s.t_int or 0, c.start_step + 1) for s in self.settings], dtype=torch.long,
                                  device=dev)
        nan = float("nan")
        self.target = torch.tensor([nan if s.target is None else s.target for s in self.settings],
                                   dtype=torch.float64, device=dev)
        self.N0 = torch.full((M,), nan, dtype=torch.float64, device=dev)
        self.layer_target = torch.full((M, L), nan, dtype=torch.float64, device=dev)
        self._lists()

    def _lists(self) -> None:
        # plain lists for the per-step check: a tensor op per member step would cost more than the step
        self._kind, self._first = self.kind.tolist(), self.first.tolist()

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("kind", "first", "target", "N0", "layer_target")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
        self._lists()

    def select(self, keep) -> None:
        super().select(keep)
        for k in ("kind", "first", "target", "N0", "layer_target"):
            setattr(self, k, getattr(self, k).index_select(0, keep))
        self._lists()

    def chunk_end(self, t: int) -> int | None:
        later = (self.kind > 0) & (self.first > t + 1)
        return int(self.first[later].min()) - 1 if bool(later.any()) else None   # its first clamped step starts a chunk

    def before_chunk(self, t: int) -> dict[int, dict[str, float]]:
        """Fix N0 and the targets of members whose first clamped step is t + 1 (from their norms now)."""
        rows = ((self.first == t + 1) & (self.kind > 0)).nonzero().flatten().tolist()
        if not rows:
            return {}
        sq = squared_norms(self.cohort.P, self.matrices)
        out = {}
        for i in rows:
            s = self.settings[i]
            layer = sq[i].double().sqrt().tolist()
            n0 = math.sqrt(sum(x * x for x in layer))
            self.N0[i] = n0
            total = s.total(n0)
            self.target[i] = total
            if s.clamp == "alloc":
                base = [s.alloc_base[n] for n in self.matrices] if s.alloc_base else layer
                ie, ir = (self.matrices.index(n) for n in self.alloc_layers)
                self.layer_target[i] = torch.tensor(alloc_targets(base, total, s.gamma, ie, ir), dtype=torch.float64)
            out[i] = {"N0": float(self.N0[i]), "target": float(self.target[i])}
        return out

    def after_step(self, P: dict, rows: slice, step: int) -> None:
        """Rescale clamped members' matrices in place; unclamped members are multiplied by exactly 1 (a
        bitwise no-op)."""
        if not any(self._kind[i] > 0 and self._first[i] <= step for i in range(rows.start, rows.stop)):
            return
        sq = squared_norms(P, self.matrices, rows)
        kind, first = self.kind[rows], self.first[rows]
        on = (first <= step) & (kind > 0)
        dtype = sq.dtype
        scale_total = self.target[rows].to(dtype) / sq.sum(1).sqrt()
        scale_layer = self.layer_target[rows].to(dtype) / sq.sqrt()
        scale = torch.where((kind == 2).unsqueeze(1), scale_layer, scale_total.unsqueeze(1))
        scale = torch.where(on.unsqueeze(1), scale, torch.ones_like(scale))
        for j, name in enumerate(self.matrices):
            t = P[name][rows]
            t.mul_(scale[:, j].view(-1, *([1] * (t.dim() - 1))))
