"""The plan: from the graph and the study's state to cohort jobs (plain data): which arms share a cohort,
their members with their resolved levers, the pauses at their children's fork points, and the MLflow
params of every arm (each lever's own)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from interventions.engine.backends import choose
from interventions.engine.cohort import CohortConfig, MemberConfig
from interventions.engine.task import make_task
from interventions.execution.jobs import CohortJob, Pause
from interventions.kinds import Lever
from interventions.registry import LEVERS, OPTIMIZERS
from interventions.study.graph import Graph
from interventions.study.schema import entry_kwargs
from interventions.vocab import Levers, MemberKey


def params(graph: Graph, name: str, levers: Levers, fork_step: int | None, derived: dict) -> dict:
    """Identical keys on every arm and member run of a study (the MLflow contract): the task, model, loss,
    optimizer and budgets, the params of every lever some arm of the study names (levers.params), and where
    the arm's w_c came from (`given`, or derived: study.derive) with its interval (`derived`: the arm's
    derived settings)."""
    a, st = graph.arms[name], graph.study
    d = st.defaults
    opt = entry_kwargs("optimizer", a.optimizer)
    out = {"arm": name, "p": a.p, "op": d.task.op, "model": d.model.kind, "loss": a.loss, "precision": a.precision,
           "optimizer": opt["optimizer"], "train_fraction": d.task.train_fraction, "lr": opt.get("lr"),
           "weight_decay": opt.get("weight_decay"), "budget": a.budget, "eval_every": d.eval_every,
           "fork_from": a.parent, "fork_step": fork_step, "design": st.design, "design_role": a.role or None,
           "retire": a.retire, "w_c_at_grok": derived.get("w_c_at_grok")}
    # every loss setting any arm has (None where this arm's loss has none); the optimizer's where arms differ
    arms = graph.arms.values()
    out.update({f"loss.{k}": a.loss_settings.get(k) for b in arms for k in b.loss_settings})
    if any(b.optimizer != a.optimizer for b in arms):
        out.update({f"optimizer.{k}": opt.get(k) for b in arms for k in entry_kwargs("optimizer", b.optimizer)
                    if k not in ("optimizer", "lr", "weight_decay")})
    for n in graph.levers_used():
        out.update(LEVERS.get(n).params(levers.settings(n)))
    given = out.get("w_c") is not None and all(k != "w_c" for _, k in a.derived)   # a number (study file, --set)
    out.update(w_c_source="given" if given else derived.get("w_c_source"), w_c_ci_low=derived.get("w_c_ci_low"),
               w_c_ci_high=derived.get("w_c_ci_high"))
    return out


def fork_carry(graph: Graph, name: str) -> dict[str, str]:
    """What a forked arm's members take from their parent's (tags `fork.carried`, `fork.dropped`): the
    parameters; the optimizer buffers both optimizers keep (a buffer only the arm's has starts at zero, the
    step count carried); the state of a lever active in both arms that keeps per-member state."""
    a = graph.arms[name]
    if not a.forked:
        return {}
    p = graph.arms[a.parent]
    buffers = [_state_names(x.optimizer) for x in (p, a)]
    levers = [{n for n, s in x.levers.items() if s.active() and _keeps_state(n)} for x in (p, a)]
    carried = ["parameters"] + [b for b in buffers[1] if b in buffers[0]] + sorted(levers[0] & levers[1])
    dropped = [b for b in buffers[0] if b not in buffers[1]] + sorted(levers[0] - levers[1])
    dropped += [f"{b} (starts at zero)" for b in buffers[1] if b not in buffers[0]]
    return {"fork.carried": ", ".join(carried), "fork.dropped": ", ".join(dropped) or "nothing"}


def _state_names(optimizer: dict) -> tuple[str, ...]:
    entry = OPTIMIZERS.get(optimizer["kind"])
    return entry(entry.Settings(**{k: v for k, v in optimizer.items() if k != "kind"})).state_names


def _keeps_state(lever: str) -> bool:
    cls = LEVERS.get(lever)
    return cls.fork_state and cls.state_dict is not Lever.state_dict


def kernels(graph: Graph, name: str, device: str) -> str:
    """Which path trains arm `name` (engine.backends.choose): native | aten (fast paths) | generic."""
    active = [n for n, s in graph.arms[name].levers.items() if s.active()]
    return choose(cohort_config(graph, name, device), active)[0].kernels


def split_by_path(graph: Graph, arms: list[str], device: str) -> list[list[str]]:
    """A cohort group as groups of arms trained by the same path: a member's arithmetic must not depend on
    its cohort-mates, so arms that need the generic path never pull others off a fast one."""
    paths: dict[str, list[str]] = {}
    for n in arms:
        paths.setdefault(kernels(graph, n, device), []).append(n)
    return list(paths.values())


def members(graph: Graph, name: str, levers: Levers) -> list[MemberConfig]:
    a = graph.arms[name]
    margin = a.margin
    if a.trunk or graph.children(name):   # a parent lives on to its children's fork points
        margin = max(margin, a.budget)
    group = name if a.retire == "arm" and margin < a.budget else None
    return [MemberConfig(key=MemberKey(name, seed), seed=seed, lever=levers, budget=a.budget, margin=margin,
                         retire_group=group) for seed in a.seeds]


def cohort_config(graph: Graph, name: str, device: str) -> CohortConfig:
    return CohortConfig(**graph.cohort_settings(name), device=device)


def pauses(graph: Graph, arms: list[str], forks: dict[str, int]) -> list[Pause]:
    """Fork points of these arms' children; one already recorded (in `forks`) is replayed exactly, to the
    same step, when the cohort runs again from before it."""
    out = {}
    for child in graph.arms.values():
        f = child.fork
        if f is None or f.arm not in arms or f.name in out:
            continue
        recorded = forks.get(f.name)
        out[f.name] = Pause(f, recorded, True) if recorded is not None else Pause(f, f.at)
    return list(out.values())


def dataset(graph: Graph, name: str, seeds: list[int]) -> dict:
    """The task of arm `name` as an MLflow dataset (Recorder.log_dataset): named like add_mod59_tf0.40,
    digested over the task and the split seeds (a member's split is drawn from its seed), sized."""
    cfg = cohort_config(graph, name, "cpu")
    task = make_task(cfg.p, cfg.op)
    n_train = task.n_train(cfg.train_fraction)
    source = {"op": cfg.op, "p": cfg.p, "train_fraction": cfg.train_fraction, "split_seeds": list(seeds)}
    return {"name": f"{cfg.op}_mod{cfg.p}_tf{cfg.train_fraction:.2f}",
            "digest": hashlib.sha1(json.dumps(source, sort_keys=True).encode()).hexdigest()[:12],
            "source": source, "profile": {"train_pairs": n_train, "test_pairs": task.n_pairs - n_train}}


def split_group(graph: Graph, arms: list[str], parts: int) -> list[list[str]]:
    """A cohort group as up to `parts` groups of whole arms with about equal member counts, for an
    executor that runs jobs side by side. Exact: a member's arithmetic does not depend on its cohort-mates
    and retirement groups are arms."""
    parts = min(parts, len(arms))
    if parts <= 1:
        return [arms]
    bins: list[list[str]] = [[] for _ in range(parts)]
    load = [0] * parts
    for n in sorted(arms, key=lambda n: -len(graph.arms[n].seeds)):   # largest first, to the lightest bin
        i = load.index(min(load))
        bins[i].append(n)
        load[i] += len(graph.arms[n].seeds)
    return [sorted(b, key=arms.index) for b in bins]


def job_id(arms: list[str]) -> str:
    h = hashlib.sha1("|".join(arms).encode()).hexdigest()[:8]
    return f"{arms[0]}+{len(arms) - 1}-{h}" if len(arms) > 1 else f"{arms[0]}-{h}"


def cohort_job(graph: Graph, arms: list[str], levers: dict[str, Levers], forks: dict[str, int], folder: Path,
               device: str) -> CohortJob:
    """The job of one cohort group (arms with the same shapes and start point; graph.waves)."""
    jid, first = job_id(arms), graph.arms[arms[0]]
    f = first.fork
    return CohortJob(id=jid, cfg=cohort_config(graph, arms[0], device),
                     members=[m for n in arms for m in members(graph, n, levers[n])],
                     fork_file=folder / "forks" / f"{f.name}.pt" if f else None,
                     checkpoint_file=folder / "cohorts" / f"{jid}.pt", pauses=pauses(graph, arms, forks),
                     stop_after_pauses=all(graph.arms[n].trunk for n in arms),
                     checkpoint_every=graph.study.defaults.checkpoint_every,
                     save=graph.study.defaults.save.kinds())
