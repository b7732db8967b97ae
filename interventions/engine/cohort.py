"""The cohort loop: members (arm x seed) of one shape trained as one batched tensor program.

Parameters and the optimizer's buffers are (M, ...) tensors, row m = member m. The loop cuts training into
chunks of steps that need no cohort-wide decision; its backend (backends/) runs a chunk's steps (per member
group: forward and backward on its own training pairs, the levers' hooks, the optimizer) and the evaluation
over all pairs: every `eval_every` steps train/test accuracy -> t_mem, t_grok (records.py), every
`log_every` steps (and a cohort's first step and a member's last) the curves. Members retire (grokked +
margin, budget, or diverged) and leave the tensors. Nothing is mixed across members. The task, model, loss,
optimizer and levers are registered plug-ins, looked up by the names the configs carry. Steps are 1-based:
"step t" is the state after t optimizer steps (and the after_step levers of step t).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Hashable
from typing import Callable

import torch

from interventions.engine import backends, resume
from interventions.engine.config import DTYPES, CohortConfig
from interventions.engine.records import (MemberConfig, MemberRecord, MemberState, Retirement, check_start,
                                          detect_times)
from interventions.engine.task import make_task, split
from interventions.engine.tensors import init_member
from interventions.registry import LEVERS, LOSSES, MODELS, OPTIMIZERS

__all__ = ["Cohort", "CohortConfig", "MemberConfig", "MemberRecord", "MemberState", "detect_times"]

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
                rows.append((s.params, self._carried(s.opt_state), s.train_idx))
            self.records[m.key] = MemberRecord.start(m, self.step, fork=s)
        self.retirement = Retirement(self.records)
        dev, dt = self.device, self.dtype
        self.P = {n: torch.stack([r[0][n] for r in rows]).to(dev, dt).contiguous() for n in self.names}
        self.S = {b: {n: torch.stack([r[1][b][n] for r in rows]).to(dev, dt).contiguous() for n in self.names}
                  for b in self.optimizer.state_names}
        self.train_idx = torch.stack([r[2] for r in rows]).to(dev)
        self._make_levers([None if s is None else s.lever_state for s in init])
        for lv in self.hooked("init"):
            for i, s in enumerate(init):
                if s is None:
                    lv.init(self.P, i)
        self._rebuild()

    # ---- construction helpers -------------------------------------------------------------------
    def _setup(self, cfg: CohortConfig) -> None:
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.dtype = DTYPES[cfg.precision]
        self.task = make_task(cfg.p, cfg.op)
        self.model = MODELS.get(cfg.model)(self.task.vocab, self.task.n_classes, cfg.settings("model"))
        self.loss = LOSSES.get(cfg.loss)(cfg.settings("loss"))
        self.optimizer = OPTIMIZERS.get(cfg.optimizer)(cfg.settings("optimizer"))
        self.labels = self.task.labels.clamp(min=0).to(self.device)
        self.valid = self.task.valid.to(self.device)
        self.names = [s.name for s in self.model.specs]
        self.matrices = [s.name for s in self.model.specs if s.matrix]

    def _fresh(self, m: MemberConfig):
        gen = torch.Generator().manual_seed(m.seed)
        train_idx = split(self.task, self.cfg.train_fraction, gen)  # split first, then the init
        params = init_member(self.model.specs, gen, self.dtype)
        return params, {b: {n: torch.zeros_like(t) for n, t in params.items()} for b in self.optimizer.state_names}, \
            train_idx

    def _carried(self, opt_state: dict) -> dict:
        """A restored member's optimizer buffers; a buffer this optimizer has and the state lacks starts at 0."""
        like = next(iter(opt_state.values()), None)
        return {b: opt_state[b] if b in opt_state else {n: torch.zeros_like(t) for n, t in like.items()}
                for b in self.optimizer.state_names} if like is not None else opt_state

    def _make_levers(self, carried: list[dict | None]) -> None:
        """One instance of every lever active in some member, in registration order, with every member's
        settings (its defaults for a member that does not name it) and carried state."""
        names = LEVERS.in_order({n for m in self.members for n in m.lever.active()})
        self.levers = {n: LEVERS.get(n)([m.lever.settings(n) for m in self.members], self,
                                        [(c or {}).get(n) for c in carried]) for n in names}
        self.backend = backends.select(self)
        self.kernels = self.backend.kernels  # "native" | "aten" (the fast paths) | "generic"

    def hooked(self, hook: str) -> list:
        """The cohort's lever instances that implement `hook` (levers.base.HOOKS), in order."""
        return [lv for lv in self.levers.values() if hook in lv.hooks]

    m1 = property(lambda self: self.S["exp_avg"], doc="AdamW's first moment")
    m2 = property(lambda self: self.S["exp_avg_sq"], doc="AdamW's second moment")

    def _rebuild(self) -> None:
        """Derived per-member tensors, then the backend's (member groups, ...); after construction and after
        every compaction."""
        M, n = len(self.members), self.task.vocab * self.task.vocab
        tau = self.levers.get("tau")   # the fast paths implement the tau lever: they read 1 / tau here
        self.inv_tau = tau.inv if tau is not None else torch.ones(M, dtype=self.dtype, device=self.device)
        self.train_mask = torch.zeros(M, n, dtype=torch.bool, device=self.device)
        self.train_mask.scatter_(1, self.train_idx, True)
        self.test_mask = self.valid.unsqueeze(0) & ~self.train_mask
        self.backend.rebuild(self)

    # ---- the step -------------------------------------------------------------------------------
    def _chunk_end(self, until: int | None, checkpoint_every: int | None) -> int:
        """Last step of the next chunk: the steps before it need no cohort-wide decision (no eval, log,
        checkpoint, lever action, budget or grok-margin retirement, `until`)."""
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
        ends += [e for e in (lv.chunk_end(t) for lv in self.levers.values()) if e is not None]
        return max(t + 1, min(ends))

    def _train_steps(self, k: int) -> dict[int, int]:
        """k steps of every active member (Backend.train: {row: step} of members whose loss turned
        non-finite); first the levers act between chunks (the clamp fixes N0 and its targets)."""
        t0, adam0 = self.step, self.adam_step
        for lv in self.levers.values():
            for i, fields in lv.before_chunk(t0).items():
                for k_, v in fields.items():
                    setattr(self.records[self.members[i].key], k_, v)
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
        with self.backend.workers.running(self.device, backends.flushes_subnormals(self.optimizer)):
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
        for d in (self.P, *self.S.values()):
            for k in d:
                d[k] = d[k].index_select(0, idx)
        self.train_idx = self.train_idx.index_select(0, idx)
        for lv in self.levers.values():
            lv.select(idx)
        self.members = [self.members[i] for i in keep]
        self._rebuild()

    def _member_row(self, i: int, back: int = 0) -> MemberState:
        """Member i's state; back > 0: it stopped that many steps before the cohort's step."""
        m = self.members[i]
        return MemberState(member=copy.deepcopy(m), cohort=self.cfg, step=self.step - back,
                           adam_step=self.adam_step - back,
                           params={k: v[i].clone() for k, v in self.P.items()},
                           opt_state={b: {k: v[i].clone() for k, v in d.items()} for b, d in self.S.items()},
                           train_idx=self.train_idx[i].clone(), record=self.records[m.key].to_dict(),
                           lever_state={n: lv.member_state(i) for n, lv in self.levers.items() if lv.fork_state})

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

    # ---- snapshots (resume.py) -------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Complete state (plain tensors and python data, torch.save-able) for a bit-identical resume."""
        return resume.state_dict(self)

    @classmethod
    def from_state(cls, state: dict) -> "Cohort":
        return resume.from_state(cls, state)
