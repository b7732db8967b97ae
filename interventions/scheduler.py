"""Run an intervention graph: arms in dependency order, every arm that can run now packed into as few
cohorts as possible (same shapes, same start point), one executor call per cohort, snapshots for an exact
resume, and MLflow logging that never runs on the training thread.

Files under <store dir>/snapshots/<experiment>/ (the store dir holds mlflow.db):
  state.json            study digest, fork steps, derived levers, finished arms with their member results
  forks/<arm>@<at>.pt   member states at a fork point (kept: later arms such as logit_matched fork from it)
  cohorts/<job>.pt      the running cohort's last checkpoint (deleted once its arms are logged)

Every MLflow call and every write of state.json or of a cohort snapshot is queued to one helper thread
(`Worker`) and carried out there in program order; the MLflow calls go on to a tracking process
(tracker.py), and each file write first waits until that process has stored everything sent before it.
So a SIGKILL at any moment leaves what an unthreaded program would have left a little earlier: curves
stored -> snapshot; arm runs finished -> state.json -> snapshot deleted. A resumed run replays from the
last snapshot bit-identically and the Recorder skips any (key, step) the store already holds.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from . import native, snapshot
from .cohort import Cohort, CohortConfig, MemberConfig, MemberState
from .graph import ArmNode, Graph, derive
from .summary import arm_summary, arm_table
from .tracker import NullRecorder, Tracker, TrackerProcess


class ResumeError(Exception):
    """The snapshots on disk belong to other settings of the study."""


# ---------------------------------------------------------------- the executor seam
@dataclass
class Pause:
    """A fork point inside a cohort: train to it, hand the cohort to `on_pause`, continue."""
    name: str                               # fork file name, e.g. "trunk@800m"
    reached: Callable[[Cohort], bool]       # checked at eval steps (and when `until` is hit)
    until: int | None = None                # exact step (fork `when: step`)


@dataclass
class CohortJob:
    """Everything an executor needs to train one cohort; the callbacks report back to the scheduler."""
    id: str
    cfg: CohortConfig
    members: list[MemberConfig]
    init: list[MemberState | None] | None   # fork states (None: fresh from the seed)
    resume: dict | None                     # a Cohort.state_dict() to continue from instead
    pauses: list[Pause]
    stop_after_pauses: bool                 # trunk cohorts end at their last fork point
    checkpoint_every: int
    on_log: Callable                        # (cohort, step, rows)
    on_checkpoint: Callable[[Cohort], None]
    on_pause: Callable[[Cohort, Pause], None]
    on_eval: Callable[[Cohort], None]


class LocalExecutor:
    """Trains a cohort in this process. A distributed executor implements the same `run`."""

    def run(self, job: CohortJob) -> Cohort:
        c = Cohort.from_state(job.resume) if job.resume else Cohort(job.cfg, job.members, job.init)
        kw = dict(on_log=job.on_log, checkpoint_every=job.checkpoint_every, on_checkpoint=job.on_checkpoint)
        pending = list(job.pauses)
        while pending:
            untils = [p.until for p in pending if p.until is not None]

            def stop(coh, pending=pending):
                job.on_eval(coh)
                return any(p.reached(coh) for p in pending)
            c.run(until=min(untils) if untils else None, stop=stop, **kw)
            hit = [p for p in pending if p.reached(c)]
            if not hit:
                raise RuntimeError(f"cohort {job.id}: every member stopped (step {c.step}) before the fork "
                                   f"point {', '.join(p.name for p in pending)} was reached (e.g. not every "
                                   "seed memorized within the budget)")
            for p in hit:
                job.on_pause(c, p)
                pending.remove(p)
        if not job.stop_after_pauses:
            c.run(stop=lambda coh: job.on_eval(coh) or False, **kw)
        return c


# ---------------------------------------------------------------- the helper thread
class Worker:
    """Carries out queued calls on one helper thread, in order. After a failure it skips the rest and the
    error is raised on the training thread by the next put() or wait()."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="tracking", daemon=True)
        self.thread.start()

    def put(self, fn: Callable, *args) -> None:
        self.check()
        self.q.put((fn, args))

    def _loop(self) -> None:
        while True:
            item = self.q.get()
            try:
                if item is None:
                    return
                if self.error is None:
                    item[0](*item[1])
            except BaseException as e:
                self.error = e
            finally:
                self.q.task_done()

    def wait(self) -> None:
        self.q.join()
        self.check()

    def check(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()


# ---------------------------------------------------------------- files
def snapshot_dir(uri: str, experiment: str) -> Path:
    from tracking.store import safe_name, sqlite_path
    base = sqlite_path(uri).parent if uri.startswith("sqlite:") else Path.cwd() / "mlruns"
    return base / "snapshots" / safe_name(experiment)


def _write_text(path: Path, text: str) -> None:
    """Atomic: temp file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _job_id(names: list[str]) -> str:
    h = hashlib.sha1("|".join(names).encode()).hexdigest()[:8]
    return f"{names[0]}+{len(names) - 1}-{h}" if len(names) > 1 else f"{names[0]}-{h}"


# ---------------------------------------------------------------- the scheduler
class Scheduler:
    def __init__(self, graph: Graph, folder: Path, *, make_tracker: Callable | None = None,
                 device: str = "cpu", executor=None, progress: bool = True, log: Callable = print):
        self.g, self.dir, self.device = graph, Path(folder), device
        self.make_tracker = make_tracker or (lambda: Tracker(NullRecorder(), graph.study.study))
        self.executor = executor or LocalExecutor()
        self.progress, self.log = progress, log
        self.study = graph.study
        self.digest = self.study.digest()
        self.state = self._load_state()
        self.tracker = None                       # used on the worker thread only
        self.worker: Worker | None = None

    # ------------------------------------------------------------ state
    def _load_state(self) -> dict:
        path = self.dir / "state.json"
        if not path.is_file():
            return {"digest": self.digest, "study": self.study.study, "arms": {}, "forks": {}, "derived": {},
                    "finished": False}
        state = json.loads(path.read_text())
        if state.get("digest") != self.digest:
            raise ResumeError(
                f"{self.study.source}: {self.dir} holds snapshots of study {state.get('study')!r} run with "
                f"other settings (digest {state.get('digest')} != {self.digest}); rerun with --fresh to "
                f"replace them, or give another --experiment")
        return state

    def _persist(self, synced: bool = True) -> None:
        """Queue a write of the state as it is now; synced: only once everything tracked before it is
        stored (needed when the state says arms are done; not for fork points or derived levers)."""
        args = (_write_text, self.dir / "state.json", json.dumps(self.state, indent=1))
        self.worker.put(self._synced, *args) if synced else self.worker.put(*args)

    def _synced(self, fn: Callable, *args) -> None:
        self.tracker.sync()
        fn(*args)

    @property
    def finished(self) -> bool:
        return bool(self.state.get("finished"))

    # ------------------------------------------------------------ per-arm values
    def params(self, name: str) -> dict:
        """Identical keys on every arm and member run (the MLflow contract)."""
        a, d = self.g.arms[name], self.study.defaults
        derived = self.state["derived"].get(name, {})
        fork_step = self.state["forks"].get(self._fork_name(a)) if a.forked else None
        w_c = derived.get("w_c", a.w_c if isinstance(a.w_c, (int, float)) else None)
        return {
            "arm": name, "p": a.p, "op": d.task.op, "model": d.model.kind, "loss": a.loss,
            "precision": a.precision, "rho": a.rho, "tau": float(derived.get("tau", a.tau)), "clamp": a.clamp,
            "gamma": a.gamma, "train_fraction": d.task.train_fraction, "lr": d.optimizer.lr,
            "weight_decay": d.optimizer.weight_decay, "t_int": self._t_int(a, fork_step), "w_c": w_c,
            "budget": a.budget, "eval_every": d.eval_every, "fork_from": a.parent, "fork_step": fork_step,
            "tau_source": derived.get("tau_source", a.tau_source), "design": self.study.design,
            "design_role": a.role or None, "retire": a.retire, "w_c_at_grok": derived.get("w_c_at_grok")}

    @staticmethod
    def _t_int(a: ArmNode, fork_step: int | None) -> int | None:
        if a.clamp == "none":
            return None
        if a.t_int is not None:
            return a.t_int
        return fork_step if a.forked else 0

    @staticmethod
    def _fork_name(a: ArmNode) -> str:
        return f"{a.parent}@{a.fork_at}" + ("m" if a.fork_when == "all_memorized" else "")

    def member_config(self, name: str, seed: int) -> MemberConfig:
        a, prm = self.g.arms[name], self.params(name)
        clamp, target = a.clamp, a.target
        if a.clamp == "w_c":            # the engine holds an absolute norm: rho x w_c
            clamp, target = "absolute", a.rho * prm["w_c"]
        elif a.clamp == "alloc":
            target = a.rho * prm["w_c"]
        margin = a.margin
        if a.trunk or self.g.children(name):   # a parent lives on to its children's fork points
            margin = max(margin, a.budget)
        group = name if a.retire == "arm" and margin < a.budget else None
        return MemberConfig(key=f"{name}/{seed}", seed=seed, tau=prm["tau"], clamp=clamp, target=target,
                            rho=a.rho, gamma=a.gamma, t_int=prm["t_int"] or 0, budget=a.budget, margin=margin,
                            retire_group=group)

    def cohort_config(self, name: str) -> CohortConfig:
        a, d = self.g.arms[name], self.study.defaults
        m, o = d.model, d.optimizer
        return CohortConfig(p=a.p, op=d.task.op, train_fraction=d.task.train_fraction, model=m.kind,
                            d_embed=m.d_embed, d_hidden=m.d_hidden, d_model=m.d_model, n_heads=m.n_heads,
                            d_mlp=m.d_mlp, loss=a.loss, precision=a.precision, lr=o.lr, beta1=o.beta1,
                            beta2=o.beta2, eps=o.eps, weight_decay=o.weight_decay, eval_every=d.eval_every,
                            log_every=d.log_every, mem_threshold=d.mem_threshold,
                            grok_threshold=d.grok_threshold, device=self.device)

    # ------------------------------------------------------------ main loop
    def run(self) -> dict[str, dict]:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tracker = self.make_tracker()       # on the main thread (a child process dies with it)
        self.worker = Worker()
        st = self.study
        kernels = sorted({native.resolve(self.cohort_config(a))[0] for a in self.g.order})  # native | aten
        self.worker.put(self.tracker.open_study, st.description or None,
                        {"design": st.design, "preset": st.preset, "digest": self.digest,
                         "source": Path(st.source).name, "n_arms": len(self.g.arms),
                         "seeds": ",".join(map(str, st.defaults.seed_list())),
                         "kernels": ",".join(kernels)},
                        st.resolved_yaml(), self.g, dict(self.state["forks"]))
        while True:
            waves = self.g.waves(set(self.state["arms"]))
            if not waves:
                break
            for group in waves[0]:
                self._run_group(group)
        arms = self.state["arms"]
        self.worker.put(self.tracker.finish_study, arm_table(self.g.order, arms),
                        sum(a["status"] == "done" for a in arms.values()))
        self.state["finished"] = True
        self._persist()
        self.worker.put(shutil.rmtree, self.dir / "cohorts", True)   # stale after an ill-timed kill
        self.worker.wait()
        return arms

    def _run_group(self, group: list[str]) -> None:
        runnable = [n for n in group if self._prepare(n)]
        if not runnable:
            return
        job_id = _job_id(runnable)
        ckpt = self.dir / "cohorts" / f"{job_id}.pt"
        resume = snapshot.load(ckpt)["cohort"] if ckpt.is_file() else None
        if resume is not None:
            self.log(f"resuming {', '.join(runnable)} from the snapshot at step {resume['step']}")
        members, init, forks = [], [], {}
        for name in runnable:
            a = self.g.arms[name]
            prm = self.params(name)
            desc = self.g.describe(name, prm["fork_step"])
            if "tau" in a.derived:
                desc += f"; tau {prm['tau']:.4g} = {prm['tau_source']}"
            self.worker.put(self.tracker.open_arm, name, prm, desc, list(a.seeds))
            for seed in a.seeds:
                members.append(self.member_config(name, seed))
                if a.forked and resume is None:
                    fname = self._fork_name(a)
                    if fname not in forks:
                        forks[fname] = snapshot.load(self.dir / "forks" / f"{fname}.pt")["members"]
                    init.append(MemberState.from_dict(forks[fname][seed]))
        bar = self._bar(runnable, members, resume)
        writing = threading.Event()   # set while a snapshot waits in the queue

        def on_log(c: Cohort, step: int, rows: dict) -> None:
            self.worker.put(self.tracker.log_rows, step, rows)

        def on_checkpoint(c: Cohort) -> None:
            if writing.is_set():        # the last one is not written yet: skip this one, never stall
                return
            writing.set()
            self.worker.put(self._synced, snapshot.save, ckpt,
                            {"cohort": c.state_dict(), "job": job_id, "digest": self.digest})
            self.worker.put(writing.clear)

        def on_pause(c: Cohort, pause: Pause) -> None:
            arm = pause.name.rsplit("@", 1)[0]
            states = {int(k.rsplit("/", 1)[1]): c.member_state(k).to_dict()
                      for k in c.records if k.rsplit("/", 1)[0] == arm}
            # written here, synchronously: the next cohort reads it; state.json (queued) records it after
            snapshot.save(self.dir / "forks" / f"{pause.name}.pt", {"members": states, "step": c.step})
            self.state["forks"][pause.name] = c.step
            self._persist(synced=False)
            msg = f"fork point {pause.name.rstrip('m')}: step {c.step}"
            bar.write(msg) if self.progress else self.log(msg)

        def on_eval(c: Cohort) -> None:
            bar.update(c.step - bar.n)
            grok = sum(r["t_grok"] is not None for r in c.records.values())
            bar.set_postfix_str(f"alive {len(c.members)}/{len(c.records)} grokked {grok}", refresh=False)

        job = CohortJob(id=job_id, cfg=self.cohort_config(runnable[0]), members=members,
                        init=init or None, resume=resume,
                        pauses=self._pauses(runnable, resume["step"] if resume else None),
                        stop_after_pauses=all(self.g.arms[n].trunk for n in runnable),
                        checkpoint_every=self.study.defaults.checkpoint_every, on_log=on_log,
                        on_checkpoint=on_checkpoint, on_pause=on_pause, on_eval=on_eval)
        cohort = self.executor.run(job)
        bar.update(cohort.step - bar.n)
        bar.close()
        yaml_text = self.study.resolved_yaml()
        for name in runnable:
            results = [r for r in cohort.results() if r["key"].rsplit("/", 1)[0] == name]
            curves = {r["key"]: cohort.curves(r["key"]) for r in results}
            summary = arm_summary(results, curves)
            self.worker.put(self.tracker.finish_arm, name, results, curves, summary, yaml_text)
            self.state["arms"][name] = {"status": "done", "params": self.params(name), "summary": summary,
                                        "results": json.loads(json.dumps(results, default=float))}
        self._persist()                                   # after the arm runs are finished ...
        self.worker.put(ckpt.unlink, True)                # ... and before the snapshot goes

    def _prepare(self, name: str) -> bool:
        """Derive the arm's levers from finished arms; False (arm skipped, said why) if impossible."""
        bad = [u for u in self.g.upstream(name) if self.state["arms"].get(u, {}).get("status") == "skipped"]
        reason = f"upstream arm {bad[0]} was skipped" if bad else None
        if reason is None and self.g.arms[name].derived and name not in self.state["derived"]:
            try:
                done = {k: v for k, v in self.state["arms"].items() if v["status"] == "done"}
                self.state["derived"][name] = derive(self.g, name, done)
                self._persist(synced=False)
            except RuntimeError as e:
                reason = str(e)
        if reason is None:
            return True
        self.log(f"skipping arm {name}: {reason}")
        self.state["arms"][name] = {"status": "skipped", "reason": reason, "results": [], "params": {}}
        self._persist()
        return False

    def _pauses(self, runnable: list[str], resume_step: int | None) -> list[Pause]:
        """Fork points of these arms' children. A point already recorded is replayed (to the same step,
        rewriting the identical file) when the cohort resumes from before it."""
        out, seen = [], set()
        for child in self.g.arms.values():
            if child.parent not in runnable or self._fork_name(child) in seen:
                continue
            name = self._fork_name(child)
            seen.add(name)
            parent, at, recorded = child.parent, child.fork_at, self.state["forks"].get(name)
            if recorded is not None:
                if resume_step is None or resume_step < recorded:
                    out.append(Pause(name, reached=lambda c, s=recorded: c.step >= s, until=recorded))
            elif child.fork_when == "step":
                out.append(Pause(name, reached=lambda c, at=at: c.step >= at, until=at))
            else:
                def reached(c, at=at, parent=parent):
                    recs = [r for k, r in c.records.items() if k.rsplit("/", 1)[0] == parent]
                    return c.step >= at and all(r["t_mem"] is not None for r in recs)
                out.append(Pause(name, reached=reached))
        return out

    def _bar(self, runnable: list[str], members: list[MemberConfig], resume: dict | None):
        first = self.g.arms[runnable[0]]
        start = resume["step"] if resume else (self.state["forks"][self._fork_name(first)] if first.forked else 0)
        desc = runnable[0] + (f" +{len(runnable) - 1} arms" if len(runnable) > 1 else "")
        return tqdm(total=max(m.budget for m in members), initial=start, desc=desc, unit="step",
                    disable=not self.progress, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def close(self) -> None:
        self.worker.close()
        self.tracker.close()

    def abort(self, status: str = "KILLED") -> None:
        """After an exception on the training thread: let queued writes land, close the open runs."""
        if self.worker is None:
            return
        try:
            self.worker.wait()
        except BaseException:
            pass
        try:
            self.tracker.abort(status)
            self.tracker.close()
        except BaseException:
            pass


# ---------------------------------------------------------------- entry point
def run_study(graph: Graph, *, uri: str, experiment: str, device: str = "cpu", fresh: bool = False,
              progress: bool = True, tracking: bool = True, log: Callable = print) -> dict[str, dict]:
    """Run, resume, or (when finished) just report a study; returns {arm: {status, results, params}}."""
    folder = snapshot_dir(uri, experiment)
    if fresh:
        _start_over(graph, uri, experiment, folder, tracking, log)
    make = (lambda: TrackerProcess(uri, experiment, graph.study.study)) if tracking else None
    sched = Scheduler(graph, folder, make_tracker=make, device=device, progress=progress, log=log)
    if sched.finished:
        log(f"study {graph.study.study} already finished in experiment {experiment!r} (state in {folder}); "
            "not retraining (--fresh starts over)")
        log(arm_table(graph.order, sched.state["arms"]))
        return sched.state["arms"]
    t0 = time.perf_counter()
    try:
        arms = sched.run()
    except BaseException:
        sched.abort("KILLED")
        raise
    sched.close()
    log(f"study {graph.study.study}: {len(arms)} arms in {time.perf_counter() - t0:.0f} s; "
        f"experiment {experiment!r} in {uri}")
    log(arm_table(graph.order, arms))
    return arms


def _start_over(graph: Graph, uri: str, experiment: str, folder: Path, tracking: bool, log) -> None:
    """--fresh: delete this study's snapshots, then its runs in the experiment (a kill in between leaves a
    plain fresh start whose runs are found again by identity)."""
    existed = folder.exists()
    shutil.rmtree(folder, ignore_errors=True)
    n = 0
    if tracking:
        from tracking.store import client, sqlite_path
        if not uri.startswith("sqlite:") or sqlite_path(uri).exists():
            c = client(uri)
            exp = c.get_experiment_by_name(experiment)
            if exp is not None:
                runs = c.search_runs([exp.experiment_id], f"tags.study = '{graph.study.study}'",
                                     max_results=50000)
                for r in runs:
                    c.delete_run(r.info.run_id)
                n = len(runs)
    log(f"--fresh: deleted {n} runs of study {graph.study.study!r} in experiment {experiment!r}"
        + (f" and the snapshots in {folder}" if existed else " (no snapshots on disk)"))
