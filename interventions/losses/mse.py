"""Mean squared error on the logits (the paper's MSE variant, docs/reproduction.md): sum over classes of (z / tau - onehot)^2."""
from __future__ import annotations

import torch.nn.functional as F

from interventions.kinds import Loss
from interventions.losses.fused import scaled
from interventions.registry import register_loss


@register_loss("mse")
class MSE(Loss):
    """Sum over classes of (s - onehot)^2, the mean over a member's training pairs."""

    def pair_losses(self, s, y):
        return (s - F.one_hot(y.squeeze(-1), s.shape[-1]).to(s.dtype)).pow(2).sum(-1)

    closed_form = True

    def value_and_dlogits(self, z, y, inv_tau):
        n, inv, s, minus_one = scaled(z, y, inv_tau)
        r = s.scatter_add_(-1, y, minus_one)  # z/tau - onehot
        value = r.pow(2).sum(-1).mean(1)
        return value, r.mul_(inv * (2.0 / n))
