"""The paper's levers, with per-member values so one cohort mixes arms (PAPER.md).

- temperature tau: logits / tau before the loss; fixed, not a parameter, not in the norm.
- loss: "ce" (cross-entropy) or "mse" (sum over classes of (z/tau - onehot)^2, mean over examples).
- precision: float32 | float64 for the whole cohort.
- Clamp: after every optimizer step t >= t_int, rescale the weight matrices of each clamped member
  (one scalar per member) so that weight_norm equals its target: absolute, or rho * N0 (N0 = the
  member's own weight_norm entering its first clamped step, i.e. at t_int - 1, or at the fork when it
  was forked later than that). The allocation clamp holds every layer at its own target instead.

Allocation (gamma): base per-layer norms b_l (the free control's allocation at the end of its run,
Lever.alloc_base, derived like w_c; default: the member's own allocation entering its first clamped step)
are scaled so that the total is the target T, giving B_l. Then squared norm moves between the embedding
and the readout at fixed total: with theta0 = B_read^2 / (B_E^2 + B_read^2) and theta = clip(theta0 (1 +
gamma), 0.02, 0.98), |W_read|^2 = theta (B_E^2 + B_read^2), |E|^2 = (1 - theta) (B_E^2 + B_read^2), other
layers B_l (read = W2 for the MLP, W_U for the transformer); unclipped, |W_read|^2 = (1 + gamma) B_read^2.
This reproduces the released alloc/ cells (p=59: |W1| stays 43.80 for every gamma).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .vocab import CLAMPS

DTYPES = {"float32": torch.float32, "float64": torch.float64}
LOSSES = ("ce", "mse")
THETA_CLIP = (0.02, 0.98)  # the allocation clamp's bounds on the readout's share (PAPER.md)
_KIND = {"none": 0, "w_c": 1, "n0": 1, "absolute": 1, "alloc": 2}  # engine code: none, total norm, per layer


@dataclass(frozen=True)
class Lever:
    """An arm's levers, resolved once (interventions.derive) and applied unchanged to each of its members.

    clamp: none | w_c (hold rho x w_c) | n0 (hold rho x N0) | absolute (hold `target`) | alloc (per-layer
    allocation gamma at total rho x w_c, or rho x N0 without w_c). `target` is the total norm held when
    known before training (absolute: given; w_c and alloc: rho x w_c, filled in here); None means rho x N0,
    fixed by the engine at the first clamped step (`total`). t_int: first step at which the clamp acts.
    """
    clamp: str = "none"
    rho: float = 1.0
    tau: float = 1.0
    gamma: float = 0.0
    t_int: int = 0
    target: float | None = None
    w_c: float | None = None
    alloc_base: dict[str, float] | None = None  # alloc: base per-matrix norms (the free control's)
    tau_source: str = "given"

    def __post_init__(self):
        def bad(k, why):
            raise ValueError(f"lever.{k}: {why}")
        if self.clamp not in CLAMPS:
            bad("clamp", f"unknown clamp {self.clamp!r} (expected {' | '.join(CLAMPS)})")
        if self.target is None and self.w_c is not None and self.clamp in ("w_c", "alloc"):
            object.__setattr__(self, "target", self.rho * self.w_c)
        if self.clamp in ("absolute", "w_c") and self.target is None:
            bad("target", f"clamp={self.clamp} needs a target > 0 ({'w_c' if self.clamp == 'w_c' else 'target'})")
        if self.target is not None and not self.target > 0:
            bad("target", f"must be > 0, got {self.target}")
        if not (self.tau > 0 and math.isfinite(self.tau)):
            bad("tau", f"must be a finite number > 0, got {self.tau}")
        if not self.rho > 0:
            bad("rho", f"must be > 0, got {self.rho}")
        if not -1.0 < self.gamma < 1.0:
            bad("gamma", f"must be in (-1, 1), got {self.gamma}")
        if self.t_int < 0:
            bad("t_int", f"must be >= 0, got {self.t_int}")

    def total(self, n0: float) -> float:
        """The total weight_norm held, given the norm N0 entering the first clamped step."""
        return self.target if self.target is not None else self.rho * n0

    def params(self) -> dict:
        """The lever's MLflow params (t_int is None for a free arm)."""
        return {"rho": self.rho, "tau": float(self.tau), "clamp": self.clamp, "gamma": self.gamma,
                "t_int": None if self.clamp == "none" else self.t_int, "w_c": self.w_c,
                "tau_source": self.tau_source}


def _scaled(z: torch.Tensor, inv_tau: torch.Tensor) -> torch.Tensor:
    return z * inv_tau.view(-1, *([1] * (z.dim() - 1)))


