"""StableMax cross-entropy (Prieto et al., "Grokking at the Edge of Numerical Stability", ICLR 2025;
docs/extending.md): softmax's exp replaced by a function that grows linearly, so no logit gap rounds a
probability to exactly 1 as fast as exp does (softmax collapse):

    s(x) = x + 1 for x >= 0,  1 / (1 - x) for x < 0
    StableMax(z)_k = s(z_k) / sum_j s(z_j),   loss = -log StableMax(z)_y

The tau lever divides the logits before any loss, so "StableMax with tau" is this loss of z / tau.
The source computes it in float64 (`bits: 64`, the default); either way the loss comes back in the
logits' dtype, the probabilities (sc_frac) stay in the precision they were computed in.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from interventions.kinds import Loss, LossSettings
from interventions.losses.fused import scaled
from interventions.registry import register_loss

DTYPES = {32: torch.float32, 64: torch.float64}


class StableMaxSettings(LossSettings):
    bits: Literal[32, 64] = Field(64, description="float bits StableMax (and sc_frac) is computed in")


def stable_s(x: torch.Tensor) -> torch.Tensor:
    """s(x), elementwise. Each branch sees only its own half of the line (clamped inputs): the branch
    torch.where does not take still gets a gradient (times 0), which must be finite, not inf * 0."""
    return torch.where(x >= 0, x.clamp_min(0) + 1, 1 / (1 - x.clamp_max(0)))


@register_loss("stablemax")
class StableMax(Loss):
    """-log StableMax(s)_y per pair, computed in `bits`; the mean over a member's training pairs."""

    Settings = StableMaxSettings
    pad_logit = float("-inf")   # s(-inf) = 0: a padded class takes no probability and no gradient
    closed_form = True

    def _s(self, z: torch.Tensor) -> torch.Tensor:
        return stable_s(z.to(DTYPES[self.settings.bits]))

    def pair_losses(self, s, y):
        v = self._s(s)
        return (v.sum(-1).log() - v.gather(-1, y).squeeze(-1).log()).to(s.dtype)

    def probs(self, s):
        v = self._s(s)
        return v / v.sum(-1, keepdim=True)

    def value_and_dlogits(self, z, y, inv_tau):
        """The fast paths' closed form, in `bits`: with x = z / tau, d loss / d x_j = s'(x_j) / sum s
        - [j = y] s'(x_y) / s(x_y), where s'(x) = 1 for x >= 0 and s(x)^2 for x < 0."""
        n, inv, x, _ = scaled(z, y, inv_tau)
        x = x.to(DTYPES[self.settings.bits])
        v = stable_s(x)
        total, vy = v.sum(-1, keepdim=True), v.gather(-1, y)
        value = (total.log() - vy.log()).squeeze(-1).mean(1).to(z.dtype)
        ds = torch.where(x >= 0, torch.ones_like(v), v * v)
        g = ds / total
        g.scatter_add_(-1, y, -ds.gather(-1, y) / vy)
        return value, g.mul_(inv.to(g.dtype) / n).to(z.dtype)
