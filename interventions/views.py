"""The intervention graph shown: one-line arm descriptions, the dry-run listing, and the picture graph.png."""
from __future__ import annotations

from .graph import Graph
from .schema import LogitMatched, Study


RETIRE_TEXT = {"arm": "every seed of an arm trains until all have grokked", "member": "each seed at its own t_grok"}


def describe(graph: Graph, name: str, fork_step: int | None = None) -> str:
    """One line per arm, e.g. 'clamp at 1.15 x N0 from step 800, tau 1; forks trunk@800'."""
    a = graph.arms[name]
    tau = _fmt_tau(a.tau)
    if a.trunk:
        kids = ", ".join(graph.children(name))
        at = graph.trunk_until(name)
        return (f"trunk: free from init to the fork point (step {fork_step if fork_step is not None else at}"
                f"{'' if fork_step is not None else ', first eval step with every seed memorized'}), "
                f"tau {tau}; shared state of {kids}")
    start = a.clamp_start(fork_step)
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


def render(graph: Graph) -> str:
    """Dry-run listing: arms in run order with forks, derivations, members and budgets."""
    st, d = graph.study, graph.study.defaults
    n_members = sum(len(a.seeds) for a in graph.arms.values())
    lines = [f"study {st.study} (design {st.design}, preset {st.preset or 'none'}) from {st.source}",
             f"  task p={_ps(st)} op={d.task.op} train_fraction={d.task.train_fraction:g}; "
             f"model {d.model.kind}; loss {d.loss}; {d.precision}; lr {d.optimizer.lr:g}, "
             f"weight_decay {d.optimizer.weight_decay:g}; eval every {d.eval_every}, "
             f"log every {d.log_every}",
             f"  {len(graph.arms)} arms, {n_members} members, seeds {d.seed_list()}; retire: {d.retire} "
             f"({RETIRE_TEXT[d.retire]})",
             "  run order (arm | design_role | members | budget | levers; edges):"]
    for name in graph.order:
        a = graph.arms[name]
        deps = f"; derives from {', '.join(a.deps)}" if a.deps else ""
        budget = f"to fork (<= {a.budget})" if a.trunk else f"{a.budget}"
        lines.append(f"    {name:<28} {a.role or '-':<14} {len(a.seeds):>3} members  budget {budget:<14} "
                     f"{describe(graph, name)}{deps}")
    waves = graph.waves()
    lines.append("  cohorts (each packs arms with the same shapes and start step):")
    for i, wave in enumerate(waves, 1):
        lines.append(f"    wave {i}: " + " | ".join(", ".join(g) for g in wave))
    return "\n".join(lines)


def _fmt_tau(tau) -> str:
    if isinstance(tau, LogitMatched):
        return f"logit-matched to {tau.target}"
    return f"{tau:g}"


def _ps(st: Study) -> str:
    p = st.defaults.task.p
    return ",".join(map(str, p)) if isinstance(p, list) else str(p)


def draw_graph(graph: Graph, path, fork_steps: dict | None = None) -> None:
    """PNG of the graph: arms as boxes by dependency depth, fork edges solid, derivation edges dashed."""
    from matplotlib.figure import Figure   # not pyplot: no global figure state, no backend to choose

    depth: dict[str, int] = {}
    for n in graph.order:
        depth[n] = 1 + max((depth[u] for u in graph.upstream(n)), default=-1)
    cols: dict[int, list[str]] = {}
    for n in graph.order:
        cols.setdefault(depth[n], []).append(n)
    tall = max(len(v) for v in cols.values())
    pos = {n: (3.2 * d, (len(names) - 1) / 2 - i) for d, names in cols.items() for i, n in enumerate(names)}
    fig = Figure(figsize=(3.4 * len(cols) + 1, 0.62 * tall + 1.4))
    ax = fig.subplots()
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
        points = {a.fork.name: a.fork for a in graph.arms.values() if a.forked}
        note += "   forks: " + ", ".join(f"{points[k].label()}={v}" for k, v in fork_steps.items() if k in points)
    ax.set_title(f"{graph.study.study} ({graph.study.design})", fontsize=9)
    ax.text(0.5, -0.02, note, transform=ax.transAxes, ha="center", va="top", fontsize=7)
    ax.set_xlim(-1.6, 3.2 * (len(cols) - 1) + 1.6)
    ax.set_ylim(-(tall + 1) / 2, (tall + 1) / 2)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
