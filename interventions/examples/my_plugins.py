"""A worked example plug-in: one of each kind a study can add, written as any user would write one.

A study file names this module (`plugins: [my_plugins]`, the file beside it); importing it registers:
    lever  embed_gain   init: multiply a fresh member's embedding E by `gain`
    lever  logit_cap    logits: soft-cap the logits, z -> cap * tanh(z / cap)
    lever  grad_ema     grads: g <- g + lamb * h, h <- alpha h + (1 - alpha) g (state h: snapshots, forks);
                        the bundled grokfast_ema is this filter grown up (memory for active members only)
    lever  shrink       after_step: multiply every weight matrix by (1 - rate)
    loss   smoothed_ce  cross-entropy against labels smoothed by `eps`
    optimizer clip      a wrapper: clip each member's gradient norm to `max_norm`, then the base optimizer
    task   plus_one     (a + b + 1) mod p
Settings are pydantic models: validated in the study file, sweepable where numeric, logged as params.
"""
from __future__ import annotations

import torch
from pydantic import Field

from interventions.kinds import Lever, LeverSettings, Loss, LossSettings, PairTask, Wrapper, WrapperSettings
from interventions.registry import register_lever, register_loss, register_optimizer, register_task

__version__ = "1.0"


# ---------------------------------------------------------------- levers, one per hook
class GainSettings(LeverSettings):
    gain: float = Field(1.0, gt=0)

    def active(self) -> bool:
        return self.gain != 1.0


@register_lever("embed_gain")
class EmbedGain(Lever):
    """Scale the embedding at initialisation (Omnigrok's init scale, on one matrix)."""
    Settings = GainSettings
    hooks = ("init",)

    def init(self, P: dict, i: int) -> None:
        P["E"][i].mul_(self.settings[i].gain)


class CapSettings(LeverSettings):
    cap: float = Field(0.0, ge=0)    # 0: no cap

    def active(self) -> bool:
        return self.cap > 0


@register_lever("logit_cap")
class LogitCap(Lever):
    """Soft-cap each member's logits at `cap` before the loss (and in the evaluation)."""
    Settings = CapSettings
    hooks = ("logits",)

    def __init__(self, settings, cohort, state=None):
        super().__init__(settings, cohort, state)
        self.cap = torch.tensor([s.cap for s in self.settings], dtype=cohort.dtype, device=cohort.device)

    def select(self, keep) -> None:
        super().select(keep)
        self.cap = self.cap.index_select(0, keep)

    def logits(self, z: torch.Tensor, rows: slice) -> torch.Tensor:
        cap = self.cap[rows].view(-1, *([1] * (z.dim() - 1)))
        return torch.where(cap > 0, cap * torch.tanh(z / cap.clamp_min(1e-30)), z)   # uncapped: z itself


class EmaSettings(LeverSettings):
    alpha: float = Field(0.98, ge=0, lt=1)
    lamb: float = Field(0.0, ge=0)   # 0: off

    def active(self) -> bool:
        return self.lamb > 0


@register_lever("grad_ema")
class GradEMA(Lever):
    """Amplify the slow part of each gradient: h <- alpha h + (1 - alpha) g (h starts at the first g),
    g <- g + lamb h. Its state h is per member and parameter: snapshots, forks and resumes carry it."""
    Settings = EmaSettings
    hooks = ("grads",)

    def __init__(self, settings, cohort, state=None):
        super().__init__(settings, cohort, state)
        M, names = len(self.settings), cohort.names
        self.h = {n: torch.zeros_like(cohort.P[n]) for n in names}
        self.started = torch.zeros(M, dtype=torch.bool, device=cohort.device)
        for i, st in enumerate(state or []):
            if st:   # a forked member brings its filter along
                for n in names:
                    self.h[n][i] = st[n]
                self.started[i] = bool(st["started"])
        dt = cohort.dtype
        self.alpha = torch.tensor([s.alpha for s in self.settings], dtype=dt, device=cohort.device)
        self.lamb = torch.tensor([s.lamb for s in self.settings], dtype=dt, device=cohort.device)

    def state_dict(self) -> dict:
        return {**self.h, "started": self.started}

    def load_state_dict(self, state: dict) -> None:
        self.started = state["started"]
        self.h = {k: v for k, v in state.items() if k != "started"}

    def select(self, keep) -> None:
        super().select(keep)
        self.h = {n: v.index_select(0, keep) for n, v in self.h.items()}
        self.started = self.started.index_select(0, keep)
        self.alpha, self.lamb = self.alpha.index_select(0, keep), self.lamb.index_select(0, keep)

    def grads(self, G: dict, P: dict, rows: slice, step: int) -> None:
        on = (self.lamb[rows] > 0).tolist()
        for j, i in enumerate(range(rows.start, rows.stop)):
            if not on[j]:
                continue     # an inactive member's gradient stays bit for bit as it is
            first = not bool(self.started[i])
            for n, g in G.items():
                h = self.h[n][i]
                if first:
                    h.copy_(g[j])
                else:
                    h.mul_(self.alpha[i]).add_(g[j], alpha=float(1 - self.alpha[i]))
                g[j].add_(h, alpha=float(self.lamb[i]))
            self.started[i] = True


class ShrinkSettings(LeverSettings):
    rate: float = Field(0.0, ge=0, lt=1)

    def active(self) -> bool:
        return self.rate > 0


@register_lever("shrink")
class Shrink(Lever):
    """After every optimizer step, multiply each weight matrix by (1 - rate)."""
    Settings = ShrinkSettings
    hooks = ("after_step",)

    def __init__(self, settings, cohort, state=None):
        super().__init__(settings, cohort, state)
        self.matrices = cohort.matrices
        self.keep = torch.tensor([1 - s.rate for s in self.settings], dtype=cohort.dtype, device=cohort.device)

    def select(self, keep) -> None:
        super().select(keep)
        self.keep = self.keep.index_select(0, keep)

    def after_step(self, P: dict, rows: slice, step: int) -> None:
        k = self.keep[rows]
        for n in self.matrices:
            P[n][rows].mul_(k.view(-1, *([1] * (P[n].dim() - 1))))


# ---------------------------------------------------------------- a loss
class SmoothSettings(LossSettings):
    eps: float = Field(0.1, ge=0, lt=1)


@register_loss("smoothed_ce")
class SmoothedCE(Loss):
    """(1 - eps) * cross-entropy + eps * the mean over classes of -log softmax (label smoothing)."""
    Settings = SmoothSettings

    def pair_losses(self, s, y):
        logp = torch.log_softmax(s, -1)
        eps = self.settings.eps
        return -(1 - eps) * logp.gather(-1, y).squeeze(-1) - eps * logp.mean(-1)


# ---------------------------------------------------------------- an optimizer wrapper
class ClipSettings(WrapperSettings):
    max_norm: float = Field(1.0, gt=0)


@register_optimizer("clip")
class Clip(Wrapper):
    """Scale each member's gradients so that their joint norm is at most `max_norm`, then `base`'s step."""
    Settings = ClipSettings

    def transform(self, params, grads, step):
        norm = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads))      # (members,)
        scale = (self.settings.max_norm / norm.clamp_min(1e-30)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))


# ---------------------------------------------------------------- a task
@register_task("plus_one")
class PlusOne(PairTask):
    """(a + b + 1) mod p: the paper's task with its labels shifted (the same group; the structure metric
    applies)."""
    cyclic = True

    @classmethod
    def label(cls, a, b, p):
        return (a + b + 1) % p
