"""A cohort's snapshot: its complete state as plain tensors and Python data (torch.save-able), and the
cohort back from one, bit for bit (format 3; a format-2 snapshot of the paper's engine loads too). A
snapshot names the plug-ins it needs; loading imports them or says which one is missing."""
from __future__ import annotations

import copy

import torch

from interventions.engine.config import CohortConfig
from interventions.engine.records import MemberConfig, MemberRecord, MemberState, Retirement
from interventions.registry import LEVERS, LOSSES, MODELS, OPTIMIZERS, TASKS, origins, require

FORMAT = "interventions.cohort/3"  # 3: registered plug-ins; levers and optimizer state by name


def state_dict(c) -> dict:
    """Complete state (plain tensors and python data, torch.save-able) for a bit-identical resume."""
    clone = lambda d: {k: v.clone() for k, v in d.items()}  # noqa: E731
    return {"format": FORMAT, "cfg": c.cfg.to_dict(), "step": c.step, "start_step": c.start_step,
            "adam_step": c.adam_step, "members": [m.to_dict() for m in c.members],
            "params": clone(c.P), "opt_state": {b: clone(d) for b, d in c.S.items()},
            "train_idx": c.train_idx.clone(),
            "levers": {n: clone(lv.state_dict()) for n, lv in c.levers.items()},
            "records": {k: r.to_dict() for k, r in c.records.items()},
            "retired": {k: v.to_dict() for k, v in copy.deepcopy(c.retired).items()},
            "save_at_grok": c.save_at_grok, "at_grok": {k: clone(v) for k, v in c.at_grok.items()},
            "torch_threads": torch.get_num_threads(), "plugins": plugins(c)}


def plugins(c) -> dict[str, str]:
    """{module: version} of the plug-ins (not bundled) a cohort's task, model, loss, optimizer and levers
    come from: what its snapshot needs when loaded."""
    cfg = c.cfg
    return origins([(TASKS, cfg.op), (MODELS, cfg.model), (LOSSES, cfg.loss), (OPTIMIZERS, cfg.optimizer),
                    *((LEVERS, n) for n in c.levers)])


def from_state(cls, state: dict):
    """The cohort (of class `cls`) a state_dict describes."""
    got = state.get("format") if isinstance(state, dict) else type(state).__name__
    if got not in (FORMAT, "interventions.cohort/2"):
        raise ValueError(f"cohort state: not a {FORMAT} state (format: {got!r})")
    if got != FORMAT:   # format 2: AdamW's moments and the clamp's state under their own keys
        state = {**state, "opt_state": {"exp_avg": state["exp_avg"], "exp_avg_sq": state["exp_avg_sq"]},
                 "levers": {"clamp": state["clamp"]}}
    require(state.get("plugins"), "this cohort snapshot")
    c = cls.__new__(cls)
    c._setup(CohortConfig(**state["cfg"]))
    c.step, c.start_step, c.adam_step = state["step"], state["start_step"], state["adam_step"]
    c.members = [MemberConfig.from_dict(m) for m in state["members"]]
    dev = c.device
    c.P = {k: v.clone().to(dev) for k, v in state["params"].items()}
    c.S = {b: {k: v.clone().to(dev) for k, v in d.items()} for b, d in state["opt_state"].items()}
    c.train_idx = state["train_idx"].clone().to(dev)
    c.records = {k: MemberRecord.from_dict(v) for k, v in state["records"].items()}
    c.retirement = Retirement(c.records)
    c.retired = {k: MemberState.from_dict(v) for k, v in copy.deepcopy(state["retired"]).items()}
    c.save_at_grok = state.get("save_at_grok", False)
    c.at_grok = {k: {n: t.clone().to(dev) for n, t in v.items()} for k, v in state.get("at_grok", {}).items()}
    c._make_levers([None] * len(c.members))
    for n, lv in c.levers.items():
        lv.load_state_dict({k: v.clone().to(dev) for k, v in state["levers"].get(n, {}).items()})
    c._rebuild()
    return c
