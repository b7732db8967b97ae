"""A cohort's plain records: its configs in; per member, what it leaves behind (MemberRecord, MemberState).

Also the rules read off records: t_mem / t_grok (`detect_times`, `MemberRecord.observe`) and when a member
retires (`Retirement`). Member keys are opaque hashables (a MemberKey in a study, strings in tests): compared,
never parsed. Steps are 1-based (see cohort.py).
"""
from __future__ import annotations

import copy
from collections.abc import Hashable
from dataclasses import asdict, dataclass, field

import torch

from tracking.conventions import GROK_THRESHOLD, MEM_THRESHOLD

from interventions.engine.config import CohortConfig
from interventions.registry import LEVERS
from interventions.vocab import Levers

# the at-grok values a forked member keeps from its parent
INHERITED = ("t_mem", "t_grok", "logit_scale_at_grok", "weight_norm_at_grok", "test_acc_at_grok")


@dataclass
class MemberConfig:
    """One member = one (arm, seed): its levers (vocab.Levers, resolved) and when it stops."""
    key: Hashable  # unique in the cohort (a MemberKey in a study, any hashable in tests)
    seed: int  # init + split seed
    lever: Levers = field(default_factory=Levers)
    budget: int = 20000  # max step
    margin: int = 0  # steps to keep training after t_grok before retiring
    retire_group: str | None = None  # `retire: arm`: retire together, once every member of it has grokked

    def __post_init__(self):
        if self.budget < 1 or self.margin < 0:
            raise ValueError(f"member {self.key!r}.budget/margin: need budget >= 1, margin >= 0; got "
                             f"{self.budget}, {self.margin}")
        for name, s in self.lever.items():
            why = LEVERS.get(name).incomplete(s)
            if why:
                raise ValueError(f"member {self.key!r}: lever.{why}")

    def to_dict(self) -> dict:
        return {"key": self.key, "seed": self.seed, "lever": self.lever.to_dict(), "budget": self.budget,
                "margin": self.margin, "retire_group": self.retire_group}

    @classmethod
    def from_dict(cls, d: dict) -> "MemberConfig":
        return cls(**{**d, "lever": Levers.from_dict(d["lever"])})


@dataclass
class MemberState:
    """One member's complete state: enough to continue it bit-identically or to fork it."""
    member: MemberConfig
    cohort: CohortConfig
    step: int
    adam_step: int   # the optimizer's step count
    params: dict[str, torch.Tensor]  # without the member dim
    opt_state: dict[str, dict[str, torch.Tensor]]  # the optimizer's buffers {name: {param: tensor}}
    train_idx: torch.Tensor  # sorted flat pair indices a * vocab + b of the training split
    record: dict = field(default_factory=dict)  # its MemberRecord as plain data (MemberRecord.to_dict)
    lever_state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # what forks carry

    def to_dict(self) -> dict:
        return {"member": self.member.to_dict(), "cohort": self.cohort.to_dict(), "step": self.step,
                "adam_step": self.adam_step, "params": self.params, "opt_state": self.opt_state,
                "train_idx": self.train_idx, "record": self.record, "lever_state": self.lever_state}

    @classmethod
    def from_dict(cls, d: dict) -> "MemberState":
        opt = d.get("opt_state") or {"exp_avg": d["exp_avg"], "exp_avg_sq": d["exp_avg_sq"]}   # format 2: AdamW's
        return cls(member=MemberConfig.from_dict(d["member"]), cohort=CohortConfig(**d["cohort"]), step=d["step"],
                   adam_step=d["adam_step"], params=d["params"], opt_state=opt, train_idx=d["train_idx"],
                   record=d["record"], lever_state=d.get("lever_state", {}))

    def check_fits(self, cfg: CohortConfig, key: Hashable) -> None:
        """Raises unless this state has the shapes of cohort `cfg` (restored there as member `key`)."""
        mine, theirs = self.cohort.shape(), cfg.shape()
        for k in dict.fromkeys([*mine, *theirs]):
            if mine.get(k) != theirs.get(k):
                raise ValueError(f"cohort.init[{key}]: state of {self.member.key!r} has {k}={mine.get(k)!r}, "
                                 f"this cohort {theirs.get(k)!r}")


def check_start(members: list[MemberConfig], init: list[MemberState | None] | None
                ) -> tuple[list[MemberState | None], tuple[int, int]]:
    """A cohort's members and initial states (None: fresh), checked; returns the states, one per member,
    and the (step, adam_step) they share."""
    if not members:
        raise ValueError("cohort: no members")
    keys = [m.key for m in members]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"cohort.members: duplicate keys {dup}")
    init = list(init) if init is not None else [None] * len(members)
    if len(init) != len(members):
        raise ValueError(f"cohort.init: {len(init)} states for {len(members)} members")
    fresh = [s is None for s in init]
    if any(fresh) and not all(fresh):
        raise ValueError("cohort.init: mixes fresh members and restored states (members share one step)")
    steps = {(s.step, s.adam_step) for s in init if s is not None}
    if len(steps) > 1:
        raise ValueError(f"cohort.init: states at different steps {sorted(steps)} (members share one step)")
    return init, (steps.pop() if steps else (0, 0))


def detect_times(evals: list[tuple[int, float, float]], mem_threshold: float = MEM_THRESHOLD,
                 grok_threshold: float = GROK_THRESHOLD) -> tuple[int | None, int | None]:
    """(t_mem, t_grok) of an eval series [(step, train acc, test acc), ...] in step order (docs/statistics.md, t_mem and t_grok):
    the first evaluated step with train acc >= mem_threshold, and with test acc >= grok_threshold."""
    t_mem = next((t for t, tr, _ in evals if tr >= mem_threshold), None)
    t_grok = next((t for t, _, te in evals if te >= grok_threshold), None)
    return t_mem, t_grok


