"""The intervention graph: arms (nodes), fork edges (state) and derivation edges (data), expanded from a
validated Study: sweeps become one arm each, a list of moduli replicates the graph, derived levers (the
logit-matched tau, w_c) name the arms they need (derive.py computes them). Checks what pydantic cannot:
unknown or duplicate arms, cycles, fork steps beyond a budget."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter

from .schema import Arm, LogitMatched, NormAtGrok, SpecError, Study
from .vocab import ForkPoint


@dataclass
class ArmNode:
    name: str
    path: str                     # key path of the declaring arm in the study file (for errors)
    p: int
    seeds: list[int]
    clamp: str
    rho: float
    tau: float | LogitMatched     # a LogitMatched until derived
    gamma: float
    t_int: int | None
    target: float | None
    w_c: float | NormAtGrok | None
    loss: str
    precision: str
    budget: int
    margin: int
    retire: str = "arm"           # arm | member (spec.Defaults.retire)
    role: str = ""                # design_role; "" when the study file gives none
    trunk: bool = False
    parent: str | None = None
    fork_at: int | None = None
    fork_when: str | None = None
    derive_from: dict[str, list[str]] = field(default_factory=dict)  # lever -> arms its value needs
    note: str | None = None       # the file's own description
    tau_source: str = "given"

    @property
    def forked(self) -> bool:
        return self.parent is not None

    @property
    def fork(self) -> ForkPoint | None:
        return ForkPoint(self.parent, self.fork_at, self.fork_when) if self.forked else None

    def clamp_start(self, fork_step: int | None = None) -> int:
        """First clamped step: t_int if given, else the fork step of a forked arm (its planned `fork_at`
        until the fork step is known), else 0."""
        if self.t_int is not None:
            return self.t_int
        if self.forked:
            return fork_step if fork_step is not None else self.fork_at
        return 0

    @property
    def deps(self) -> list[str]:
        return list(dict.fromkeys(n for names in self.derive_from.values() for n in names))

    @property
    def derived(self) -> list[str]:
        return [k for k in ("tau", "w_c") if isinstance(getattr(self, k), (LogitMatched, NormAtGrok))]

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
        """What members must share to train as one batched tensor program (the CohortConfig fields)."""
        a = self.arms[name]
        return self.study.defaults.cohort(a.p, a.loss, a.precision)

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
        return (tuple(self.cohort_settings(name).items()), a.parent, a.fork_at, a.fork_when, a.trunk)


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
        for key in node.derived:
            spec, where = getattr(node, key), f"{node.path}.{key}"
            refs = spec.sweep + [spec.target] if isinstance(spec, LogitMatched) else [spec.arm]
            for r in refs:
                if r not in expanded and r not in sweeps:
                    raise SpecError(file, where, f"derives from unknown arm {r!r} "
                                    f"(arms: {', '.join(sorted(expanded))})")
            if isinstance(spec, LogitMatched):
                names = [n for r in spec.sweep for n in sweeps.get(r, [r])]
                node.derive_from["tau"] = [suffix(n, node.p) for n in dict.fromkeys(names)]
                if len(node.derive_from["tau"]) < 2:
                    raise SpecError(file, f"{where}.sweep", "needs at least two arms of a tau sweep "
                                    "(an arm that declares a sweep stands for all of its arms)")
                node.derive_from["tau_target"] = [suffix(spec.target, node.p)]
            elif node.clamp in ("w_c", "alloc"):
                node.derive_from["w_c"] = [suffix(spec.arm, node.p)]
            else:           # this arm's clamp does not use w_c: no edge
                node.w_c = None
    graph = Graph(study, arms)          # refuses a cycle first: every check below assumes none
    for node in arms.values():
        _check_fork(study, arms, node)
    for node in arms.values():
        if node.trunk and not any(a.parent == node.name for a in arms.values()):
            raise SpecError(file, f"{node.path}.trunk", "a trunk arm needs at least one arm forking from it")
    return graph


def _expand_sweep(arm: Arm) -> list[tuple[str, dict]]:
    """[(name, lever overrides)]; `clamp_raised` + sweep tau [1.3] -> clamp_raised, clamp_raised_tau1.3."""
    out = [(arm.name, {})] if (not arm.sweep or arm.keep_base) else []
    if arm.sweep:
        keys = list(arm.sweep)
        for values in itertools.product(*(arm.sweep[k] for k in keys)):
            name = arm.name + "".join(f"_{k}{v:g}" for k, v in zip(keys, values))
            out.append((name, dict(zip(keys, values))))
    return out


def _node(study: Study, arm: Arm, over: dict, name: str, path: str, p: int, seeds: list[int]) -> ArmNode:
    d, lv = study.defaults, study.defaults.levers
    given = arm.model_fields_set

    def pick(key):
        if key in over:
            return over[key]
        return getattr(arm, key) if key in given and getattr(arm, key) is not None else getattr(lv, key)

    node = ArmNode(
        name=name, path=path, p=p, seeds=seeds,
        clamp=pick("clamp"), rho=pick("rho"), tau=pick("tau"), gamma=pick("gamma"), t_int=pick("t_int"),
        target=pick("target"), w_c=pick("w_c"),
        loss=arm.loss or d.loss, precision=arm.precision or d.precision,
        budget=arm.budget or d.budget, margin=arm.margin if arm.margin is not None else d.margin,
        retire=arm.retire or d.retire, role="tau_sweep" if set(over) == {"tau"} else (arm.role or ""),
        trunk=arm.trunk, note=arm.description)
    if arm.from_ is not None:
        node.fork_at = arm.from_.at if arm.from_.at is not None else d.fork.at
        node.fork_when = arm.from_.when or d.fork.when
    if isinstance(node.tau, LogitMatched):
        node.tau_source = "derived:logit_matched"
    file = study.source
    if node.trunk and node.clamp != "none":
        raise SpecError(file, f"{path}.clamp", "a trunk trains free (clamp none); clamp its children")
    if node.clamp == "n0" and arm.from_ is None:
        raise SpecError(file, f"{path}.clamp", "clamp n0 holds a multiple of the norm at the fork: "
                        "the arm needs `from`")
    if node.clamp == "absolute" and node.target is None:
        raise SpecError(file, f"{path}.target", "clamp absolute needs a target weight_norm")
    if node.clamp in ("w_c", "alloc") and node.w_c is None:
        raise SpecError(file, f"{path}.w_c", f"clamp {node.clamp} needs w_c (a number or "
                        "{derive: median_norm_at_grok, arm: <free arm>})")
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
    for key, mine, theirs in (("loss", node.loss, parent.loss), ("precision", node.precision,
                                                                  parent.precision)):
        if mine != theirs:
            raise SpecError(file, f"{node.path}.{key}", f"a fork keeps the parent's {key} "
                            f"({theirs}); got {mine}")
