"""The intervention graph: arms (nodes), fork edges (state) and derivation edges (data), expanded from a
validated Study: sweeps become one arm each, a list of moduli replicates the graph, derived levers (the
logit-matched tau, w_c) are computed from finished arms' results. Checks what pydantic cannot: unknown or
duplicate arms, cycles, fork steps beyond a budget."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter

import numpy as np

from tracking import conventions

from .spec import Arm, LogitMatched, NormAtGrok, SpecError, Study


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

    def cohort_key(self, name: str) -> tuple:
        """What members must share to train as one batched tensor program."""
        a, d = self.arms[name], self.study.defaults
        return (a.p, d.task.op, d.task.train_fraction, *d.model.model_dump().values(), a.loss, a.precision,
                *d.optimizer.model_dump().values(), d.eval_every, d.log_every, d.mem_threshold,
                d.grok_threshold)

    # ------------------------------------------------------------ text
    def describe(self, name: str, fork_step: int | None = None) -> str:
        """One line per arm, e.g. 'clamp at 1.15 x N0 from step 800, tau 1; forks trunk@800'."""
        a = self.arms[name]
        tau = _fmt_tau(a.tau)
        if a.trunk:
            kids = ", ".join(self.children(name))
            at = self.trunk_until(name)
            return (f"trunk: free from init to the fork point (step {fork_step if fork_step is not None else at}"
                    f"{'' if fork_step is not None else ', first eval step with every seed memorized'}), "
                    f"tau {tau}; shared state of {kids}")
        start = a.t_int if a.t_int is not None else (fork_step if fork_step is not None else
                                                     (a.fork_at if a.forked else 0))
        ref = {"n0": "N0", "w_c": "w_c", "alloc": "w_c"}.get(a.clamp)
        if a.clamp == "none":
            lever = "free (no clamp)"
        elif a.clamp == "absolute":
            lever = f"clamp at weight_norm {a.target:g} from step {start}"
        elif a.clamp == "alloc":
            lever = f"allocation clamp gamma {a.gamma:g} at {a.rho:g} x w_c from step {start}"
        else:
            lever = f"clamp at {a.rho:g} x {ref} from step {start}"
        if a.forked:
            at = fork_step if fork_step is not None else a.fork_at
            where = f"forks {a.parent}@{at}" + ("" if fork_step is not None or a.fork_when == "step"
                                                  else " (first eval step with all memorized)")
        else:
            where = "from init"
        return f"{lever}, tau {tau}; {where}"

    def trunk_until(self, name: str) -> int:
        return max(self.arms[c].fork_at for c in self.children(name))

    def render(self) -> str:
        """Dry-run listing: arms in run order with forks, derivations, members and budgets."""
        st, d = self.study, self.study.defaults
        n_members = sum(len(a.seeds) for a in self.arms.values())
        lines = [f"study {st.study} (design {st.design}, preset {st.preset or 'none'}) from {st.source}",
                 f"  task p={_ps(st)} op={d.task.op} train_fraction={d.task.train_fraction:g}; "
                 f"model {d.model.kind}; loss {d.loss}; {d.precision}; lr {d.optimizer.lr:g}, "
                 f"weight_decay {d.optimizer.weight_decay:g}; eval every {d.eval_every}, "
                 f"log every {d.log_every}",
                 f"  {len(self.arms)} arms, {n_members} members, seeds {d.seed_list()}; retire: {d.retire} "
                 f"({'every seed of an arm trains until all have grokked' if d.retire == 'arm' else 'each seed at its own t_grok'})",
                 "  run order (arm | design_role | members | budget | levers; edges):"]
        for name in self.order:
            a = self.arms[name]
            deps = f"; derives from {', '.join(a.deps)}" if a.deps else ""
            budget = f"to fork (<= {a.budget})" if a.trunk else f"{a.budget}"
            lines.append(f"    {name:<28} {a.role or '-':<14} {len(a.seeds):>3} members  budget {budget:<14} "
                         f"{self.describe(name)}{deps}")
        waves = self.waves()
        lines.append("  cohorts (each packs arms with the same shapes and start step):")
        for i, wave in enumerate(waves, 1):
            lines.append(f"    wave {i}: " + " | ".join(", ".join(g) for g in wave))
        return "\n".join(lines)

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
        return (self.cohort_key(name), a.parent, a.fork_at, a.fork_when, a.trunk)


def _fmt_tau(tau) -> str:
    if isinstance(tau, LogitMatched):
        return f"logit-matched to {tau.target}"
    return f"{tau:g}"


def _ps(st: Study) -> str:
    p = st.defaults.task.p
    return ",".join(map(str, p)) if isinstance(p, list) else str(p)


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


# ---------------------------------------------------------------- derived levers
def derive(graph: Graph, name: str, done: dict[str, dict]) -> dict:
    """Resolve the derived levers of arm `name` from finished arms (`done`: arm -> its state entry, with
    `results` and `summary`). Returns {lever: value, ...} with how each was derived; raises RuntimeError
    if impossible. Statistics: tracking.conventions (the analyses score the arms with the same ones)."""
    a, out = graph.arms[name], {}
    if isinstance(a.tau, LogitMatched):
        out["tau"], out["tau_source"] = logit_matched_tau(graph, a, done)
    if isinstance(a.w_c, NormAtGrok):
        ref = a.derive_from["w_c"][0]
        results = done[ref]["results"]
        w = conventions.w_c(results)
        if w is None:
            raise RuntimeError(f"arm {name}: w_c needs {ref} to grok in a majority of seeds; it did not")
        out["w_c"] = float(w)
        out["w_c_at_grok"] = conventions.median(r.get("weight_norm_at_grok") for r in results
                                                if conventions.grokked(r))
    return out


def _cell_L(summary: dict) -> float | None:
    """The cell's "L at grok" (tracking.conventions.l_at_grok), None without a grokking majority."""
    return summary.get("logit_scale_at_grok") if summary.get("majority") else None


