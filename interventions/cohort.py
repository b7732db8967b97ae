"""The cohort loop: members (arm x seed) of one shape trained as one batched tensor program.

Parameters and Adam moments are (M, ...) tensors, row m = member m. The loop cuts training into chunks of
steps that need no cohort-wide decision; its backend (backends/: ATen, or for the float32 MLP on a CPU the
compiled kernels, `kernels`) runs a chunk's steps (per member group: full-batch forward and backward on its
own training pairs, AdamW, then the clamp of levers.py) and the evaluation over all p^2 pairs. Every
`eval_every` steps the evaluation gives train/test accuracy -> t_mem, t_grok (records.py); every `log_every`
steps (and at the cohort's first step and a member's last) the curves. Members retire (grokked + margin,
budget, or diverged: NaN/inf loss or weights): their final state and records are kept and their rows leave
the tensors, so they stop costing compute. Nothing is mixed across members, so a member's arithmetic does
not depend on who else is in the cohort.

Steps are 1-based: "step t" is the state after t optimizer steps (and the clamp of step t).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Hashable
from dataclasses import asdict, fields
from typing import Callable

import torch

from . import backends, levers, models, tasks
from .records import (CohortConfig, MemberConfig, MemberRecord, MemberState, Retirement, check_start,
                      detect_times)

__all__ = ["Cohort", "CohortConfig", "MemberConfig", "MemberRecord", "MemberState", "detect_times"]

FORMAT = "interventions.cohort/2"  # 2: members carry a levers.Lever


class Cohort:
    """Members of one CohortConfig, trained together from one step; see the module doc."""

    def __init__(self, cfg: CohortConfig, members: list[MemberConfig],
                 init: list[MemberState | None] | None = None):
        init, (self.step, self.adam_step) = check_start(members, init)
        self._setup(cfg)
        self.start_step = self.step
        self.members = list(members)
        self.records: dict[Hashable, MemberRecord] = {}
        self.retired: dict[Hashable, MemberState] = {}
        self.save_at_grok = False   # keep each member's parameters at its t_grok in `at_grok`
        self.at_grok: dict[Hashable, dict[str, torch.Tensor]] = {}
        rows = []
        for m, s in zip(members, init):
            if s is None:
                rows.append(self._fresh(m))
            else:
                s.check_fits(cfg, m.key)
                rows.append((s.params, s.exp_avg, s.exp_avg_sq, s.train_idx))
            self.records[m.key] = MemberRecord.start(m, self.step, fork=s)
        self.retirement = Retirement(self.records)
        dev, dt = self.device, self.dtype
        self.P = {n: torch.stack([r[0][n] for r in rows]).to(dev, dt).contiguous() for n in self.names}
        self.m1 = {n: torch.stack([r[1][n] for r in rows]).to(dev, dt).contiguous() for n in self.names}
        self.m2 = {n: torch.stack([r[2][n] for r in rows]).to(dev, dt).contiguous() for n in self.names}
        self.train_idx = torch.stack([r[3] for r in rows]).to(dev)
        self.clamp = levers.Clamp(members, self.matrices, self.model.alloc_layers, self.start_step, dev)
        self._rebuild()

    # ---- construction helpers -------------------------------------------------------------------
    def _setup(self, cfg: CohortConfig) -> None:
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.dtype = levers.DTYPES[cfg.precision]
        self.model = models.build(cfg)
        self.task = tasks.make_task(cfg.p, cfg.op)
        self.labels = self.task.labels.clamp(min=0).to(self.device)
        self.valid = self.task.valid.to(self.device)
        self.names = [s.name for s in self.model.specs]
        self.matrices = [s.name for s in self.model.specs if s.matrix]
        self.backend = backends.select(cfg)
        self.kernels = self.backend.kernels  # "native" (the compiled kernels) or "aten"

    def _fresh(self, m: MemberConfig):
        gen = torch.Generator().manual_seed(m.seed)
        train_idx = tasks.split(self.task, self.cfg.train_fraction, gen)  # split first, then the init
        params = models.init_member(self.model.specs, gen, self.dtype)
        zeros = {n: torch.zeros_like(t) for n, t in params.items()}
        return params, zeros, {n: t.clone() for n, t in zeros.items()}, train_idx

    def _rebuild(self) -> None:
        """Derived per-member tensors, then the backend's (member groups, ...); after construction and after
        every compaction."""
        M = len(self.members)
        self.tau = torch.tensor([m.lever.tau for m in self.members], dtype=self.dtype, device=self.device)
        self.inv_tau = 1.0 / self.tau
        n = self.cfg.p * self.cfg.p
        self.train_mask = torch.zeros(M, n, dtype=torch.bool, device=self.device)
        self.train_mask.scatter_(1, self.train_idx, True)
        self.test_mask = self.valid.unsqueeze(0) & ~self.train_mask
        self.backend.rebuild(self)

    # ---- the step -------------------------------------------------------------------------------
    def _chunk_end(self, until: int | None, checkpoint_every: int | None) -> int:
        """Last step of the next chunk: the steps before it need no cohort-wide decision (no eval, log,
        checkpoint, clamp resolution, budget or grok-margin retirement, `until`)."""
        t, cfg = self.step, self.cfg
        ends = [(t // cfg.eval_every + 1) * cfg.eval_every, (t // cfg.log_every + 1) * cfg.log_every]
        if t == self.start_step:
            ends.append(t + 1)  # a cohort's first step is logged
        if until is not None:
            ends.append(until)
        if checkpoint_every:
            ends.append((t // checkpoint_every + 1) * checkpoint_every)
        for m in self.members:
            ends.append(m.budget)
            done = self.retirement.grok_end(m)
            if done is not None and done > t:
                ends.append(done)
        later = (self.clamp.kind > 0) & (self.clamp.first > t + 1)
        if bool(later.any()):
            ends.append(int(self.clamp.first[later].min()) - 1)  # its first clamped step starts a chunk
        return max(t + 1, min(ends))

    def _train_steps(self, k: int) -> dict[int, int]:
        """k steps of every active member (Backend.train: {row: step} of members whose loss turned
        non-finite); first fixes N0 and the targets of members whose first clamped step is the next."""
        t0, adam0 = self.step, self.adam_step
        if bool(((self.clamp.first == t0 + 1) & (self.clamp.kind > 0)).any()):
            for i in self.clamp.resolve(t0 + 1, self.members, backends.squared_norms(self.P, self.matrices)):
                rec = self.records[self.members[i].key]
                rec.N0, rec.target = float(self.clamp.N0[i]), float(self.clamp.target[i])
        stopped = self.backend.train(self, k)
        self.step, self.adam_step = t0 + k, adam0 + k
        return stopped

    def evaluate(self, full: bool = False) -> dict[str, torch.Tensor]:
        """Metrics of every active member now, {curve key: (M,) tensor}; full: also losses, collapse and
        structure (the log steps' extra curves). See Backend.evaluate."""
        return self.backend.evaluate(self, full)

    # ---- the loop --------------------------------------------------------------------------------
    def run(self, until: int | None = None, stop: Callable[["Cohort"], bool] | None = None,
            on_log: Callable | None = None, checkpoint_every: int | None = None,
            on_checkpoint: Callable[["Cohort"], None] | None = None) -> None:
        """Train until every member retired, or step == until, or stop(cohort) is True at an eval step.

        on_log(cohort, step, rows): rows = {member key: {curve key: value}} logged at that step
        (non-finite values left out). on_checkpoint(cohort) every `checkpoint_every` steps.
        Call again to continue.
        """
        with self.backend.workers.running(self.device):
            self._run(until, stop, on_log, checkpoint_every, on_checkpoint)

    def _run(self, until, stop, on_log, checkpoint_every, on_checkpoint) -> None:
        cfg = self.cfg
        while self.members and (until is None or self.step < until):
            stopped = self._train_steps(self._chunk_end(until, checkpoint_every) - self.step)
            t = self.step
            early = {i: s for i, s in stopped.items() if s < t}  # frozen at an earlier step of the chunk
            bad = set(stopped)
            is_eval = t % cfg.eval_every == 0
            is_log = t % cfg.log_every == 0 or t == self.start_step + 1
            ev = self.evaluate(full=is_log) if (is_eval or is_log) else None
            if is_eval:
                bad |= set((~torch.isfinite(ev["norm/total"])).nonzero().flatten().tolist())
                self._detect(t, ev, skip=early)
            for i in bad:
                self.records[self.members[i].key].diverged = True
            due = [i for i, m in enumerate(self.members) if self.retirement.reason(m, t)]
            if due and not is_log:
                ev = self.evaluate(full=True)  # the retiring members' last curve row
            if is_log or due:
                which = [i for i in (range(len(self.members)) if is_log else due) if i not in early]
                logged = [(t, self._log(t, ev, which))] + [(s, self._log(s, ev, [i])) for i, s in early.items()]
                for step, rows in logged:
                    if on_log is not None and rows:
                        on_log(self, step, rows)
            if due:
                self._retire(due, t, early)
            if checkpoint_every and on_checkpoint is not None and t % checkpoint_every == 0:
                on_checkpoint(self)
            if stop is not None and is_eval and stop(self):
                break

    def _detect(self, t: int, ev: dict, skip=()) -> None:
        """An eval step: every member's record observes its accuracies (and its values, at grok)."""
        cols = [ev[k].tolist() for k in ("train/acc", "test/acc", "logit/scale", "norm/total")]
        for i, m in enumerate(self.members):
            if i not in skip:
                rec = self.records[m.key]
                before = rec.t_grok
                rec.observe(t, *(v[i] for v in cols), self.cfg.mem_threshold, self.cfg.grok_threshold)
                if self.save_at_grok and before is None and rec.t_grok is not None:
                    self.at_grok[m.key] = {k: v[i].clone() for k, v in self.P.items()}

    def _log(self, t: int, ev: dict, which) -> dict[Hashable, dict[str, float]]:
        cols = {k: v.tolist() for k, v in ev.items()}
        rows = {}
        for i in which:
            key = self.members[i].key
            rows[key] = row = {k: v[i] for k, v in cols.items() if math.isfinite(v[i])}
            self.records[key].log(t, row)
        return rows

    def _retire(self, due: list[int], t: int, early: dict[int, int] | None = None) -> None:
        """Retire rows `due` at step t; rows in `early` stopped (diverged) at the step given there."""
        early = early or {}
        for i in due:
            m = self.members[i]
            rec = self.records[m.key]
            rec.retire_reason = self.retirement.reason(m, t)
            rec.final_step = rec.retired_at = early.get(i, t)
            self.retired[m.key] = self._member_row(i, back=t - early.get(i, t))
        keep = [i for i in range(len(self.members)) if i not in set(due)]
        self._select(keep)

    def _select(self, keep: list[int]) -> None:
        """Compaction: keep only these rows of every per-member tensor."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        for d in (self.P, self.m1, self.m2):
            for k in d:
                d[k] = d[k].index_select(0, idx)
        self.train_idx = self.train_idx.index_select(0, idx)
        self.clamp.select(idx)
        self.members = [self.members[i] for i in keep]
        self._rebuild()

    def _member_row(self, i: int, back: int = 0) -> MemberState:
        """Member i's state; back > 0: it stopped that many steps before the cohort's step."""
        m = self.members[i]
        return MemberState(member=copy.deepcopy(m), cohort=copy.deepcopy(self.cfg), step=self.step - back,
                           adam_step=self.adam_step - back,
                           params={k: v[i].clone() for k, v in self.P.items()},
                           exp_avg={k: v[i].clone() for k, v in self.m1.items()},
                           exp_avg_sq={k: v[i].clone() for k, v in self.m2.items()},
                           train_idx=self.train_idx[i].clone(), record=self.records[m.key].to_dict())

    # ---- public reading API ----------------------------------------------------------------------
    @property
    def active(self) -> list[Hashable]:
        return [m.key for m in self.members]

    @property
    def done(self) -> bool:
        return not self.members

    def member_state(self, key: Hashable) -> MemberState:
        """One member's snapshot (active: its current state; retired: its final state)."""
        for i, m in enumerate(self.members):
            if m.key == key:
                return self._member_row(i)
        if key in self.retired:
            return copy.deepcopy(self.retired[key])
        raise KeyError(f"cohort: no member {key!r}")

    def results(self) -> list[dict]:
        """Per member (construction order): summary metrics and status (MemberRecord.result)."""
        return [rec.result(self.step) for rec in self.records.values()]

    def curves(self, key: Hashable) -> dict[str, list[tuple[int, float]]]:
        """Curves (MLflow keys) at the log cadence: {key: [(step, value), ...]}."""
        return copy.deepcopy(self._record(key).curves)

    def evals(self, key: Hashable) -> list[tuple[int, float, float]]:
        """Every evaluation: [(step, train acc, test acc), ...] at the eval cadence."""
        return list(self._record(key).evals)

    def _record(self, key: Hashable) -> MemberRecord:
        if key not in self.records:
            raise KeyError(f"cohort: no member {key!r}")
        return self.records[key]

    # ---- snapshots -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Complete state (plain tensors and python data, torch.save-able) for a bit-identical resume."""
        clone = lambda d: {k: v.clone() for k, v in d.items()}  # noqa: E731
        return {"format": FORMAT, "cfg": asdict(self.cfg), "step": self.step, "start_step": self.start_step,
                "adam_step": self.adam_step, "members": [asdict(m) for m in self.members],
                "params": clone(self.P), "exp_avg": clone(self.m1), "exp_avg_sq": clone(self.m2),
                "train_idx": self.train_idx.clone(), "clamp": clone(self.clamp.state_dict()),
                "records": {k: r.to_dict() for k, r in self.records.items()},
                "retired": {k: v.to_dict() for k, v in copy.deepcopy(self.retired).items()},
                "save_at_grok": self.save_at_grok, "at_grok": {k: clone(v) for k, v in self.at_grok.items()},
                "torch_threads": torch.get_num_threads()}

    @classmethod
    def from_state(cls, state: dict) -> "Cohort":
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        if got != FORMAT:
            raise ValueError(f"cohort state: not a {FORMAT} state (format: {got!r})")
        unknown = set(state["cfg"]) - {f.name for f in fields(CohortConfig)}
        if unknown:
            raise ValueError(f"cohort state: cfg has unknown keys {sorted(unknown)} (written by a newer version?)")
        self = cls.__new__(cls)
        self._setup(CohortConfig(**state["cfg"]))
        self.step, self.start_step, self.adam_step = state["step"], state["start_step"], state["adam_step"]
        self.members = [MemberConfig.from_dict(m) for m in state["members"]]
        dev = self.device
        self.P = {k: v.clone().to(dev) for k, v in state["params"].items()}
        self.m1 = {k: v.clone().to(dev) for k, v in state["exp_avg"].items()}
        self.m2 = {k: v.clone().to(dev) for k, v in state["exp_avg_sq"].items()}
        self.train_idx = state["train_idx"].clone().to(dev)
        self.clamp = levers.Clamp(self.members, self.matrices, self.model.alloc_layers, self.start_step, dev)
        self.clamp.load({k: v.clone().to(dev) for k, v in state["clamp"].items()})
        self.records = {k: MemberRecord.from_dict(v) for k, v in state["records"].items()}
        self.retirement = Retirement(self.records)
        self.retired = {k: MemberState.from_dict(v) for k, v in copy.deepcopy(state["retired"]).items()}
        self.save_at_grok = state.get("save_at_grok", False)
        self.at_grok = {k: {n: t.clone().to(dev) for n, t in v.items()} for k, v in state.get("at_grok", {}).items()}
        self._rebuild()
        return self
