"""AdamW over stacked member tensors (PAPER.md: decoupled weight decay on weight matrices only).

The update is torch.optim.AdamW's (non-amsgrad), run by torch's fused AdamW kernel on the (M, ...)
parameter tensors: every member's row follows its own trajectory; members share lr, betas,
eps, weight decay and the step count (a cohort steps all its members together).
"""
from __future__ import annotations

import torch


class AdamW:
    def __init__(self, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float):
        self.lr, self.beta1, self.beta2, self.eps, self.weight_decay = lr, beta1, beta2, eps, weight_decay

    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor], exp_avg: list[torch.Tensor],
             exp_avg_sq: list[torch.Tensor], decay: list[bool], step: int) -> None:
        """One update in place; `step` is the 1-based count after this update (bias correction).

        torch's fused AdamW kernel (one pass per tensor), once for the decayed matrices and once for
        the undecayed vectors.
        """
        groups = [([i for i, d in enumerate(decay) if d], self.weight_decay),
                  ([i for i, d in enumerate(decay) if not d], 0.0)]
        for sel, wd in groups:
            if not sel:
                continue
            steps = [torch.tensor(float(step), device=params[sel[0]].device)] * len(sel)  # read-only
            torch._fused_adamw_([params[i] for i in sel], [grads[i] for i in sel], [exp_avg[i] for i in sel],
                                [exp_avg_sq[i] for i in sel], [], steps, lr=self.lr, beta1=self.beta1,
                                beta2=self.beta2, weight_decay=wd, eps=self.eps, amsgrad=False, maximize=False)
