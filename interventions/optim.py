"""AdamW over stacked member tensors (PAPER.md: decoupled weight decay on weight matrices only).

The update is torch.optim.AdamW's (default, non-amsgrad) arithmetic, applied with _foreach ops to the
(M, ...) parameter tensors: every member's row follows its own trajectory; members share lr, betas,
eps, weight decay and the step count (a cohort steps all its members together).
"""
from __future__ import annotations

import math

import torch


class AdamW:
    def __init__(self, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float):
        self.lr, self.beta1, self.beta2, self.eps, self.weight_decay = lr, beta1, beta2, eps, weight_decay

    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor], exp_avg: list[torch.Tensor],
             exp_avg_sq: list[torch.Tensor], decay: list[bool], step: int) -> None:
        """One update in place; `step` is the 1-based count after this update (bias correction)."""
        decayed = [p for p, d in zip(params, decay) if d]
        if decayed and self.weight_decay:
            torch._foreach_mul_(decayed, 1.0 - self.lr * self.weight_decay)
        torch._foreach_lerp_(exp_avg, grads, 1.0 - self.beta1)
        torch._foreach_mul_(exp_avg_sq, self.beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1.0 - self.beta2)
        step_size = self.lr / (1.0 - self.beta1**step)
        bias_correction2_sqrt = math.sqrt(1.0 - self.beta2**step)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, exp_avg, denom, -step_size)
