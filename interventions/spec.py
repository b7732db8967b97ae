"""Study files: YAML -> a validated `Study` (pydantic).

A study file has `study` (its name), `defaults` (task, model, optimizer, levers, budgets, seeds), `arms`
(a list; each may fork `from: {arm, at}`, sweep a lever, or take a lever derived from other arms' results)
and `presets` (named partial documents overlaid on the file). Presets and `--set key=value` overrides are
applied to the raw document *before* validation, so every error names the file, the key path and the reason.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      field_validator, model_validator)

from tracking.conventions import DESIGN_ROLES

Role = Literal[DESIGN_ROLES]  # type: ignore[valid-type]
Retire = Literal["arm", "member"]

STUDIES_DIR = Path(__file__).parent / "studies"
DEFAULT_PRESET = "default"  # applied when the file has it and no --preset is given


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
_UNION_TAGS = {"number", "derived", "logit_matched", "median_norm_at_grok"}


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


ClampKind = Literal["none", "w_c", "n0", "absolute", "alloc"]


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
    mem_threshold: float = Field(0.99, gt=0, le=1)
    grok_threshold: float = Field(0.90, gt=0, le=1)
    checkpoint_every: int = Field(2000, gt=0)  # steps between snapshots (resume points) and logging flushes
    fork: ForkDefaults = ForkDefaults()

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
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- loading
class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (PyYAML silently keeps the last)."""


def _construct_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            m = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {m.line + 1}, column {m.column + 1})", m)
        seen[key] = True
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def find_study(study: str | Path) -> Path:
    """A bundled study name (`fork_study`) or a path to a YAML file."""
    path = Path(study)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SpecError(path, "", "no such study file")
        return path
    bundled = STUDIES_DIR / f"{study}.yaml"
    if bundled.is_file():
        return bundled
    names = sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))
    raise SpecError(study, "", f"no such study file or bundled study (bundled: {', '.join(names)})")


def load_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(path, "", f"cannot read: {e.strerror}") from None
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
        reason = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
        raise SpecError(path, where, f"malformed YAML: {reason or e}") from None
    if not isinstance(doc, dict):
        raise SpecError(path, "", f"expected a mapping at the top level, got {type(doc).__name__}")
    return doc


def _merge(base: Any, over: Any, file: str, path: str) -> Any:
    """Deep merge; a list of named mappings (arms) is merged by name from a mapping keyed by name."""
    if isinstance(over, dict) and isinstance(base, list):
        out = copy.deepcopy(base)
        for name, sub in over.items():
            idx = _named_index(out, name)
            if idx is None:
                raise SpecError(file, f"{path}.{name}", f"no arm named {name!r} to override "
                                f"(arms: {', '.join(str(a.get('name')) for a in out if isinstance(a, dict))})")
            out[idx] = _merge(out[idx], sub, file, f"{path}.{name}")
        return out
    if isinstance(over, dict) and isinstance(base, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v, file, f"{path}.{k}" if path else str(k)) if k in base else v
        return out
    return copy.deepcopy(over)


def _named_index(items: list, name: str) -> int | None:
    for i, a in enumerate(items):
        if isinstance(a, dict) and a.get("name") == name:
            return i
    return None


def parse_set(item: str) -> tuple[str, Any]:
    """`key.path=value`; the value is read as YAML (numbers, lists, booleans)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise SpecError("--set", item, "expected KEY=VALUE with a dotted KEY (e.g. defaults.task.p=31)")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else value
    except yaml.YAMLError:
        return key.strip(), value


def apply_set(doc: dict, key: str, value: Any, file: str) -> dict:
    """Set one dotted key. `arms.<name>.<field>` addresses an arm by name; a key whose first part is not a
    top-level key but a `defaults` key is taken under `defaults` (`task.p=31` == `defaults.task.p=31`)."""
    parts = key.split(".")
    if parts[0] not in doc and parts[0] not in Study.model_fields and parts[0] in Defaults.model_fields:
        parts = ["defaults"] + parts
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return _merge(doc, nested, file, "")


def load_study(study: str | Path, preset: str | None = None, sets: list[str] | tuple = ()) -> Study:
    """Read, overlay the preset (default: `default` if the file has one) and the --set items, validate."""
    path = find_study(study)
    doc = load_yaml(path)
    file = str(path)
    presets = doc.get("presets") or {}
    if not isinstance(presets, dict):
        raise SpecError(file, "presets", "expected a mapping of preset name -> overrides")
    name = preset if preset is not None else (DEFAULT_PRESET if DEFAULT_PRESET in presets else None)
    if name is not None:
        if name not in presets:
            raise SpecError(file, f"presets.{name}",
                            f"no such preset (presets: {', '.join(presets) or 'none'})")
        over = presets[name] or {}
        if not isinstance(over, dict) or "presets" in over:
            raise SpecError(file, f"presets.{name}", "a preset is a mapping of overrides (not presets)")
        doc = _merge(doc, over, file, "")
    for item in sets:
        key, value = parse_set(item)
        doc = apply_set(doc, key, value, file + f" (--set {item})")
    try:
        st = Study.model_validate(doc)
    except ValidationError as e:
        raise _spec_error(file, doc, e, sets) from None
    st.source, st.preset, st.sets = file, name, list(sets)
    return st


def _spec_error(file: str, doc: dict, err: ValidationError, sets) -> SpecError:
    e = err.errors()[0]
    loc = [x for x in e["loc"] if x not in _UNION_TAGS and not str(x).startswith("function-")]
    path = key_path(doc, loc)
    reason = e["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    if e["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        reason = "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    elif e["type"] not in ("missing", "value_error") and "input" in e and not isinstance(e["input"], (dict, list)):
        reason += f" (got {e['input']!r})"
    if sets:
        file += " with --set " + " ".join(sets)
    return SpecError(file, path, reason)


def key_path(doc: dict, loc: list) -> str:
    """('arms', 2, 'tau') -> 'arms.clamp_raised.tau' (arms named where the name is known)."""
    out, node = [], doc
    for x in loc:
        if isinstance(x, int):
            name = node[x].get("name") if isinstance(node, list) and x < len(node) and \
                isinstance(node[x], dict) else None
            out.append(str(name) if isinstance(name, str) else f"[{x}]")
        else:
            out.append(str(x))
        try:
            node = node[x]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(out).replace(".[", "[")


def _allowed_keys(loc: list) -> list[str]:
    model: Any = Study
    for x in loc:
        if isinstance(x, int):
            continue
        field = model.model_fields.get(x) or next(
            (f for f in model.model_fields.values() if f.alias == x), None)
        if field is None:
            return []
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type)]
        cands = [a for a in [ann, *args] if isinstance(a, type) and issubclass(a, BaseModel)]
        if not cands:
            inner = [a for a in getattr(ann, "__args__", ())
                     for a in getattr(a, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
            cands = inner
        if not cands:
            return []
        model = cands[0]
    return [f.alias or k for k, f in model.model_fields.items()
            if k not in ("source", "preset", "sets")]