def pair_losses(s: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-pair loss (...) of post-tau logits s (..., p) with labels y (..., 1), as the evaluation sums it:
    ce as logsumexp(s) - s_y; mse as the sum over classes of (s - onehot)^2."""
    if kind == "ce":
        return torch.logsumexp(s, -1) - s.gather(-1, y).squeeze(-1)
    return (s - F.one_hot(y.squeeze(-1), s.shape[-1]).to(s.dtype)).pow(2).sum(-1)


def loss_values(z: torch.Tensor, y: torch.Tensor, inv_tau: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-member loss (c,) of logits z (c, N, p) with labels y (c, N, 1); differentiable. mse: the mean of
    pair_losses. ce: through log_softmax, which rounds differently from pair_losses' logsumexp form in the
    last bits; the transformer's training (autograd of this) keeps these bits, the evaluation those."""
    s = _scaled(z, inv_tau)
    if kind == "ce":
        return -torch.log_softmax(s, -1).gather(-1, y).squeeze(-1).mean(1)
    return pair_losses(s, y, kind).mean(1)


def loss_and_dlogits(z: torch.Tensor, y: torch.Tensor, inv_tau: torch.Tensor, kind: str
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member loss (c,) and d loss / d z (c, N, p); z is consumed (scaled in place)."""
    n = z.shape[1]
    inv = inv_tau.view(-1, 1, 1)
    s = z.mul_(inv)
    minus_one = torch.full((1, 1, 1), -1.0, dtype=z.dtype, device=z.device).expand_as(y)
    if kind == "ce":
        g = torch._softmax(s, -1, False, out=s)  # in place
        # -log p_y from the softmax itself (one pass fewer than log_softmax + exp); p_y is floored at the
        # smallest normal so an underflowed probability reads as a large finite loss. The value only
        # serves the divergence check: it is NaN exactly when the logits are not finite.
        value = -g.gather(-1, y).squeeze(-1).clamp_min(torch.finfo(g.dtype).tiny).log().mean(1)
        g.scatter_add_(-1, y, minus_one)  # softmax - onehot
        return value, g.mul_(inv / n)
    r = s.scatter_add_(-1, y, minus_one)  # z/tau - onehot
    value = r.pow(2).sum(-1).mean(1)
    return value, r.mul_(inv * (2.0 / n))


def softmax_collapse(s: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(collapsed, saturated) per row of post-tau logits s (..., p) with labels y (..., 1): the correct-class
    probability is exactly 1 in working precision (sc_frac counts these), the largest exceeds 0.999."""
    prob = torch.softmax(s, -1)
    return prob.gather(-1, y).squeeze(-1) == 1.0, prob.amax(-1) > 0.999


def alloc_targets(base: list[float], total: float, gamma: float, i_embed: int, i_read: int) -> list[float]:
    """Per-layer targets (PAPER.md, "Layer allocation"): base per-matrix norms scaled to `total`; the
    readout's share theta0 of the embedding + readout power becomes clip(theta0 (1 + gamma), 0.02, 0.98),
    every other layer keeps its scaled norm."""
    scale = total / math.sqrt(sum(b * b for b in base))
    sq = [(b * scale) ** 2 for b in base]
    rem = sq[i_embed] + sq[i_read]
    theta = min(max(sq[i_read] / rem * (1.0 + gamma), THETA_CLIP[0]), THETA_CLIP[1])
    sq[i_read], sq[i_embed] = theta * rem, (1.0 - theta) * rem
    return [math.sqrt(x) for x in sq]


class Clamp:
    """Per-member clamp state; vectors over the cohort's active members (compacted with them).

    kind: 0 none, 1 total weight_norm, 2 per-layer allocation. target: total target (NaN until resolved);
    layer_target (M, L): per-matrix targets (alloc). first: first step at which the clamp acts.
    """

    def __init__(self, members, matrices: list[str], alloc_layers: tuple[str, str], start_step: int,
                 device: torch.device):
        self.matrices, self.alloc_layers = matrices, alloc_layers
        M, L = len(members), len(matrices)
        lv = [m.lever for m in members]
        self.kind = torch.tensor([_KIND[x.clamp] for x in lv], dtype=torch.long, device=device)
        self.first = torch.tensor([max(x.t_int, start_step + 1) for x in lv], dtype=torch.long, device=device)
        nan = float("nan")
        self.target = torch.tensor([nan if x.target is None else x.target for x in lv], dtype=torch.float64,
                                   device=device)
        self.N0 = torch.full((M,), nan, dtype=torch.float64, device=device)
        self.layer_target = torch.full((M, L), nan, dtype=torch.float64, device=device)

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("kind", "first", "target", "N0", "layer_target")}

    def load(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def select(self, keep: torch.Tensor) -> None:
        for k in ("kind", "first", "target", "N0", "layer_target"):
            setattr(self, k, getattr(self, k).index_select(0, keep))

    def resolve(self, step: int, members, sq: torch.Tensor) -> list[int]:
        """Fix N0 and targets of members whose first clamped step is `step`.

        sq (M, L): squared per-matrix norms entering this step. Returns the rows resolved now.
        """
        rows = ((self.first == step) & (self.kind > 0)).nonzero().flatten().tolist()
        for i in rows:
            lv = members[i].lever
            layer = sq[i].double().sqrt().tolist()
            n0 = math.sqrt(sum(x * x for x in layer))
            self.N0[i] = n0
            total = lv.total(n0)
            self.target[i] = total
            if lv.clamp == "alloc":
                base = [lv.alloc_base[n] for n in self.matrices] if lv.alloc_base else layer
                ie, ir = (self.matrices.index(n) for n in self.alloc_layers)
                self.layer_target[i] = torch.tensor(alloc_targets(base, total, lv.gamma, ie, ir),
                                                    dtype=torch.float64)
        return rows

    def apply(self, step: int, P: dict[str, torch.Tensor], sq: torch.Tensor, rows: slice = slice(None)) -> None:
        """Rescale clamped members' matrices in place. P: the matrices of members `rows`; sq (m, L):
        their squared per-matrix norms after the optimizer step. Unclamped members are multiplied by
        exactly 1 (a bitwise no-op)."""
        kind, first = self.kind[rows], self.first[rows]
        on = (first <= step) & (kind > 0)
        if not bool(on.any()):
            return
        dtype = sq.dtype
        scale_total = self.target[rows].to(dtype) / sq.sum(1).sqrt()
        scale_layer = self.layer_target[rows].to(dtype) / sq.sqrt()
        scale = torch.where((kind == 2).unsqueeze(1), scale_layer, scale_total.unsqueeze(1))
        scale = torch.where(on.unsqueeze(1), scale, torch.ones_like(scale))
        for j, name in enumerate(self.matrices):
            t = P[name]
            t.mul_(scale[:, j].view(-1, *([1] * (t.dim() - 1))))
