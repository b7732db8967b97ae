"""The study file's schema (pydantic), built from the registries: `models()` -> Study and its parts.

A study file has `study` (its name), `plugins` (modules that register more plug-ins), `defaults` (task,
model, optimizer, loss, levers, budgets, seeds), `arms` (a list; each may fork `from: {arm, at}`, sweep a
setting, or take a setting derived from other arms' results) and `presets` (named partial documents
overlaid on the file; applied by spec.load_study). The task, model, optimizer, loss and levers are
registered plug-ins: each names its settings (`kind: <registered name>` plus that entry's own keys), so the
schema is made from the registries once they hold every plug-in the study names.
"""
from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BeforeValidator, ConfigDict, Discriminator, Field, Tag, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo

from interventions.kinds import user_fields
from interventions.registry import LEVERS, LOSSES, MODELS, OPTIMIZERS, TASKS
from interventions.study.sweeps import check_sweep, sweepable
from interventions.study.types import SpecError, Strict
from tracking.conventions import DESIGN_ROLES, GROK_THRESHOLD, MEM_THRESHOLD

__all__ = ["SpecError", "Strict", "models", "sweepable"]

Role = Literal[DESIGN_ROLES]  # type: ignore[valid-type]
Retire = Literal["arm", "member"]


class Task(Strict):
    op: str = Field("add", description="the task: a registered task's name (interventions.tasks)")
    p: int | list[int] = Field(59, description="its size (the modulus); a list runs every arm once per p (the graph "
                                               "replicated); a task of fixed size sets it")
    train_fraction: float = Field(0.4, gt=0, lt=1, description="share of all pairs a member trains on (its seed draws "
                                                               "which); the rest is the test split")

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
    def _task(self):
        entry = TASKS.get(self.op) if self.op in TASKS else None
        if entry is None:
            raise ValueError(f"unknown task {self.op!r} (registered: {', '.join(TASKS.names())})")
        if entry.fixed_p is not None and "p" not in self.model_fields_set:
            self.p = entry.fixed_p
        for p in self.p if isinstance(self.p, list) else [self.p]:
            why = entry.check(p)
            if why:
                raise ValueError(why)
            pairs = entry.n_pairs(p)
            n = round(self.train_fraction * pairs)
            if not 0 < n < pairs:
                raise ValueError(f"train_fraction {self.train_fraction} of the {pairs} pairs at p={p} "
                                 "leaves an empty train or test split")
        return self


class ForkDefaults(Strict):
    at: int = Field(800, ge=0, description="fork step of an arm whose `from` gives no `at`")
    when: Literal["step", "all_memorized"] = Field("all_memorized", description="step: at `at`; all_memorized: the "
                                                   "first eval step >= `at` where every parent seed has memorized")


class Save(Strict):
    """Member checkpoints logged on each member run (checkpoints.py): at its t_grok, at its end."""
    at_grok: bool = Field(False, description="log each member's checkpoint at its t_grok")
    final: bool = Field(False, description="log each member's checkpoint at the end of its run")

    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k, on in (("grok", self.at_grok), ("final", self.final)) if on)


class From(Strict):
    """Where an arm forks: its parent arm and the step whose state (weights, optimizer, levers) it starts from."""
    arm: str = Field(description="the parent arm (its name in this file)")
    at: int | None = Field(None, ge=0, description="fork step; null: defaults.fork.at")
    when: Literal["step", "all_memorized"] | None = Field(None, description="as defaults.fork.when; null: that")


