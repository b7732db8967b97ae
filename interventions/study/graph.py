"""The intervention graph: arms (nodes), fork edges (state) and derivation edges (data), expanded from a
validated Study: sweeps become one arm each, a list of moduli replicates the graph, each arm's levers are
its settings of every lever it names (defaults.levers, the arm's own keys, its sweep value), and derived
settings (the logit-matched tau, w_c) name the arms they need (derive.py computes them). Checks what
pydantic cannot: unknown or duplicate arms, cycles, fork steps beyond a budget, each lever's own checks."""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter

from pydantic import ValidationError

from interventions.kinds import user_fields
from interventions.registry import LEVERS
from interventions.study.schema import StudyBase as Study
from interventions.study.entries import arm_optimizer
from interventions.study.schema import entry_kwargs, sweepable
from interventions.study.types import LogitMatched, SpecError
from interventions.vocab import ForkPoint


@dataclass
class ArmNode:
    name: str
    path: str                     # key path of the declaring arm in the study file (for errors)
    p: int
    seeds: list[int]
    levers: dict                  # lever name -> its settings (derived ones still a derivation)
    loss: str                     # the loss (a registered name) and its settings
    loss_settings: dict
    optimizer: dict               # {kind: a registered optimizer, its settings}: defaults.optimizer or the arm's
    precision: str
    budget: int
    margin: int
    retire: str = "arm"           # arm | member (defaults.retire)
    role: str = ""                # design_role; "" when the study file gives none
    trunk: bool = False
    parent: str | None = None
    fork_at: int | None = None
    fork_when: str | None = None
    derive_from: dict[str, list[str]] = field(default_factory=dict)  # "lever.setting" -> arms its value needs
    note: str | None = None       # the file's own description

    def __getattr__(self, name: str):
        """A flat lever's setting by its name (`node.tau`, `node.rho`), as the study file writes it."""
        levers = self.__dict__.get("levers") or {}
        for lever, s in levers.items():
            if LEVERS.get(lever).flat and name in type(s).model_fields:
                return getattr(s, name)
        raise AttributeError(name)

    @property
    def forked(self) -> bool:
        return self.parent is not None

    @property
    def fork(self) -> ForkPoint | None:
        return ForkPoint(self.parent, self.fork_at, self.fork_when) if self.forked else None

    @property
    def deps(self) -> list[str]:
        return list(dict.fromkeys(n for names in self.derive_from.values() for n in names))

    @property
    def derived(self) -> list[tuple[str, str]]:
        """(lever, setting) of every setting this arm takes from finished arms."""
        return [(n, k) for n, s in self.levers.items() for k in LEVERS.get(n).derivable(s)]

    def first_step(self, t_int: int | None, fork_step: int | None = None) -> int:
        """Where a lever that acts from a step (the clamp, logit_norm) starts in this arm: t_int if given, else
        the fork step of a forked arm (its planned fork_at until the fork step is known), else 0."""
        if t_int is not None:
            return t_int
        if self.forked:
            return fork_step if fork_step is not None else self.fork_at
        return 0

    def fork_label(self) -> str:
        if not self.forked:
            return "from init"
        at = f">={self.fork_at}, all memorized" if self.fork_when == "all_memorized" else f"{self.fork_at}"
        return f"forks {self.parent}@{at}"


