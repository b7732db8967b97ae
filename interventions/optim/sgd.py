"""SGD over stacked member tensors: torch.optim.SGD's update (no nesterov, no dampening), per element

    g <- g + weight_decay w          (coupled L2, as torch's SGD; on the weight matrices only)
    b <- momentum b + g              (momentum > 0; b starts at the first g)
    w <- w - lr b                    (momentum 0: w <- w - lr g)

Every member's row follows its own trajectory; members share the settings.
"""
from __future__ import annotations

from pydantic import Field

from interventions.kinds import Optimizer, OptimizerSettings
from interventions.registry import register_optimizer


class SGDSettings(OptimizerSettings):
    lr: float = Field(1e-2, gt=0, description="learning rate")
    momentum: float = Field(0.0, ge=0, lt=1, description="b <- momentum b + g (0: plain SGD, no buffer)")
    weight_decay: float = Field(0.0, ge=0, description="coupled L2 (g <- g + weight_decay w), on the weight "
                                                       "matrices only")


@register_optimizer("sgd")
class SGD(Optimizer):
    """torch.optim.SGD's step (module doc); a momentum buffer only where momentum > 0."""

    Settings = SGDSettings

    def __init__(self, settings: SGDSettings | None = None):
        super().__init__(settings)
        self.state_names = ("momentum_buffer",) if self.settings.momentum > 0 else ()

    def step(self, params, grads, state, decay, step):
        st = self.settings
        for i, (w, g) in enumerate(zip(params, grads)):
            if decay[i] and st.weight_decay != 0:
                g = g.add(w, alpha=st.weight_decay)   # a new tensor, as torch's: the caller's g stays
            if st.momentum > 0:
                # torch starts the buffer as a copy of the first g; a zero buffer (every fresh member's)
                # gives the same value, and so does one a member without momentum brought into a fork
                g = state["momentum_buffer"][i].mul_(st.momentum).add_(g)
            w.add_(g, alpha=-st.lr)
