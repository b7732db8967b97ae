"""The study's typed names, shared by the spec, the graph, the plan, the engine and the tracker (and free of
torch, so the tracking process need not load it): member keys, fork points, and an arm's levers."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from interventions.registry import LEVERS


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


class Levers(Mapping):
    """An arm's levers: {registered lever name: its settings}; a lever not named takes its defaults.
    Immutable; equal when their settings are."""

    def __init__(self, settings: Mapping[str, Any] | None = None):
        self._d = dict(settings or {})

    @classmethod
    def of(cls, **given) -> "Levers":
        """From study-file keys: a flat lever's settings by their names (`clamp="n0", rho=1.15, tau=1.3`),
        any other lever's by its name (`grokfast_ema={"alpha": 0.98}`)."""
        out: dict[str, dict] = {}
        flat = _flat_settings()
        for k, v in given.items():
            if k in flat:
                out.setdefault(flat[k], {})[k] = v
            elif k in LEVERS:
                out.setdefault(k, {}).update(v.model_dump() if hasattr(v, "model_dump") else dict(v))
            else:
                raise ValueError(f"levers: unknown setting {k!r} (levers: {', '.join(LEVERS.names())}; "
                                 f"flat settings: {', '.join(sorted(flat))})")
        return cls({name: LEVERS.get(name).Settings(**kw) for name, kw in out.items()})

    def __getitem__(self, name: str):
        return self._d[name]

    def __iter__(self):
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def settings(self, name: str):
        """Lever `name`'s settings, its defaults where this arm does not name it."""
        return self._d[name] if name in self._d else LEVERS.get(name).Settings()

    def active(self) -> list[str]:
        return [n for n, s in self._d.items() if s.active()]

    def to_dict(self) -> dict:
        """Plain data in study-file keys (`Levers.of(**levers.to_dict()) == levers`)."""
        out: dict = {}
        for n, s in sorted(self._d.items()):
            d = s.model_dump(mode="json")
            out.update(d) if LEVERS.get(n).flat else out.update({n: d})
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> "Levers":
        return cls.of(**d)

    def __eq__(self, other) -> bool:
        return isinstance(other, Levers) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))

    def __repr__(self) -> str:
        return f"Levers({self.to_dict()})"


def _flat_settings() -> dict[str, str]:
    """Setting name -> its flat lever (a name two flat levers declare is an error)."""
    out: dict[str, str] = {}
    for name, lever in LEVERS.items():
        if lever.flat:
            for f in lever.Settings.model_fields:
                if f in out:
                    raise ValueError(f"levers {out[f]} and {name} are both flat and both declare {f!r}")
                out[f] = name
    return out