def logit_matched_tau(graph: Graph, node: ArmNode, done: dict[str, dict]) -> tuple[float, str]:
    """Interpolate tau at the target's "L at grok" over the sweep arms' (L at grok, tau) points."""
    target, sweep = node.derive_from["tau_target"][0], node.derive_from["tau"]
    L_target = _cell_L(done[target]["summary"])
    if L_target is None:
        raise RuntimeError(f"arm {node.name}: {target} did not grok in a majority of seeds; "
                           "no logit_scale to match")
    pts = []
    for s in sweep:
        L = _cell_L(done[s]["summary"])
        if L is not None:
            pts.append((L, float(graph.arms[s].tau)))
    if len(pts) < 2:
        raise RuntimeError(f"arm {node.name}: fewer than two sweep arms grokked in a majority of seeds "
                           f"({len(pts)}); cannot interpolate tau")
    pts.sort()
    L, tau = np.array([x for x, _ in pts]), np.array([t for _, t in pts])
    how = "interpolated"
    if L_target < L[0] or L_target > L[-1]:
        # outside the sweep: extend the nearest segment linearly (said in tau_source)
        i = 0 if L_target < L[0] else len(L) - 2
        value = tau[i] + (tau[i + 1] - tau[i]) * (L_target - L[i]) / (L[i + 1] - L[i])
        how = "extrapolated"
    else:
        value = float(np.interp(L_target, L, tau))
    value = float(value)
    if not value > 0:
        raise RuntimeError(f"arm {node.name}: logit-matched tau came out {value:.3g} (not > 0)")
    src = (f"derived:logit_matched(target={target} L={L_target:.4g}, {how} over "
           f"{len(pts)} sweep arms {','.join(sweep)})")
    return round(value, 6), src


# ---------------------------------------------------------------- picture
def draw_graph(graph: Graph, path, fork_steps: dict | None = None) -> None:
    """PNG of the graph: arms as boxes by dependency depth, fork edges solid, derivation edges dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth: dict[str, int] = {}
    for n in graph.order:
        depth[n] = 1 + max((depth[u] for u in graph.upstream(n)), default=-1)
    cols: dict[int, list[str]] = {}
    for n in graph.order:
        cols.setdefault(depth[n], []).append(n)
    tall = max(len(v) for v in cols.values())
    pos = {n: (3.2 * d, (len(names) - 1) / 2 - i) for d, names in cols.items() for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(3.4 * len(cols) + 1, 0.62 * tall + 1.4))
    boxes = {}
    for n, (x, y) in pos.items():
        a = graph.arms[n]
        lever = "trunk" if a.trunk else ("free" if a.clamp == "none" else f"{a.clamp} x{a.rho:.4g}")
        tau = "tau*" if isinstance(a.tau, LogitMatched) else f"tau {a.tau:g}"
        boxes[n] = ax.text(x, y, f"{n}\n{lever}, {tau}", ha="center", va="center", fontsize=7,
                           bbox=dict(boxstyle="round,pad=0.3", fc="#dce9f5" if a.forked or a.trunk
                                     else "#f5e6dc", ec="black", lw=0.6))
    for src, dst, kind in graph.edges():
        ax.annotate("", xy=(0, 0.5), xycoords=boxes[dst], xytext=(1, 0.5), textcoords=boxes[src],
                    arrowprops=dict(arrowstyle="->", lw=0.8, color="black" if kind == "fork" else "grey",
                                    ls="-" if kind == "fork" else "--", shrinkA=4, shrinkB=4))
    note = "solid: fork (state)   dashed: derived lever (data)"
    if fork_steps:
        note += "   forks: " + ", ".join(f"{k.rstrip('m')}={v}" for k, v in fork_steps.items())
    ax.set_title(f"{graph.study.study} ({graph.study.design})", fontsize=9)
    ax.text(0.5, -0.02, note, transform=ax.transAxes, ha="center", va="top", fontsize=7)
    ax.set_xlim(-1.6, 3.2 * (len(cols) - 1) + 1.6)
    ax.set_ylim(-(tall + 1) / 2, (tall + 1) / 2)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
