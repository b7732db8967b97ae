"""What each kind of plug-in is: the base classes a lever, loss, optimizer, task and model derive from
(plain Python and pydantic: no torch here, so the study definition can read their settings).

A plug-in subclasses one, declares its settings (a pydantic model: the study file's keys for it) and
registers it (interventions.registry); the bundled ones (interventions/levers, losses, optim, tasks,
models) are written exactly so.
"""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from interventions.registry import OPTIMIZERS


class Settings(BaseModel):
    """A plug-in's settings: validated, frozen; unknown keys are an error."""
    model_config = ConfigDict(extra="forbid", frozen=True)


# ================================================================ levers
# Where a lever acts, in the order of one training step (a lever declares which in `hooks`):
#     init        a fresh member's parameters, once (init(P, i): member i's, in place)
#     logits      the logits before the loss (logits(z, rows) -> z; tau, a logit-scale target)
#     grads       the gradients before the optimizer step (grads(G, P, rows, step), in place; filters)
#     after_step  the parameters after the optimizer step (after_step(P, rows, step), in place; the clamp)
# Its settings sit under its name in the study file (`grad_ema: {alpha: 0.98}`), or, for a `flat` lever, as
# an arm's top-level keys (the paper's `clamp: w_c`, `tau: 1.3`). A cohort mixes arms: one instance per
# lever holds every member's settings, and a member whose settings are not `active()` must come out of
# every hook bit for bit unchanged.

HOOKS = ("init", "logits", "grads", "after_step")
INTERNAL = {"internal": True}   # json_schema_extra of a setting the resolution fills, never the study file


class LeverSettings(Settings):
    def active(self) -> bool:
        """Does this member's lever do anything (the defaults usually do not)?"""
        return True


def user_fields(settings: type[LeverSettings]) -> dict[str, Any]:
    """The settings a study file may give (INTERNAL ones left out)."""
    return {k: f for k, f in settings.model_fields.items() if not (f.json_schema_extra or {}).get("internal")}


class Lever:
    name: ClassVar[str]
    Settings: ClassVar[type[LeverSettings]] = LeverSettings
    flat: ClassVar[bool] = False
    hooks: ClassVar[tuple[str, ...]] = ()
    fork_state: ClassVar[bool] = True   # its per-member state travels with a member into a forked arm

    # ---- the study side: plain data ---------------------------------------------------------------
    @classmethod
    def check(cls, s: LeverSettings, arm) -> tuple[str, str] | None:
        """(setting, reason) where these settings cannot work in graph arm `arm` (study.graph.ArmNode)."""
        return None

    @classmethod
    def incomplete(cls, s: LeverSettings) -> str | None:
        """Why these settings cannot train yet ('<setting>: <reason>': a value the resolution should have
        filled), or None; checked when a member is made."""
        return None

    @classmethod
    def derivable(cls, s: LeverSettings) -> list[str]:
        """The settings whose derivation (a graph edge) this arm needs; default: every derived one."""
        return [k for k in type(s).model_fields if getattr(getattr(s, k), "derive", None) is not None]

    @classmethod
    def resolve(cls, s: LeverSettings, derived: dict[str, Any], fork_step: int | None, arm) -> LeverSettings:
        """The settings the engine gets: derived values (`derived`: setting -> value) in, defaults that need
        the graph (the fork step) filled."""
        known = {k: v for k, v in derived.items() if k in type(s).model_fields}
        return type(s)(**{**s.model_dump(), **known}) if known else s

    @classmethod
    def params(cls, s: LeverSettings) -> dict[str, Any]:
        """Its MLflow params: top-level names for a flat lever, `<lever>.<setting>` otherwise."""
        d = s.model_dump(mode="json")
        return d if cls.flat else {f"{cls.name}.{k}": v for k, v in d.items()}

    @classmethod
    def describe(cls, s: LeverSettings, arm, fork_step: int | None) -> str | None:
        """Its part of an arm's one-line description (None: nothing to say)."""
        if not s.active():
            return None
        return f"{cls.name} " + ", ".join(f"{k} {v}" for k, v in s.model_dump(mode="json").items())

    @classmethod
    def label(cls, s: LeverSettings) -> str | None:
        """A few characters for the graph picture's box (None: nothing)."""
        return cls.name if s.active() else None

    # ---- the engine side: a cohort's members --------------------------------------------------------
    def __init__(self, settings: list[LeverSettings], cohort, state: list[dict | None] | None = None):
        """settings: one per member (row order); state: each member's carried state (None: fresh)."""
        self.settings = list(settings)
        self.cohort = cohort

    def select(self, keep) -> None:
        """Keep rows `keep` (a long tensor) of every per-member tensor (members retired)."""
        self.settings = [self.settings[i] for i in keep.tolist()]

    def state_dict(self) -> dict:   # per-member state, rows in member order (snapshots)
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def member_state(self, i: int) -> dict:
        """Member i's state alone (a fork carries it into the arms that fork from it)."""
        return {k: v[i].clone() for k, v in self.state_dict().items()}

    def chunk_end(self, t: int) -> int | None:   # a step > t that ends a chunk (the lever acts there), or None
        return None

    def before_chunk(self, t: int) -> dict[int, dict[str, float]]:
        """At step t, before the next chunk: act, and return {row: {record field: value}} to record."""
        return {}

    def before_eval(self) -> dict:
        """Before an evaluation: prepare `eval_logits` from the parameters now; returns extra curves
        {MLflow key: (M,) tensor, NaN for a member without one}."""
        return {}

    def eval_logits(self, z, rows: slice):   # the logits hook in the evaluation (blocks of all pairs)
        return self.logits(z, rows)


