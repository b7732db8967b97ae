"""Cross-entropy of softmax(z / tau) (docs/reproduction.md, the paper's setup)."""
from __future__ import annotations

import torch

from interventions.kinds import Loss
from interventions.losses.fused import scaled
from interventions.registry import register_loss


@register_loss("ce")
class CrossEntropy(Loss):
    """-log softmax(s)_y, the mean over a member's training pairs."""

    pad_logit = float("-inf")   # exp(-inf) = 0: a padded class takes no probability

    def value(self, s, y):
        # through log_softmax, which rounds differently from pair_losses' logsumexp form in the last bits;
        # the transformer's training (autograd of this) keeps these bits, the evaluation those
        return -torch.log_softmax(s, -1).gather(-1, y).squeeze(-1).mean(1)

    def pair_losses(self, s, y):
        return torch.logsumexp(s, -1) - s.gather(-1, y).squeeze(-1)

    closed_form = True

    def value_and_dlogits(self, z, y, inv_tau):
        n, inv, s, minus_one = scaled(z, y, inv_tau)
        g = torch._softmax(s, -1, False, out=s)  # in place
        # -log p_y from the softmax itself (one pass fewer than log_softmax + exp); p_y is floored at the
        # smallest normal so an underflowed probability reads as a large finite loss. The value only
        # serves the divergence check: it is NaN exactly when the logits are not finite.
        value = -g.gather(-1, y).squeeze(-1).clamp_min(torch.finfo(g.dtype).tiny).log().mean(1)
        g.scatter_add_(-1, y, minus_one)  # softmax - onehot
        return value, g.mul_(inv / n)
