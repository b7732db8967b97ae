"""The study's typed names, shared by the spec, the graph, the plan, the engine and the tracker (and free of
torch, so the tracking process need not load it): clamp kinds, member keys, fork points."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

CLAMPS = ("none", "w_c", "n0", "absolute", "alloc")  # levers.Lever documents each


class MemberKey(NamedTuple):
    """One member of a study: (arm, seed). Its text form `arm/seed` is for display only."""
    arm: str
    seed: int

    def __str__(self) -> str:
        return f"{self.arm}/{self.seed}"


@dataclass(frozen=True)
class ForkPoint:
    """Where children fork from a parent arm: at step `at`, or (all_memorized) at the first eval step >= at
    at which every seed of the parent has memorized."""
    arm: str
    at: int
    when: str  # step | all_memorized

    @property
    def name(self) -> str:
        """File stem and state key, e.g. trunk@800m (m: all_memorized)."""
        return f"{self.arm}@{self.at}" + ("m" if self.when == "all_memorized" else "")

    def label(self, step: int | None = None) -> str:
        return f"{self.arm}@{self.at if step is None else step}"