# ================================================================ losses
# A loss of post-lever logits: differentiable (the generic path), per pair (the evaluation), and in closed
# form where it has one (the fast paths).

class LossSettings(Settings):
    pass


class Loss:
    name: ClassVar[str]
    Settings: ClassVar[type[LossSettings]] = LossSettings
    pad_logit: ClassVar[float] = 0.0   # a padded logit column with this value adds nothing (fast paths)
    closed_form: ClassVar[bool] = False   # value_and_dlogits is implemented

    def __init__(self, settings: LossSettings | None = None):
        self.settings = settings if settings is not None else self.Settings()

    def value(self, s, y):
        """Per-member loss (c,) of logits s (c, N, C) with labels y (c, N, 1): the mean over the pairs."""
        return self.pair_losses(s, y).mean(1)

    def pair_losses(self, s, y):
        """Per-pair loss (...) of logits s (..., C) with labels y (..., 1), as the evaluation sums it."""
        raise NotImplementedError

    def probs(self, s):
        """Class probabilities of logits s as the loss computes them (sc_frac: the correct one exactly 1)."""
        return s.softmax(-1)

    def value_and_dlogits(self, z, y, inv_tau):
        """(loss (c,), d loss / d z (c, N, C)) of z * inv_tau, z consumed; None where there is no closed form."""
        return None


# ================================================================ optimizers
# An in-place update with per-parameter buffers (snapshots, forks and resumes carry them); a Wrapper
# transforms the gradients before a base optimizer's step (as ⊥Grad does).

class OptimizerSettings(Settings):
    pass


class Optimizer:
    name: ClassVar[str]
    Settings: ClassVar[type[OptimizerSettings]] = OptimizerSettings
    state_names: tuple[str, ...] = ()   # per-parameter buffers, zero at the start (e.g. exp_avg, exp_avg_sq)

    def __init__(self, settings: OptimizerSettings | None = None):
        self.settings = settings if settings is not None else self.Settings()

    def step(self, params: list, grads: list, state: dict[str, list], decay: list[bool], step: int) -> None:
        """One update in place. params, grads: one tensor per parameter (a member group's rows); state:
        {buffer: one tensor per parameter}; decay: which are weight matrices (weight decay applies);
        step: the 1-based count after this update."""
        raise NotImplementedError


class WrapperSettings(OptimizerSettings):
    model_config = ConfigDict(extra="allow", frozen=True)   # the base optimizer's settings ride along
    base: str = Field("adamw", description="the registered optimizer whose step follows; its settings sit beside")

    @model_validator(mode="after")
    def _base(self):
        if self.base not in OPTIMIZERS:
            raise ValueError(f"base: unknown optimizer {self.base!r} (registered: {', '.join(OPTIMIZERS.names())})")
        OPTIMIZERS.get(self.base).Settings(**(self.model_extra or {}))   # the base's own checks
        return self


