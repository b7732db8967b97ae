"""The init scale (Liu et al., "Omnigrok: Grokking Beyond Algorithmic Data", ICLR 2023; docs/extending.md): every
weight matrix of a fresh member multiplied by alpha, W <- alpha W, biases and other vectors as drawn. A
large alpha delays grokking, a small one removes it (the source's MNIST setting: alpha 8).
"""
from __future__ import annotations

from pydantic import Field

from interventions.kinds import Lever, LeverSettings
from interventions.registry import register_lever


class InitScaleSettings(LeverSettings):
    alpha: float = Field(1.0, gt=0, description="factor on every weight matrix of a fresh member (1: off)")

    def active(self) -> bool:
        return self.alpha != 1.0


@register_lever("init_scale")
class InitScale(Lever):
    """Scale a fresh member's weight matrices (cohort.matrices) by alpha."""

    Settings = InitScaleSettings
    hooks = ("init",)

    @classmethod
    def check(cls, s, arm):
        if s.active() and arm.forked:
            return "alpha", "init_scale acts at initialisation; a forked arm starts from its parent's weights"
        return None

    def __init__(self, settings, cohort, state=None):
        super().__init__(settings, cohort, state)
        self.matrices = cohort.matrices

    def init(self, P: dict, i: int) -> None:
        alpha = self.settings[i].alpha
        if alpha != 1.0:   # an inactive member is left as drawn
            for n in self.matrices:
                P[n][i].mul_(alpha)