class Graph:
    def __init__(self, study: Study, arms: dict[str, ArmNode]):
        self.study, self.arms = study, arms
        self.order = self._toposort()

    # ------------------------------------------------------------ structure
    def edges(self) -> list[tuple[str, str, str]]:
        """(source, destination, kind) with kind 'fork' or 'derive'."""
        out = []
        for a in self.arms.values():
            if a.parent:
                out.append((a.parent, a.name, "fork"))
            out += [(d, a.name, "derive") for d in a.deps]
        return out

    def children(self, name: str) -> list[str]:
        return [a.name for a in self.arms.values() if a.parent == name]

    def upstream(self, name: str) -> list[str]:
        a = self.arms[name]
        return ([a.parent] if a.parent else []) + [d for d in a.deps if d != a.parent]

    def _toposort(self) -> list[str]:
        ts = TopologicalSorter({n: self.upstream(n) for n in self.arms})
        try:
            return list(ts.static_order())
        except CycleError as e:
            cycle = e.args[1]
            a = self.arms[cycle[0]]
            raise SpecError(self.study.source, a.path,
                            "cycle in the graph: " + " -> ".join(cycle)) from None

    def cohort_settings(self, name: str) -> dict:
        """What members must share to train as one batched tensor program (the CohortConfig keywords)."""
        a = self.arms[name]
        return self.study.defaults.cohort(a.p, {"kind": a.loss, **a.loss_settings}, a.precision, a.optimizer)

    def trunk_until(self, name: str) -> int:
        return max(self.arms[c].fork_at for c in self.children(name))

    def waves(self, done: set[str] = frozenset()) -> list[list[list[str]]]:
        """Planned waves: arms whose upstream is done, grouped into cohorts by (shapes, start point)."""
        done, left, out = set(done), [n for n in self.order if n not in done], []
        while left:
            ready = [n for n in left if all(u in done for u in self.upstream(n))]
            groups: dict[tuple, list[str]] = {}
            for n in ready:
                groups.setdefault(self.start_key(n), []).append(n)
            out.append(list(groups.values()))
            done |= set(ready)
            left = [n for n in left if n not in done]
        return out

    def start_key(self, name: str) -> tuple:
        """Arms share a cohort when shapes and start point match (a trunk stops early: its own cohort)."""
        a = self.arms[name]
        return (json.dumps(self.cohort_settings(name), sort_keys=True, default=str), a.parent, a.fork_at,
                a.fork_when, a.trunk)

    def levers_used(self) -> list[str]:
        """Every lever some arm names, in registration order (their params go on every run)."""
        return LEVERS.in_order({n for a in self.arms.values() for n in a.levers})


# ---------------------------------------------------------------- building
def build_graph(study: Study) -> Graph:
    d, file = study.defaults, study.source
    ps = d.task.p if isinstance(d.task.p, list) else [d.task.p]
    multi_p = len(ps) > 1
    seeds = d.seed_list()
    arms: dict[str, ArmNode] = {}

    def suffix(name: str, p: int) -> str:
        return f"{name}_p{p}" if multi_p else name

    for p in ps:
        for i, arm in enumerate(study.arms):
            path = f"arms.{arm.name}"
            for name, over in _expand_sweep(arm):
                full = suffix(name, p)
                if full in arms:
                    first = arms[full].path
                    raise SpecError(file, path if path != first else f"arms[{i}].name",
                                    f"duplicate arm name {name!r} (also declared at {first})")
                node = _node(study, arm, over, full, path, p, seeds)
                arms[full] = node
    # references: names in the file are un-suffixed and refer within the same modulus
    expanded = {n for a in study.arms for n, _ in _expand_sweep(a)}
    sweeps = {a.name: [n for n, _ in _expand_sweep(a)] for a in study.arms if a.sweep}
    for node in arms.values():
        arm = next(a for a in study.arms if f"arms.{a.name}" == node.path)
        if arm.from_ is not None:
            if arm.from_.arm not in expanded:
                raise SpecError(file, f"{node.path}.from.arm", f"fork from unknown arm {arm.from_.arm!r} "
                                f"(arms: {', '.join(sorted(expanded))})")
            node.parent = suffix(arm.from_.arm, node.p)
        for lever, key in node.derived:
            spec, where = getattr(node.levers[lever], key), f"{node.path}.{key if LEVERS.get(lever).flat else lever + '.' + key}"
            refs = spec.sweep + [spec.target] if isinstance(spec, LogitMatched) else [spec.arm]
            for r in refs:
                if r not in expanded and r not in sweeps:
                    raise SpecError(file, where, f"derives from unknown arm {r!r} "
                                    f"(arms: {', '.join(sorted(expanded))})")
            if isinstance(spec, LogitMatched):
                names = [n for r in spec.sweep for n in sweeps.get(r, [r])]
                node.derive_from[f"{lever}.{key}"] = [suffix(n, node.p) for n in dict.fromkeys(names)]
                if len(node.derive_from[f"{lever}.{key}"]) < 2:
                    raise SpecError(file, f"{where}.sweep", "needs at least two arms of a tau sweep "
                                    "(an arm that declares a sweep stands for all of its arms)")
                node.derive_from[f"{lever}.{key}@target"] = [suffix(spec.target, node.p)]
            else:   # one source arm: NormAtGrok, LogitAtGrok
                node.derive_from[f"{lever}.{key}"] = [suffix(spec.arm, node.p)]
    graph = Graph(study, arms)          # refuses a cycle first: every check below assumes none
    for node in arms.values():
        _check_fork(study, arms, node)
    for node in arms.values():
        if node.trunk and not any(a.parent == node.name for a in arms.values()):
            raise SpecError(file, f"{node.path}.trunk", "a trunk arm needs at least one arm forking from it")
    return graph


