"""Cross-entropy with its softmax in another precision (Prieto et al., "Grokking at the Edge of Numerical
Stability", ICLR 2025; docs/extending.md): the model trains in its own precision, the loss

    -log softmax(s)_y = logsumexp(s) - s_y

is computed with the logits cast to float16, float32 or float64 (`bits`; the source's default 32), and
softmax collapse (sc_frac: a correct-class probability of exactly 1) is counted in that precision: with 5
classes, one logit ahead of 4 equal ones, torch's CPU softmax reaches exactly 1 from a gap of about 10 in
float16, 17 in float32, 37 in float64 (a little more with more classes).

torch's CPU kernels take float16 for every op used here (logsumexp, gather, softmax and their backward:
checked on torch 2.13); like every reduced-precision op they accumulate internally in float32 and round
their results to float16, as a GPU does.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from interventions.kinds import Loss, LossSettings
from interventions.registry import register_loss

DTYPES = {16: torch.float16, 32: torch.float32, 64: torch.float64}


class SoftmaxPrecisionSettings(LossSettings):
    # not `precision`: that is the cohort's (the model's) own
    bits: Literal[16, 32, 64] = Field(32, description="float bits the loss's softmax (and sc_frac) is computed in")


@register_loss("softmax_precision")
class SoftmaxPrecision(Loss):
    """Cross-entropy computed in `bits`, returned in the logits' dtype; the mean over a member's pairs."""

    Settings = SoftmaxPrecisionSettings

    def pair_losses(self, s, y):
        v = s.to(DTYPES[self.settings.bits])
        return (torch.logsumexp(v, -1) - v.gather(-1, y).squeeze(-1)).to(s.dtype)

    def probs(self, s):
        return torch.softmax(s.to(DTYPES[self.settings.bits]), -1)
