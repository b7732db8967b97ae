"""The study file's schema (pydantic): `Study` and its parts, and `SpecError` for bad input.

A study file has `study` (its name), `defaults` (task, model, optimizer, levers, budgets, seeds), `arms`
(a list; each may fork `from: {arm, at}`, sweep a lever, or take a lever derived from other arms' results)
and `presets` (named partial documents overlaid on the file; applied by spec.load_study).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from tracking.conventions import DESIGN_ROLES, GROK_THRESHOLD, MEM_THRESHOLD

from .vocab import CLAMPS

Role = Literal[DESIGN_ROLES]  # type: ignore[valid-type]
Retire = Literal["arm", "member"]

class SpecError(Exception):
    """Bad study input: one message naming the file, the key path and the reason."""

    def __init__(self, file: str | Path, path: str, reason: str):
        self.file, self.path, self.reason = str(file), path, reason
        super().__init__(f"{self.file}: {path}: {reason}" if path else f"{self.file}: {reason}")


# ---------------------------------------------------------------- schema
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class LogitMatched(Strict):
    """tau at which the sweep's "L at grok" equals `target`'s (tracking.conventions.l_at_grok), interpolated."""
    derive: Literal["logit_matched"]
    sweep: list[str] = Field(min_length=1)   # arms of a tau sweep (an arm with a sweep stands for all of them)
    target: str                              # arm whose median logit_scale at grok is matched


class NormAtGrok(Strict):
    """w_c of a free control arm: median over its grokked seeds of the norm at the end of its run
    (tracking.conventions.w_c; PAPER.md)."""
    derive: Literal["median_norm_at_grok"]
    arm: str


Derived = Annotated[Union[LogitMatched, NormAtGrok], Field(discriminator="derive")]


def _number_or_derived(v: Any) -> str:
    return "derived" if isinstance(v, dict) else "number"


PositiveOrDerived = Annotated[
    Union[Annotated[float, Field(gt=0), Tag("number")], Annotated[Derived, Tag("derived")]],
    Discriminator(_number_or_derived)]
UNION_TAGS = {"number", "derived", "logit_matched", "median_norm_at_grok"}


class Task(Strict):
    p: int | list[int] = 59                       # a list replicates the whole graph per modulus
    op: Literal["add", "sub", "mul", "div"] = "add"
    train_fraction: float = Field(0.4, gt=0, lt=1)

    @field_validator("p")
    @classmethod
    def _p(cls, v):
        ps = v if isinstance(v, list) else [v]
        if not ps:
            raise ValueError("needs at least one modulus")
        for x in ps:
            if x < 3:
                raise ValueError(f"modulus p must be >= 3 (got {x})")
        if len(set(ps)) != len(ps):
            raise ValueError(f"repeated modulus in {ps}")
        return v

    @model_validator(mode="after")
    def _split(self):
        for p in self.p if isinstance(self.p, list) else [self.p]:
            if self.op == "div" and any(p % k == 0 for k in range(2, int(p ** 0.5) + 1)):
                raise ValueError(f"op 'div' needs a prime p (b must have an inverse mod p), got p={p}")
            pairs = p * (p - 1) if self.op == "div" else p * p
            n = round(self.train_fraction * pairs)
            if not 0 < n < pairs:
                raise ValueError(f"train_fraction {self.train_fraction} of the {pairs} pairs at p={p} "
                                 "leaves an empty train or test split")
        return self


class Model(Strict):
    kind: Literal["mlp", "transformer", "transformer_noln"] = "mlp"
    d_embed: int = Field(128, ge=1)
    d_hidden: int = Field(256, ge=1)
    d_model: int = Field(128, ge=1)
    n_heads: int = Field(4, ge=1)
    d_mlp: int = Field(512, ge=1)


class Optimizer(Strict):
    lr: float = Field(1e-3, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(1.0, ge=0)


ClampKind = Literal[CLAMPS]  # type: ignore[valid-type]


class Levers(Strict):
    """Per-arm interventions. clamp: none | w_c (hold rho*w_c) | n0 (hold rho*N0, own norm at the fork) |
    absolute (hold `target`) | alloc (per-layer allocation gamma at total rho*w_c)."""
    clamp: ClampKind = "none"
    rho: float = Field(1.0, gt=0)
    tau: PositiveOrDerived = 1.0
    gamma: float = 0.0
    t_int: int | None = Field(None, ge=0)    # None: the fork step for forked arms, else 0
    target: float | None = Field(None, gt=0)
    w_c: PositiveOrDerived | None = None


class ForkDefaults(Strict):
    at: int = Field(800, ge=0)
    # all_memorized: the first eval step >= at at which every seed of the parent has memorized (PAPER.md)
    when: Literal["step", "all_memorized"] = "all_memorized"


class Save(Strict):
    """Member checkpoints logged on each member run (checkpoints.py): at its t_grok, at its end."""
    at_grok: bool = False
    final: bool = False

    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k, on in (("grok", self.at_grok), ("final", self.final)) if on)


class Defaults(Strict):
    task: Task = Task()
    model: Model = Model()
    optimizer: Optimizer = Optimizer()
    levers: Levers = Levers()
    loss: Literal["ce", "mse"] = "ce"
    precision: Literal["float32", "float64"] = "float32"
    seeds: int | list[int] = 12                # n -> seeds 0..n-1
    budget: int = Field(20000, gt=0)           # max step of every member (absolute, fork steps included)
    margin: int = Field(0, ge=0)               # steps trained after t_grok before a member retires
    # arm: a member trains until every seed of its arm has grokked (+ margin) or the budget, so seed-mean
    # curves are over all seeds (the paper's runner); member: each retires at its own t_grok (+ margin)
    retire: Retire = "arm"
    eval_every: int = Field(25, gt=0)
    log_every: int = Field(200, gt=0)
    mem_threshold: float = Field(MEM_THRESHOLD, gt=0, le=1)
    grok_threshold: float = Field(GROK_THRESHOLD, gt=0, le=1)
    checkpoint_every: int = Field(2000, gt=0)  # steps between snapshots (resume points) and logging flushes
    fork: ForkDefaults = ForkDefaults()
    save: Save = Save()

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"needs at least one seed (got {v})")
        elif not v or len(set(v)) != len(v):
            raise ValueError(f"needs distinct seeds (got {v})")
        return v

    @model_validator(mode="after")
    def _cadence(self):
        if self.log_every % self.eval_every:
            raise ValueError(f"log_every ({self.log_every}) must be a multiple of eval_every "
                             f"({self.eval_every})")
        return self

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def cohort(self, p: int, loss: str, precision: str) -> dict:
        """What a cohort of one modulus, loss and precision shares: the engine's CohortConfig fields."""
        model = self.model.model_dump()
        return {**self.task.model_dump(), "p": p, "model": model.pop("kind"), **model,
                **self.optimizer.model_dump(), "loss": loss, "precision": precision,
                "eval_every": self.eval_every, "log_every": self.log_every,
                "mem_threshold": self.mem_threshold, "grok_threshold": self.grok_threshold}


