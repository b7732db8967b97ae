"""AdamW over stacked member tensors (docs/reproduction.md, the paper's setup: decoupled weight decay on weight matrices only).

The update is torch.optim.AdamW's (non-amsgrad), run by torch's fused AdamW kernel on the (M, ...)
parameter tensors: every member's row follows its own trajectory; members share lr, betas,
eps, weight decay and the step count (a cohort steps all its members together).
"""
from __future__ import annotations

import torch
from pydantic import Field

from interventions.kinds import Optimizer, OptimizerSettings
from interventions.registry import register_optimizer


class AdamWSettings(OptimizerSettings):
    lr: float = Field(1e-3, gt=0, description="learning rate")
    beta1: float = Field(0.9, ge=0, lt=1, description="decay of the first-moment average (exp_avg)")
    beta2: float = Field(0.999, ge=0, lt=1, description="decay of the second-moment average (exp_avg_sq)")
    eps: float = Field(1e-8, gt=0, description="added to sqrt(second moment) in the denominator")
    weight_decay: float = Field(1.0, ge=0, description="decoupled weight decay, on the weight matrices only")


@register_optimizer("adamw")
class AdamW(Optimizer):
    """Adam with decoupled weight decay on the weight matrices (torch.optim.AdamW's update)."""

    Settings = AdamWSettings
    state_names = ("exp_avg", "exp_avg_sq")

    def step(self, params, grads, state, decay, step):
        """torch's fused AdamW kernel (one pass per tensor), once for the decayed matrices and once for
        the undecayed vectors."""
        st = self.settings
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        groups = [([i for i, d in enumerate(decay) if d], st.weight_decay),
                  ([i for i, d in enumerate(decay) if not d], 0.0)]
        for sel, wd in groups:
            if not sel:
                continue
            steps = [torch.tensor(float(step), device=params[sel[0]].device)] * len(sel)  # read-only
            torch._fused_adamw_([params[i] for i in sel], [grads[i] for i in sel], [exp_avg[i] for i in sel],
                                [exp_avg_sq[i] for i in sel], [], steps, lr=st.lr, beta1=st.beta1,
                                beta2=st.beta2, weight_decay=wd, eps=st.eps, amsgrad=False, maximize=False)
