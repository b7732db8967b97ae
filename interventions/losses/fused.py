"""What the fast paths' closed forms share: the logits divided by tau in place (z is consumed), and the -1
that turns softmax(s) (CE) or s (MSE) into its gradient when added at each pair's label."""
from __future__ import annotations

import torch


def scaled(z: torch.Tensor, y: torch.Tensor, inv_tau: torch.Tensor):
    """(pairs per member, 1 / tau as (c, 1, 1), s = z / tau in place, -1 shaped like y)."""
    inv = inv_tau.view(-1, 1, 1)
    minus_one = torch.full((1, 1, 1), -1.0, dtype=z.dtype, device=z.device).expand_as(y)
    return z.shape[1], inv, z.mul_(inv), minus_one
