"""The intervention graph shown: one-line arm descriptions, the dry-run listing, and the picture graph.png."""
from __future__ import annotations

from interventions.registry import LEVERS
from interventions.study.graph import Graph
from interventions.study.schema import StudyBase as Study
from interventions.study.schema import entry_kwargs


RETIRE_TEXT = {"arm": "every seed of an arm trains until all have grokked", "member": "each seed at its own t_grok"}


def describe(graph: Graph, name: str, fork_step: int | None = None) -> str:
    """One line per arm, e.g. 'clamp at 1.15 x N0 from step 800, tau 1; forks trunk@800': each of its
    levers' phrase (registration order), then where it starts."""
    a = graph.arms[name]
    said = [(n, p) for n in LEVERS.in_order(a.levers) if (p := LEVERS.get(n).describe(a.levers[n], a, fork_step))]
    phrases = [p for _, p in said]
    d = graph.study.defaults
    if {"loss": a.loss, **a.loss_settings} != entry_kwargs("loss", d.loss):   # what the arm changes
        phrases.append(f"loss {_entry('loss', {'kind': a.loss, **a.loss_settings})}")
    if a.optimizer != d.optimizer.model_dump():
        phrases.append(f"optimizer {_entry('optimizer', a.optimizer)}")
    if a.trunk:
        kids = ", ".join(graph.children(name))
        at = graph.trunk_until(name)
        rest = [p for n, p in said if n != "clamp"]
        return (f"trunk: free from init to the fork point (step {fork_step if fork_step is not None else at}"
                f"{'' if fork_step is not None else ', first eval step with every seed memorized'}), "
                f"{', '.join(rest)}; shared state of {kids}")
    if a.forked:
        at = fork_step if fork_step is not None else a.fork_at
        where = f"forks {a.parent}@{at}" + ("" if fork_step is not None or a.fork_when == "step"
                                              else " (first eval step with all memorized)")
    else:
        where = "from init"
    return f"{', '.join(phrases)}; {where}"


def render(graph: Graph) -> str:
    """Dry-run listing: arms in run order with forks, derivations, members and budgets."""
    st, d = graph.study, graph.study.defaults
    n_members = sum(len(a.seeds) for a in graph.arms.values())
    lines = [f"study {st.study} (design {st.design}, preset {st.preset or 'none'}) from {st.source}",
             f"  task p={_ps(st)} op={d.task.op} train_fraction={d.task.train_fraction:g}; "
             f"model {_entry('model', d.model)}; loss {_entry('loss', d.loss)}; {d.precision}; "
             f"optimizer {_entry('optimizer', d.optimizer)}; eval every {d.eval_every}, log every {d.log_every}",
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


def _entry(kind: str, value) -> str:
    """`mlp (d_embed 128, d_hidden 256)`: a model, loss or optimizer section in a few words."""
    d = entry_kwargs(kind, value)
    name = d.pop(kind)
    return name + (f" ({', '.join(f'{k} {v:g}' if isinstance(v, float) else f'{k} {v}' for k, v in d.items())})" if d else "")


def _ps(st: Study) -> str:
    p = st.defaults.task.p
    return ",".join(map(str, p)) if isinstance(p, list) else str(p)


def picture(graph: Graph) -> dict:
    """What graph.png shows, as plain data (it is drawn in the tracking process): arms in dependency
    columns with a label each, the edges, the fork points, the title."""
    depth: dict[str, int] = {}
    for n in graph.order:
        depth[n] = 1 + max((depth[u] for u in graph.upstream(n)), default=-1)
    nodes = {}
    for n in graph.order:
        a = graph.arms[n]
        labels = [(k, lb) for k in LEVERS.in_order(a.levers) if (lb := LEVERS.get(k).label(a.levers[k]))]
        labels = (["trunk"] if a.trunk else []) + [lb for k, lb in labels if not (a.trunk and k == "clamp")]
        nodes[n] = {"depth": depth[n], "label": f"{n}\n{', '.join(labels)}", "forked": a.forked or a.trunk}
    forks = {a.fork.name: a.fork.label() for a in graph.arms.values() if a.forked}
    return {"nodes": nodes, "edges": graph.edges(), "forks": forks,
            "title": f"{graph.study.study} ({graph.study.design})"}


def draw_graph(pic: dict, path, fork_steps: dict | None = None) -> None:
    """PNG of a `picture`: arms as boxes by dependency depth, fork edges solid, derivation edges dashed."""
    from matplotlib.figure import Figure   # not pyplot: no global figure state, no backend to choose

    cols: dict[int, list[str]] = {}
    for n, node in pic["nodes"].items():
        cols.setdefault(node["depth"], []).append(n)
    tall = max(len(v) for v in cols.values())
    pos = {n: (3.2 * d, (len(names) - 1) / 2 - i) for d, names in cols.items() for i, n in enumerate(names)}
    fig = Figure(figsize=(3.4 * len(cols) + 1, 0.62 * tall + 1.4))
    ax = fig.subplots()
    boxes = {}
    for n, (x, y) in pos.items():
        node = pic["nodes"][n]
        boxes[n] = ax.text(x, y, node["label"], ha="center", va="center", fontsize=7,
                           bbox=dict(boxstyle="round,pad=0.3", fc="#dce9f5" if node["forked"] else "#f5e6dc",
                                     ec="black", lw=0.6))
    for src, dst, kind in pic["edges"]:
        ax.annotate("", xy=(0, 0.5), xycoords=boxes[dst], xytext=(1, 0.5), textcoords=boxes[src],
                    arrowprops=dict(arrowstyle="->", lw=0.8, color="black" if kind == "fork" else "grey",
                                    ls="-" if kind == "fork" else "--", shrinkA=4, shrinkB=4))
    note = "solid: fork (state)   dashed: derived lever (data)"
    if fork_steps:
        note += "   forks: " + ", ".join(f"{pic['forks'][k]}={v}" for k, v in fork_steps.items() if k in pic["forks"])
    ax.set_title(pic["title"], fontsize=9)
    ax.text(0.5, -0.02, note, transform=ax.transAxes, ha="center", va="top", fontsize=7)
    ax.set_xlim(-1.6, 3.2 * (len(cols) - 1) + 1.6)
    ax.set_ylim(-(tall + 1) / 2, (tall + 1) / 2)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