def _expand_sweep(arm) -> list[tuple[str, dict]]:
    """[(name, setting overrides)]; `clamp_raised` + sweep tau [1.3] -> clamp_raised, clamp_raised_tau1.3."""
    out = [(arm.name, {})] if (not arm.sweep or arm.keep_base) else []
    if arm.sweep:
        keys = list(arm.sweep)
        for values in itertools.product(*(arm.sweep[k] for k in keys)):
            name = arm.name + "".join(f"_{k}{v:g}" for k, v in zip(keys, values))
            out.append((name, dict(zip(keys, values))))
    return out


def _arm_levers(study, arm, over: dict, path: str) -> dict:
    """Every lever the arm names: defaults.levers, then the arm's own keys, then its sweep value; a flat
    lever always (its defaults are every arm's), another where defaults.levers or the arm names it."""
    d, given, swept, out = study.defaults.levers, arm.model_fields_set, sweepable(), {}
    for name, lever in LEVERS.items():
        if lever.flat:
            base = {k: getattr(d, k) for k in user_fields(lever.Settings)}
            mine = {k: getattr(arm, k) for k in user_fields(lever.Settings) if k in given and getattr(arm, k) is not None}
        else:
            default, own = getattr(d, name, None), getattr(arm, name, None)
            if default is None and own is None and not any(swept[k][0] == name for k in over):
                continue
            base = default.model_dump(exclude_unset=False) if default is not None else {}
            mine = own.model_dump(exclude_none=True) if own is not None else {}
        sweep = {swept[k][1]: v for k, v in over.items() if swept[k][0] == name}
        try:
            out[name] = lever.Settings(**{**base, **mine, **sweep})
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(map(str, err["loc"]))
            raise SpecError(study.source, f"{path}.{key if lever.flat else name + '.' + key}",
                            err["msg"].removeprefix("Value error, ")) from None
    return out


def _node(study, arm, over: dict, name: str, path: str, p: int, seeds: list[int]) -> ArmNode:
    d = study.defaults
    loss = entry_kwargs("loss", arm.loss if arm.loss is not None else d.loss)
    node = ArmNode(
        name=name, path=path, p=p, seeds=seeds, levers=_arm_levers(study, arm, over, path),
        loss=loss.pop("loss"), loss_settings=loss, optimizer=arm_optimizer(study, arm.optimizer, path),
        precision=arm.precision or d.precision,
        budget=arm.budget or d.budget, margin=arm.margin if arm.margin is not None else d.margin,
        retire=arm.retire or d.retire, role="tau_sweep" if set(over) == {"tau"} else (arm.role or ""),
        trunk=arm.trunk, note=arm.description)
    if arm.from_ is not None:
        node.parent = arm.from_.arm      # its name in the file; build_graph resolves it per modulus
        node.fork_at = arm.from_.at if arm.from_.at is not None else d.fork.at
        node.fork_when = arm.from_.when or d.fork.when
    for lever, s in node.levers.items():
        bad = LEVERS.get(lever).check(s, node)
        if bad is not None:
            key = bad[0] if LEVERS.get(lever).flat else f"{lever}.{bad[0]}"
            raise SpecError(study.source, f"{path}.{key}", bad[1])
    return node


def _check_fork(study: Study, arms: dict[str, ArmNode], node: ArmNode) -> None:
    if not node.forked:
        return
    file, path = study.source, f"{node.path}.from.at"
    parent = arms[node.parent]
    if node.fork_at >= node.budget:
        raise SpecError(file, path, f"fork step {node.fork_at} is beyond the budget {node.budget} of arm "
                        f"{node.name!r}")
    if node.fork_at >= parent.budget:
        raise SpecError(file, path, f"fork step {node.fork_at} is beyond the budget {parent.budget} of "
                        f"the parent arm {parent.name!r}")
    if parent.forked and node.fork_at <= parent.fork_at:
        raise SpecError(file, path, f"fork step {node.fork_at} is not after the fork step {parent.fork_at} of the "
                        f"parent arm {parent.name!r}")
    if node.precision != parent.precision:   # a loss or optimizer may change at a fork (engine: what carries)
        raise SpecError(file, f"{node.path}.precision", f"a fork keeps the parent's precision "
                        f"({parent.precision}); got {node.precision}")