@dataclass
class MemberRecord:
    """One member's bookkeeping: summary times and values (None until reached), status, evals, curves."""
    key: Hashable
    seed: int
    t_mem: int | None = None
    t_grok: int | None = None
    logit_scale_at_grok: float | None = None
    weight_norm_at_grok: float | None = None
    test_acc_at_grok: float | None = None   # what a checkpoint at t_grok reproduces (checkpoints.py)
    diverged: bool = False
    N0: float | None = None  # clamp: the norm entering the first clamped step, and the norm held
    target: float | None = None
    final_step: int | None = None
    retired_at: int | None = None
    retire_reason: str | None = None  # grokked | budget | diverged
    start_step: int = 0
    fork_from: Hashable | None = None  # the key of the member state it started from, and that state's step
    fork_step: int | None = None
    retire_group: str | None = None
    evals: list[tuple[int, float, float]] = field(default_factory=list)  # (step, train acc, test acc)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # MLflow key -> (step, value)

    @classmethod
    def start(cls, m: MemberConfig, step: int, fork: MemberState | None = None) -> "MemberRecord":
        """A member's record at the cohort's first step; a restored state passes on INHERITED values."""
        rec = cls(key=m.key, seed=m.seed, start_step=step, retire_group=m.retire_group)
        if fork is not None:
            src = fork.record or {}
            for k in INHERITED:
                setattr(rec, k, src.get(k))
            rec.fork_from, rec.fork_step = fork.member.key, fork.step
        return rec

    def to_dict(self) -> dict:
        """Plain data (a deep copy), as snapshots store it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MemberRecord":
        return cls(**copy.deepcopy(d))

    def observe(self, t: int, train_acc: float, test_acc: float, logit_scale: float, weight_norm: float,
                mem_threshold: float, grok_threshold: float) -> None:
        """An evaluation at step t: appended to evals; sets t_mem, t_grok (and the values at grok) once."""
        self.evals.append((t, train_acc, test_acc))
        t_mem, t_grok = detect_times([(t, train_acc, test_acc)], mem_threshold, grok_threshold)
        if self.t_mem is None and t_mem is not None:
            self.t_mem = t
        if self.t_grok is None and t_grok is not None:
            self.t_grok = t
            self.logit_scale_at_grok = logit_scale
            self.weight_norm_at_grok = weight_norm
            self.test_acc_at_grok = test_acc

    def log(self, t: int, row: dict[str, float]) -> None:
        """Curve values at step t (a step already logged is not logged again)."""
        for k, v in row.items():
            series = self.curves.setdefault(k, [])
            if not series or series[-1][0] != t:
                series.append((t, v))

    def result(self, step: int) -> dict:
        """Summary metrics and status as plain data; `step`: the cohort's, for a member still training."""
        tm, tg = self.t_mem, self.t_grok
        norm = self.curves.get("norm/total")
        return {"key": self.key, "seed": self.seed, "t_mem": tm, "t_grok": tg,
                "delay": tg - tm if tm is not None and tg is not None else None,
                "grokked": tg is not None, "diverged": self.diverged,
                "logit_scale_at_grok": self.logit_scale_at_grok, "weight_norm_at_grok": self.weight_norm_at_grok,
                "test_acc_at_grok": self.test_acc_at_grok, "weight_norm_final": norm[-1][1] if norm else None,
                "layer_norms_final": {k[5:]: v[-1][1] for k, v in self.curves.items()
                                      if k.startswith("norm/") and k != "norm/total" and v},
                "N0": self.N0,
                "target": self.target, "final_step": self.final_step or step,
                "retired_at": self.retired_at, "retire_reason": self.retire_reason,
                "start_step": self.start_step, "fork_from": self.fork_from, "fork_step": self.fork_step,
                "last_logged": max((v[-1][0] for v in self.curves.values() if v), default=None)}


class Retirement:
    """When a member retires, read off the cohort's records (which never shrink, so a retire group's
    members are looked up once)."""

    def __init__(self, records: dict[Hashable, MemberRecord]):
        self.records = records
        self.groups: dict[str, list[Hashable]] = {}  # retire_group -> member keys

    def grok_end(self, m: MemberConfig) -> int | None:
        """Step at which member m retires as grokked: its t_grok + margin; with a retire_group (retire:
        arm), the group's last t_grok + margin once every member of it has grokked or diverged."""
        if m.retire_group is None:
            t_grok = self.records[m.key].t_grok
            return None if t_grok is None else t_grok + m.margin
        keys = self.groups.get(m.retire_group)
        if keys is None:
            keys = self.groups[m.retire_group] = [
                k for k, r in self.records.items() if r.retire_group == m.retire_group or k == m.key]
        recs = [self.records[k] for k in keys]
        if any(r.t_grok is None and not r.diverged for r in recs):
            return None
        return max((r.t_grok for r in recs if r.t_grok is not None), default=0) + m.margin

    def reason(self, m: MemberConfig, t: int) -> str | None:
        """Why member m retires at step t (diverged | grokked | budget), or None: it trains on."""
        if self.records[m.key].diverged:
            return "diverged"
        end = self.grok_end(m)
        if end is not None and t >= end:
            return "grokked"
        if t >= m.budget:
            return "budget"
        return None
