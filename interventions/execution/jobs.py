"""A cohort job as plain data, and how one runs: members, fork points and pauses typed; `train` builds the
cohort from files, trains it through its pauses and reports back only plain data (events and results),
so a job crosses a process boundary as it is (`pickle.dumps(job)`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tracking import faults

from interventions.engine import snapshot
from interventions.engine.checkpoints import member_checkpoint
from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig, MemberState
from interventions.vocab import ForkPoint


@dataclass(frozen=True)
class Pause:
    """A fork point inside a cohort: train to it, save the parent's member states, continue.
    `at` is the step it is recorded at (recorded: replayed exactly) or the earliest step it may be at."""
    fork: ForkPoint
    at: int
    recorded: bool = False

    @property
    def exact(self) -> bool:
        return self.recorded or self.fork.when == "step"

    def reached(self, c: Cohort) -> bool:
        if c.step < self.at:
            return False
        return self.exact or all(c.records[k].t_mem is not None for k in c.records if k.arm == self.fork.arm)


@dataclass
class CohortJob:
    """Everything needed to train one cohort, as data: what it trains and where its files are."""
    id: str
    cfg: CohortConfig
    members: list[MemberConfig]
    fork_file: Path | None        # member states {seed: state} the members start from (None: fresh)
    checkpoint_file: Path         # resume point: read if present, written by the runner
    pauses: list[Pause]
    stop_after_pauses: bool       # trunk cohorts end at their last fork point
    checkpoint_every: int
    save: tuple[str, ...] = ()    # member checkpoints to return: "grok" (at t_grok), "final" (at its end)


# Events a job emits, each a tuple of plain data:
#   ("resumed", step)                      continuing from job.checkpoint_file
#   ("log", step, rows)                    rows: {MemberKey: {curve key: value}}
#   ("checkpoint", state)                  a Cohort.state_dict() to save as the resume point
#   ("fork", ForkPoint, step, states)      states: {seed: MemberState.to_dict()} of the fork's arm
#   ("progress", step, alive, total, grokked)
Emit = Callable[[tuple], None]


def train(job: CohortJob, emit: Emit) -> dict:
    """Run the job; returns {"step", "results": Cohort.results(), "curves": {key: curves},
    "checkpoints": {key: {"grok" | "final": checkpoints.member_checkpoint(...)}} (what job.save asks)}."""
    resumed = job.checkpoint_file.is_file()
    if resumed:
        snap = snapshot.load(job.checkpoint_file)
        c = Cohort.from_state(snap["cohort"])
        emit(("resumed", c.step))
        # fork points passed before the checkpoint: recorded in the job, or (a retried job planned before
        # they were reached) in the snapshot, which records the fork steps known when it was written
        passed = snap.get("forks", {})
        pending = [p for p in job.pauses
                   if not ((p.recorded and p.at <= c.step) or passed.get(p.fork.name, c.step + 1) <= c.step)]
    else:
        init = None
        if job.fork_file is not None:
            states = snapshot.load(job.fork_file)["members"]
            init = [MemberState.from_dict(states[m.key.seed]) for m in job.members]
        c = Cohort(job.cfg, job.members, init)
        pending = list(job.pauses)
    c.save_at_grok = "grok" in job.save

    def progress(c: Cohort) -> None:
        emit(("progress", c.step, len(c.members), len(c.records),
              sum(r.t_grok is not None for r in c.records.values())))

    def checkpoint(c: Cohort) -> None:
        emit(("checkpoint", c.state_dict()))
        if not resumed:
            faults.hit("cohort.checkpoint", job.id)   # a failpoint (tracking.faults): tests stall or kill a job here

    kw = dict(on_log=lambda c, step, rows: emit(("log", step, rows)), checkpoint_every=job.checkpoint_every,
              on_checkpoint=checkpoint)
    while pending:
        exact = [p.at for p in pending if p.exact]

        def stop(c: Cohort) -> bool:
            progress(c)
            return any(p.reached(c) for p in pending)
        c.run(until=min(exact) if exact else None, stop=stop, **kw)
        hit = [p for p in pending if p.reached(c)]
        if not hit:
            raise RuntimeError(f"cohort {job.id}: every member stopped (step {c.step}) before the fork "
                               f"point {', '.join(p.fork.label() for p in pending)} was reached (e.g. not "
                               "every seed memorized within the budget)")
        for p in hit:
            emit(("fork", p.fork, c.step, {k.seed: c.member_state(k).to_dict() for k in c.records
                                           if k.arm == p.fork.arm}))
            pending.remove(p)
    if not job.stop_after_pauses:
        c.run(stop=lambda c: progress(c) or False, **kw)
    return {"step": c.step, "results": c.results(), "curves": {k: c.curves(k) for k in c.records},
            "checkpoints": _checkpoints(c, job.save)}


def _checkpoints(c: Cohort, save: tuple[str, ...]) -> dict:
    out: dict = {}
    for key, rec in c.records.items() if save else ():
        final = c.member_state(key)
        got = {}
        if "grok" in save and key in c.at_grok:
            got["grok"] = member_checkpoint(c.cfg, key.seed, key.arm, rec.t_grok, c.at_grok[key], final.train_idx)
        if "final" in save:
            got["final"] = member_checkpoint(c.cfg, key.seed, key.arm, final.step, final.params, final.train_idx)
        if got:
            out[key] = got
    return out


Done = Callable[[int, dict], None]   # done(i, result): job i of a run_all has finished with `result`


class LocalExecutor:
    """Trains jobs in this process, one after another. interventions.cluster.RayExecutor implements the
    same `run_all` on a Ray cluster."""

    slots = 1   # jobs at a time

    def run(self, job: CohortJob, emit: Emit) -> dict:
        return train(job, emit)

    def run_all(self, work: list[tuple[CohortJob, Emit]], done: Done) -> None:
        """Train every (job, emit) of `work`, calling done(i, result) as job i finishes."""
        for i, (job, emit) in enumerate(work):
            done(i, train(job, emit))

    def close(self) -> None:
        pass
