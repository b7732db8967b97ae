"""The output temperature tau (docs/statistics.md, tau): logits / tau before the loss; fixed per arm, not a parameter,
not in the norm. Given, or derived: the logit-matched tau of a sweep (study.derive)."""
from __future__ import annotations

import math

import torch
from pydantic import Field, field_validator

from interventions.kinds import INTERNAL, Lever, LeverSettings
from interventions.registry import register_lever
from interventions.study.types import LogitMatched, PositiveOrDerived, is_derived


class TauSettings(LeverSettings):
    tau: PositiveOrDerived = Field(1.0, description="the output temperature: logits / tau before the loss; a "
                                                    "number or `{derive: logit_matched, ...}`")
    tau_source: str = Field("given", json_schema_extra=INTERNAL)   # given, or how it was derived

    @field_validator("tau")
    @classmethod
    def _finite(cls, v):
        if not is_derived(v) and not math.isfinite(v):
            raise ValueError(f"must be a finite number > 0, got {v}")
        return v

    def active(self) -> bool:
        return is_derived(self.tau) or self.tau != 1.0


def inv_tau(settings: list[TauSettings], dtype: torch.dtype, device) -> torch.Tensor:
    """1 / tau per member (M,); the compiled fast paths take it as it is (they implement this lever)."""
    return 1.0 / torch.tensor([s.tau for s in settings], dtype=dtype, device=device)


@register_lever("tau")
class Tau(Lever):
    """Divide each member's logits by its tau."""

    Settings = TauSettings
    flat = True
    hooks = ("logits",)

    @classmethod
    def resolve(cls, s, derived, fork_step, arm):
        if "tau" in derived:
            return TauSettings(tau=derived["tau"], tau_source=derived.get("tau_source", "derived"))
        return TauSettings(tau=float(s.tau), tau_source="given")

    @classmethod
    def params(cls, s):
        return {"tau": None if is_derived(s.tau) else float(s.tau), "tau_source": s.tau_source}

    @classmethod
    def describe(cls, s, arm, fork_step):
        return f"tau logit-matched to {s.tau.target}" if isinstance(s.tau, LogitMatched) else f"tau {s.tau:g}"

    @classmethod
    def label(cls, s):
        return "tau*" if is_derived(s.tau) else f"tau {s.tau:g}"

    def __init__(self, settings, cohort, state=None):
        super().__init__(settings, cohort, state)
        self.inv = inv_tau(self.settings, cohort.dtype, cohort.device)

    def select(self, keep) -> None:
        super().select(keep)
        self.inv = self.inv.index_select(0, keep)

    def logits(self, z: torch.Tensor, rows: slice) -> torch.Tensor:
        return z * self.inv[rows].view(-1, *([1] * (z.dim() - 1)))