class StudyBase(Strict):
    """What every study has besides its generated parts (models().Study adds defaults and arms)."""
    study: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", description="its name: the MLflow experiment's (with "
                       "-<preset> for presets other than default) and its snapshots' folder's")
    description: str = Field("", description="free text, the MLflow experiment's description")
    design: str = Field("custom", description="logged as param `design`; one the report knows (mediation, fork, "
                                              "collapse, dose, alloc, precision ...) limits it to that design's "
                                              "analyses, any other text lets the arms' roles decide")
    plugins: list[str] = Field([], description="modules that register plug-ins, imported before validation: found "
                                               "beside the study file first, then on sys.path")
    presets: dict[str, dict[str, Any]] = Field({}, description="name -> a partial study overlaid by --preset name "
                                                               "(`default` when none is named)")
    # filled by load_study, not by the file
    source: str = Field("", exclude=True)
    preset: str | None = Field(None, exclude=True)
    sets: list[str] = Field(default_factory=list, exclude=True)
    plugin_info: list[dict] = Field(default_factory=list, exclude=True)   # name, file, version, digest

    def resolved(self) -> dict:
        """The study as it runs (preset and --set applied, defaults filled), for artifacts and hashing."""
        d = self.model_dump(mode="json", by_alias=True, exclude={"presets"}, warnings=False)
        d["preset"] = self.preset
        if not d["plugins"]:
            d.pop("plugins")
        return d

    def resolved_yaml(self) -> str:
        return yaml.safe_dump(self.resolved(), sort_keys=False)

    def identity(self) -> dict:
        """What is trained: the resolved study less its description, preset and `save` (what is kept), plus
        each plug-in's source digest. Resume compares it and names the keys that changed."""
        d = self.resolved()
        for k in ("description", "preset"):
            d.pop(k, None)
        d["defaults"].pop("save")
        if self.plugin_info:
            d["plugin_digests"] = {p["name"]: p["digest"] for p in self.plugin_info}
        return d

    def digest(self) -> str:
        """A hash of identity(): resume refuses to mix snapshots of different settings."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the generated parts
def _entry_union(registry, default: str, as_name: bool = False):
    """`{kind: <name>, <that entry's settings>}` over every registered entry (a plain name too, where
    as_name): a discriminated union, so an unknown kind or setting is reported at its key."""
    variants = []
    for name, entry in registry.items():
        field = (Literal[name], Field(name, description=f"the registered {registry.kind}"))  # type: ignore[valid-type]
        model = create_model(f"{registry.kind}_{name}", __base__=entry.Settings, kind=field)
        variants.append(Annotated[model, Tag(name)])

    def kind(v):
        return v.get("kind", default) if isinstance(v, dict) else getattr(v, "kind", default)

    union = Annotated[Union[tuple(variants)], Discriminator(kind)]
    if as_name:
        return Annotated[union, BeforeValidator(lambda v: {"kind": v} if isinstance(v, str) else v)]
    return union


def _optional(f: FieldInfo) -> tuple[Any, Any]:
    """The same setting, optional (None: not given here): an arm's override of defaults.levers."""
    ann = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
    return Optional[ann], Field(None, description=f.description)


def _partial(lever) -> type:
    """A lever's settings with every one optional: what an arm overrides of defaults.levers."""
    return create_model(f"{lever.name}_partial", __base__=Strict,
                        **{k: _optional(f) for k, f in user_fields(lever.Settings).items()})


def _levers_fields(arm: bool) -> dict[str, Any]:
    out = {}
    for name, lever in LEVERS.items():
        if lever.flat:
            for k, f in user_fields(lever.Settings).items():
                out[k] = _optional(f) if arm else (f.annotation, f)
        else:
            what = "this arm's settings over defaults.levers'" if arm else "its settings for every arm"
            out[name] = (Optional[_partial(lever) if arm else lever.Settings],
                         Field(None, description=f"lever {name}: {what} (null: not named)"))
    return out


_cache: dict = {}
_KIND = "the {0}: `{{kind: <a registered {0}>, <its settings>}}`"


def models() -> SimpleNamespace:
    """The schema's models (Study, Defaults, Arm, Levers, ...) for the plug-ins registered now."""
    key = tuple(tuple(r.names()) for r in (LEVERS, LOSSES, MODELS, OPTIMIZERS, TASKS))
    if key in _cache:
        return _cache[key]
    Loss = _entry_union(LOSSES, "ce", as_name=True)
    Levers = create_model("Levers", __base__=Strict, **_levers_fields(arm=False))
    Defaults = create_model(
        "Defaults", __base__=DefaultsBase, task=(Task, Field(Task(), description="the task")),
        model=(_entry_union(MODELS, "mlp"), Field({"kind": "mlp"}, description=_KIND.format("model"))),
        optimizer=(_entry_union(OPTIMIZERS, "adamw"), Field({"kind": "adamw"}, description=_KIND.format("optimizer"))),
        loss=(Loss, Field("ce", description=_KIND.format("loss") + ", or its name alone")),
        levers=(Levers, Field(Levers(), description="every arm's lever settings (an arm overrides them)")))
    arm_loss = Field(None, description="overrides defaults.loss")
    Arm = create_model("Arm", __base__=ArmBase, loss=(Optional[Loss], arm_loss), **_levers_fields(arm=True))
    Study = create_model("Study", __base__=StudyBase,
                         defaults=(Defaults, Field(Defaults(), description="what every arm shares unless it says "
                                                                           "otherwise")),
                         arms=(list[Arm], Field(min_length=1, description="the arms: each trains one member per "
                                                                          "seed (and per p)")))
    _cache[key] = SimpleNamespace(Study=Study, Defaults=Defaults, Arm=Arm, Levers=Levers, Task=Task)
    return _cache[key]