class Wrapper(Optimizer):
    """A gradient transformation in front of a base optimizer (a registered name, setting `base`); the
    settings it does not declare itself are the base's."""

    Settings = WrapperSettings

    def __init__(self, settings: WrapperSettings | None = None):
        super().__init__(settings)
        mine = set(type(self.settings).model_fields)
        base = OPTIMIZERS.get(self.settings.base)
        self.base = base(base.Settings(**{k: v for k, v in self.settings.model_dump().items() if k not in mine}))
        self.state_names = self.base.state_names

    def transform(self, params: list, grads: list, step: int) -> None:
        """Change `grads` in place before the base optimizer's step."""
        raise NotImplementedError

    def step(self, params, grads, state, decay, step):
        self.transform(params, grads, step)
        self.base.step(params, grads, state, decay, step)


# ================================================================ tasks
# Pairs of input tokens (a, b) -> one of n_classes labels, in plain Python: the engine builds the table
# once per (task, p) and trains each member on a seeded share of the pairs (engine/task.py).

class PairTask:
    """Subclasses set `label` (and, where they differ from p, `vocab` and `n_classes`)."""

    name: ClassVar[str]          # set by the registry
    cyclic: ClassVar[bool] = False   # the tokens are the residues mod p: the Fourier structure metric applies
    fixed_p: ClassVar[int | None] = None   # a task whose size is not a setting (S5: 120 elements)

    @classmethod
    def check(cls, p: int) -> str | None:
        """Why `p` does not make this task, or None."""
        if cls.fixed_p is not None and p != cls.fixed_p:
            return f"task {cls.name} has p fixed at {cls.fixed_p}"
        return None if p >= 2 else f"must be >= 2, got {p}"

    @classmethod
    def vocab(cls, p: int) -> int:
        """Input tokens: a and b range over 0 .. vocab - 1."""
        return p

    @classmethod
    def n_classes(cls, p: int) -> int:
        return p

    @classmethod
    def label(cls, a: int, b: int, p: int) -> int | None:
        """The class of pair (a, b); None where (a, b) is not a pair of the task."""
        raise NotImplementedError

    @classmethod
    def labels(cls, p: int) -> list[int]:
        """Every pair's label on the vocab x vocab grid, row a, column b; -1 where undefined."""
        v = cls.vocab(p)
        out = [cls.label(a, b, p) for a in range(v) for b in range(v)]
        return [-1 if y is None else y for y in out]

    @classmethod
    def n_pairs(cls, p: int) -> int:
        return sum(y >= 0 for y in cls.labels(p))


# ================================================================ models
# Token pairs -> logits, batched over a leading member dimension: the generic path needs `specs` and
# `forward`, the evaluation `grid_logits`; a hand-written `loss_grads` is what the ATen fast path adds.

class ModelSettings(Settings):
    pass


class Model:
    name: ClassVar[str]
    Settings: ClassVar[type[ModelSettings]] = ModelSettings
    paired: ClassVar[bool] = False          # token tables hold a- and b-halves per token (make_batches)
    alloc_layers: tuple[str, str] | None = None   # embedding and readout, for the allocation clamp
    work_per_member: int = 1                # width of its (pairs x width) activations, for chunk sizing

    def __init__(self, vocab: int, n_classes: int, settings: ModelSettings):
        self.vocab, self.n_classes, self.settings = vocab, n_classes, settings

    def tables(self, P: dict):
        """Per-token tables the evaluation reuses across row blocks (None: none)."""
        return None

    def forward(self, P: dict, batch):
        """Logits (c, N, n_classes) of the batch's training pairs; differentiable."""
        raise NotImplementedError

    def grid_logits(self, P: dict, rows: slice, T=None, ws=None):
        """Logits (c, r * vocab, n_classes) of every pair (a, b) with a in `rows`."""
        raise NotImplementedError

    def naive_logits(self, P1: dict, a, b):
        """Textbook forward of ONE member (parameters without the member dim); checkpoints use it."""
        raise NotImplementedError