class From(Strict):
    arm: str
    at: int | None = Field(None, ge=0)        # None: defaults.fork.at
    when: Literal["step", "all_memorized"] | None = None


SWEEPABLE = ("tau", "rho", "gamma", "target", "t_int")


class Arm(Levers):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", max_length=80)
    description: str | None = None
    from_: From | None = Field(None, alias="from")
    trunk: bool = False                  # trains only up to its children's fork step (shared state)
    sweep: dict[str, list[float]] | None = None   # one extra arm per value: <name>_<key><value>
    keep_base: bool = True               # with a sweep: keep the arm itself too
    loss: Literal["ce", "mse"] | None = None
    precision: Literal["float32", "float64"] | None = None
    budget: int | None = Field(None, gt=0)
    margin: int | None = Field(None, ge=0)
    retire: Retire | None = None
    role: Role | None = None             # design_role; the arms of a sweep over tau alone: tau_sweep
    # levers left unset take defaults.levers; pydantic's fields_set tells which were given
    clamp: ClampKind | None = None
    rho: float | None = Field(None, gt=0)
    tau: PositiveOrDerived | None = None
    gamma: float | None = None

    @field_validator("sweep")
    @classmethod
    def _sweep(cls, v):
        for k, vals in (v or {}).items():
            if k not in SWEEPABLE:
                raise ValueError(f"cannot sweep {k!r} (sweepable: {', '.join(SWEEPABLE)})")
            if not vals:
                raise ValueError(f"sweep of {k!r} is empty")
            if k in ("tau", "rho", "target") and any(x <= 0 for x in vals):
                raise ValueError(f"{k} must be > 0 (got {vals})")
            if len(set(vals)) != len(vals):
                raise ValueError(f"repeated value in sweep of {k!r}: {vals}")
        return v


class Study(Strict):
    study: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    design: str = "custom"               # free text logged as param `design` (fork, mediation, collapse ...)
    defaults: Defaults = Defaults()
    arms: list[Arm] = Field(min_length=1)
    presets: dict[str, dict[str, Any]] = {}
    # filled by load_study, not by the file
    source: str = Field("", exclude=True)
    preset: str | None = Field(None, exclude=True)
    sets: list[str] = Field(default_factory=list, exclude=True)

    def resolved(self) -> dict:
        """The study as it runs (preset and --set applied, defaults filled), for artifacts and hashing."""
        d = self.model_dump(mode="json", by_alias=True, exclude={"presets"}, warnings=False)
        d["preset"] = self.preset
        return d

    def resolved_yaml(self) -> str:
        return yaml.safe_dump(self.resolved(), sort_keys=False)

    def digest(self) -> str:
        """Identity of what is trained: resume refuses to mix snapshots of different settings."""
        d = self.resolved()
        for k in ("description", "preset"):
            d.pop(k, None)
        d["defaults"].pop("save")   # what is kept, not what is trained
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
