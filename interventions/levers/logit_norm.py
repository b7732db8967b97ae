"""do(L), a mediator clamp on the logit scale (this toolkit; docs/statistics.md, do(L)): from step t_int on, divide each
member's logits by c = L_raw / L*, where L_raw is the member's mean over its TRAINING pairs of |z|_2 and
L* = rho x target; c is a constant in the gradient (an adaptive temperature, like tau). The held quantity
is therefore the training pairs' logit scale, the one the step sees: it equals L* at every step whatever
the weight norm does. The logged `logit/scale` stays the mean over ALL pairs (with the same c), and
`logit/train_scale` logs the held one beside it. target: a number, or an arm's L at grok
(`{derive: logit_scale_at_grok, arm: base}`), derived like w_c.
"""
from __future__ import annotations

import torch
from pydantic import Field

from interventions.kinds import INTERNAL, Lever, LeverSettings
from interventions.registry import register_lever
from interventions.study.types import PositiveOrDerived, is_derived


class LogitNormSettings(LeverSettings):
    target: PositiveOrDerived | None = Field(None, description="L* / rho: a number or an arm's L at grok "
                                             "(`{derive: logit_scale_at_grok, arm: <arm>}`); null: off")
    rho: float = Field(1.0, gt=0, description="the dose in L alone: L* = rho x target")
    t_int: int | None = Field(None, ge=0, description="first held step (null: the fork step of a forked arm, "
                                                      "else 0)")
    target_source: str = Field("given", json_schema_extra=INTERNAL)

    def active(self) -> bool:
        return self.target is not None

    def held(self) -> float:
        return self.rho * self.target


@register_lever("logit_norm")
class LogitNorm(Lever):
    """Hold the training pairs' logit scale at L* (module doc)."""

    Settings = LogitNormSettings
    hooks = ("logits",)
    fork_state = False   # nothing to carry: c is recomputed from the logits at every step

    @classmethod
    def check(cls, s, arm):
        if arm.trunk and s.active():
            return "target", "a trunk trains free; hold L in the arms that fork from it"
        return None

    @classmethod
    def resolve(cls, s, derived, fork_step, arm):
        if not s.active():
            return s
        target = derived.get("target", s.target)
        return LogitNormSettings(target=target, rho=s.rho, t_int=arm.first_step(s.t_int, fork_step),
                                 target_source=derived.get("target_source", s.target_source))

    @classmethod
    def params(cls, s):
        return {"logit_norm.target": None if s.target is None or is_derived(s.target) else float(s.target),
                "logit_norm.rho": s.rho, "logit_norm.t_int": s.t_int if s.active() else None,
                "logit_norm.L_star": s.held() if s.active() and not is_derived(s.target) else None,
                "logit_norm.target_source": s.target_source if s.active() else None}

    @classmethod
    def describe(cls, s, arm, fork_step):
        if not s.active():
            return None
        what = f"{s.target.arm}'s L at grok" if is_derived(s.target) else f"{s.target:g}"
        scale = f"{s.rho:g} x " if s.rho != 1 else ""
        return f"logit scale held at {scale}{what} from step {arm.first_step(s.t_int, fork_step)}"

    @classmethod
    def label(cls, s):
        return f"L* x{s.rho:g}" if s.active() else None

    # ---- the engine side
    def __init__(self, settings, cohort, state=None):
        super().__init__(settings, cohort, state)
        dev = cohort.device
        self.L_star = torch.tensor([s.held() if s.active() else 1.0 for s in self.settings], dtype=cohort.dtype,
                                   device=dev)
        self.first = torch.tensor([max(s.t_int or 0, cohort.start_step + 1) if s.active() else -1
                                   for s in self.settings], dtype=torch.long, device=dev)
        self.on = torch.zeros(len(self.settings), dtype=torch.bool, device=dev)
        self.eval_factor: torch.Tensor | None = None

    def select(self, keep) -> None:
        super().select(keep)
        self.L_star, self.first, self.on = (t.index_select(0, keep) for t in (self.L_star, self.first, self.on))

    def chunk_end(self, t: int) -> int | None:
        later = self.first > t + 1
        return int(self.first[later].min()) - 1 if bool(later.any()) else None   # t_int starts a chunk

    def before_chunk(self, t: int) -> dict:
        self.on = (self.first >= 0) & (self.first <= t + 1)
        return {}

    def _factor(self, L_raw: torch.Tensor, rows: slice) -> torch.Tensor:
        """1 / c per member of `rows` (exactly 1 where not held: those logits pass bit for bit)."""
        return torch.where(self.on[rows], self.L_star[rows] / L_raw, torch.ones_like(L_raw))

    def logits(self, z: torch.Tensor, rows: slice) -> torch.Tensor:
        """Training: z (c, N, C) holds the members' training pairs, so L_raw is read off z itself."""
        L_raw = torch.linalg.vector_norm(z.detach(), dim=-1).mean(-1)
        return z * self._factor(L_raw, rows).view(-1, 1, 1)

    def before_eval(self) -> dict:
        """c from the training pairs' logits at the parameters now (the evaluation's blocks hold all pairs)."""
        c = self.cohort
        before = c.hooked("logits")[:c.hooked("logits").index(self)]   # the levers the step applies first (tau)
        L_raw = torch.empty(len(c.members), dtype=c.dtype, device=c.device)
        for b in c.backend.batches:
            sl = slice(b.s, b.e)
            z = c.model.forward({k: v[sl] for k, v in c.P.items()}, b)
            for lv in before:
                z = lv.logits(z, sl)
            L_raw[sl] = torch.linalg.vector_norm(z, dim=-1).mean(-1)
        self.eval_factor = self._factor(L_raw, slice(None))
        return {"logit/train_scale": L_raw * self.eval_factor}

    def eval_logits(self, z: torch.Tensor, rows: slice) -> torch.Tensor:
        return z * self.eval_factor[rows].view(-1, *([1] * (z.dim() - 1)))