class DefaultsBase(Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True)
    precision: Literal["float32", "float64"] = Field("float32", description="dtype of parameters and arithmetic")
    seeds: int | list[int] = Field(12, description="n: seeds 0 .. n-1; or a list of seeds (one member per arm and "
                                                   "seed; its seed draws the init and the train split)")
    budget: int = Field(20000, gt=0, description="last step of every member (absolute: fork steps included)")
    margin: int = Field(0, ge=0, description="steps trained after t_grok before a member retires")
    retire: Retire = Field("arm", description="arm: a member trains until every seed of its arm has grokked (+ "
                           "margin) or the budget, so seed-mean curves are over all seeds (the paper's runner); "
                           "member: each retires at its own t_grok (+ margin)")
    eval_every: int = Field(25, gt=0, description="steps between evaluations of train and test accuracy on all "
                                                  "pairs (t_mem and t_grok are multiples of it)")
    log_every: int = Field(200, gt=0, description="steps between logged curve points (a multiple of eval_every)")
    mem_threshold: float = Field(MEM_THRESHOLD, gt=0, le=1, description="train accuracy that marks t_mem")
    grok_threshold: float = Field(GROK_THRESHOLD, gt=0, le=1, description="test accuracy that marks t_grok")
    checkpoint_every: int = Field(2000, gt=0, description="steps between snapshots (resume points), log flushes")
    fork: ForkDefaults = Field(ForkDefaults(), description="where an arm whose `from` leaves it out forks")
    save: Save = Field(Save(), description="which member checkpoints are logged as MLflow artifacts")

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

    def cohort(self, p: int, loss, precision: str, optimizer=None) -> dict:
        """What a cohort of one size, loss, optimizer (default: this one) and precision shares: the engine's
        CohortConfig keywords."""
        task = self.task.model_dump()
        opt = entry_kwargs("optimizer", self.optimizer if optimizer is None else optimizer)
        return {**task, "p": p, **entry_kwargs("model", self.model), **opt,
                **entry_kwargs("loss", loss), "precision": precision, "eval_every": self.eval_every,
                "log_every": self.log_every, "mem_threshold": self.mem_threshold,
                "grok_threshold": self.grok_threshold}


def entry_kwargs(kind: str, value) -> dict:
    """{kind: name, **settings} of a model, optimizer or loss section (a loss may be a plain name)."""
    if isinstance(value, str):
        return {kind: value}
    d = dict(value) if isinstance(value, dict) else value.model_dump()
    return {kind: d.pop("kind"), **d}


class ArmBase(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", max_length=80, description="unique; its MLflow run's name")
    description: str | None = Field(None, description="free text (kept in the resolved study file logged)")
    from_: From | None = Field(None, alias="from", description="its fork (null: it trains from initialisation)")
    trunk: bool = Field(False, description="trains only up to its children's fork steps (a shared state)")
    sweep: dict[str, list[float]] | None = Field(None, description="setting -> values: one more arm per value (per "
                                                 "combination of several), named <name>_<key><value>")
    keep_base: bool = Field(True, description="with a sweep: keep the arm itself too")
    precision: Literal["float32", "float64"] | None = Field(None, description="overrides defaults.precision (a "
                                                            "fork keeps its parent's)")
    optimizer: dict[str, Any] | None = Field(None, description="`{kind: ..., <its settings>}` over "
                                             "defaults.optimizer (the settings its kind takes carry over)")
    budget: int | None = Field(None, gt=0, description="overrides defaults.budget")
    margin: int | None = Field(None, ge=0, description="overrides defaults.margin")
    retire: Retire | None = Field(None, description="overrides defaults.retire")
    role: Role | None = Field(None, description="its design_role, which the report's analyses look for (the arms "
                                                "a sweep over tau alone adds are tau_sweep)")

    @field_validator("sweep")
    @classmethod
    def _sweep(cls, v):
        return check_sweep(v)
