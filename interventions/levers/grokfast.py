"""Grokfast (Lee et al., "Grokfast: Accelerated Grokking by Amplifying Slow Gradients", 2024; docs/extending.md):
gradient filters that amplify the slow part of each gradient, per parameter tensor, after the backward
and before the optimizer step:

    grokfast_ema   h <- alpha h + (1 - alpha) g  (h starts at the first g),  g <- g + lamb h
    grokfast_ma    g <- g + lamb mean(the last `window` gradients, this one among them),
                   once `window` gradients are in (before that, g as it is)

Source defaults: alpha 0.98, lamb 2.0 (ema); window 100, lamb 5.0 (ma). A filter's memory (h, or the
window) is its member's state: snapshots, resumes and forks carry it. Only active members hold one: an MA
window is `window` copies of the parameters, which the cohort's other arms should not pay for.

On or off: the defaults switch a filter on, yet an arm that does not name the lever gets exactly those
defaults (vocab.Levers.settings) and must stay untouched. So a filter is on where its settings were given
(the study file's `grokfast_ema: {lamb: 2.0}`, a sweep of one, `Levers.of(grokfast_ema={...})`), which
sets the internal `on`; `lamb: 0` turns it off, and naming the lever with no setting is refused (`check`).
"""
from __future__ import annotations

import torch
from pydantic import Field, model_validator

from interventions.kinds import INTERNAL, Lever, LeverSettings, user_fields
from interventions.registry import register_lever


class FilterSettings(LeverSettings):
    on: bool = Field(False, json_schema_extra=INTERNAL)   # settings were given (module doc)

    @model_validator(mode="before")
    @classmethod
    def _given(cls, data):
        if isinstance(data, dict) and data and "on" not in data:
            return {**data, "on": True}
        return data

    def active(self) -> bool:
        return self.on and self.lamb > 0


class EmaSettings(FilterSettings):
    alpha: float = Field(0.98, ge=0, lt=1, description="the EMA's decay: h <- alpha h + (1 - alpha) g")
    lamb: float = Field(2.0, ge=0, description="amplification: g <- g + lamb h (0: off)")


class MaSettings(FilterSettings):
    window: int = Field(100, ge=1, description="gradients averaged (this one among them); the filter acts once "
                                               "that many are in")
    lamb: float = Field(5.0, ge=0, description="amplification: g <- g + lamb mean(window) (0: off)")


class GradFilter(Lever):
    """What both filters share: the grads hook over a group's members, and their memory.

    Memory lives in slots, one per active member: `slot` (per member, -1: none) and `seen` (per slot: the
    gradients filtered so far) as plain lists, read at every step without a device sync; per parameter a
    (slots, ...) tensor `mem[name]`. A subclass sizes a slot (`_shape`), filters (`_filter`) and says what
    a fork carries (`_own`, `_take`)."""

    hooks = ("grads",)

    @classmethod
    def check(cls, s, arm):
        if not s.on:
            return "lamb", f"name a setting to switch {cls.name} on (lamb: {s.lamb:g} is the default)"
        return None

    @classmethod
    def describe(cls, s, arm, fork_step):
        if not s.active():
            return None
        return f"{cls.name} " + ", ".join(f"{k} {getattr(s, k)}" for k in user_fields(type(s)))

    def __init__(self, settings, cohort, state=None):
        super().__init__(settings, cohort, state)
        on = [i for i, s in enumerate(self.settings) if s.active()]
        self._slot = [-1] * len(self.settings)
        for k, i in enumerate(on):
            self._slot[i] = k
        self._seen = [0] * len(on)
        self.mem = {n: torch.zeros((len(on), *self._shape(on), *p.shape[1:]), dtype=p.dtype, device=p.device)
                    for n, p in cohort.P.items()}
        for i, st in enumerate(state or []):
            if st and self._slot[i] >= 0:   # a forked member brings its filter along
                self._take(self._slot[i], i, st)

    def _shape(self, on: list[int]) -> tuple[int, ...]:
        """A slot's extra leading dims (the window), given the active members."""
        return ()

    def _filter(self, G: dict, j: int, k: int, s, seen: int) -> None:
        """Filter gradient row j of G in place with memory slot k (settings s, `seen` gradients before)."""
        raise NotImplementedError

    def _own(self, k: int, s) -> dict:
        """Slot k's memory as its member carries it into a fork."""
        return {n: m[k].clone() for n, m in self.mem.items()}

    def _take(self, k: int, i: int, st: dict) -> None:
        """A carried member state into slot k."""
        for n, m in self.mem.items():
            m[k].copy_(st[n])
        self._seen[k] = int(st["seen"])

    def grads(self, G: dict, P: dict, rows: slice, step: int) -> None:
        for j, i in enumerate(range(rows.start, rows.stop)):
            k = self._slot[i]
            if k < 0:
                continue   # an inactive member's gradient stays bit for bit as it is
            self._filter(G, j, k, self.settings[i], self._seen[k])
            self._seen[k] += 1

    def state_dict(self) -> dict:
        # beside the parameters' names (no bundled model has a parameter `slot` or `seen`)
        return {"slot": torch.tensor(self._slot, dtype=torch.long),
                "seen": torch.tensor(self._seen, dtype=torch.long), **self.mem}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self._slot, self._seen = state.pop("slot").tolist(), state.pop("seen").tolist()
        self.mem = state

    def member_state(self, i: int) -> dict:
        k = self._slot[i]
        if k < 0:
            return {}
        return {**self._own(k, self.settings[i]), "seen": torch.tensor(self._seen[k])}

    def select(self, keep) -> None:
        super().select(keep)
        old = [self._slot[i] for i in keep.tolist()]
        held = [k for k in old if k >= 0]
        self.mem = {n: m.index_select(0, torch.tensor(held, dtype=torch.long, device=m.device))
                    for n, m in self.mem.items()}
        self._seen = [self._seen[k] for k in held]
        renumber = {k: new for new, k in enumerate(held)}
        self._slot = [renumber.get(k, -1) for k in old]


@register_lever("grokfast_ema")
class GrokfastEMA(GradFilter):
    """h <- alpha h + (1 - alpha) g (h starts at the first g), g <- g + lamb h (module doc)."""

    Settings = EmaSettings

    def _filter(self, G, j, k, s, seen):
        for n, g in G.items():
            h = self.mem[n][k]
            if seen == 0:
                h.copy_(g[j])
            else:
                h.mul_(s.alpha).add_(g[j], alpha=1 - s.alpha)
            g[j].add_(h, alpha=s.lamb)


@register_lever("grokfast_ma")
class GrokfastMA(GradFilter):
    """g <- g + lamb mean(last `window` gradients), once the window is full (module doc). The window is a
    ring: gradient number t (from 0) sits at t mod window."""

    Settings = MaSettings

    def _shape(self, on):
        return (max((self.settings[i].window for i in on), default=1),)   # members' windows may differ

    def _filter(self, G, j, k, s, seen):
        w = s.window
        for n, g in G.items():
            ring = self.mem[n][k, :w]
            ring[seen % w].copy_(g[j])
            if seen + 1 >= w:
                g[j].add_(ring.mean(0), alpha=s.lamb)

    def _own(self, k, s):
        return {n: m[k, :s.window].clone() for n, m in self.mem.items()}   # its own window, not the cohort's

    def _take(self, k, i, st):
        if any(st[n].shape[0] != self.settings[i].window for n in self.mem):
            return   # a window of another length: the filter starts anew
        for n, m in self.mem.items():
            m[k, :st[n].shape[0]].copy_(st[n])
        self._seen[k] = int(st["seen"])
