"""Run an intervention graph: arms in dependency order, every arm that can run now packed into as few
cohorts as possible, one executor call per cohort, MLflow logging at the cohort's checkpoints, atomic
snapshots for an exact resume.

Files under <store dir>/snapshots/<experiment>/ (the store dir holds mlflow.db):
  state.json            study digest, finished arms with their member results, fork steps, derived levers
  forks/<arm>@<at>.pt   member states at a fork point (kept: later arms such as logit_matched fork from it)
  cohorts/<job>.pt      the running cohort's last checkpoint (deleted once its arms are logged)
Resume order of writes: curves flushed to MLflow -> cohort snapshot; arm runs finished -> state.json ->
cohort snapshot deleted. A kill between any two writes replays from the last snapshot, bit-identically,
and the Recorder skips what the store already holds.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from . import snapshot
from .cohort import Cohort, CohortConfig, MemberConfig, MemberState
from .graph import ArmNode, Graph, derive, draw_graph

SUMMARY_KEYS = ("t_mem", "t_grok", "delay", "logit_scale_at_grok", "weight_norm_at_grok", "N0", "target")


class ResumeError(Exception):
    """The snapshots on disk belong to other settings of the study."""


# ---------------------------------------------------------------- tracking off: the same calls, no store
class NullRecorder:
    """Recorder stand-in for runs without tracking (benchmarks, tests): accepts every call, keeps nothing."""

    def __init__(self, *_, **__):
        self._n = 0

    def run(self, role: str, name: str, **_) -> str:
        self._n += 1
        return f"null-{self._n}"

    def log_curves(self, *_, **__): pass
    def log_summary(self, *_, **__): pass
    def log_artifact(self, *_, **__): pass
    def log_text(self, *_, **__): pass
    def set_tags(self, *_, **__): pass
    def flush(self): pass
    def finish(self, *_, **__): pass
    def close(self): pass


# ---------------------------------------------------------------- the executor seam
@dataclass
class Pause:
    """A fork point inside a cohort: train to it, hand the cohort to `on_pause`, continue."""
    name: str                               # fork file name, e.g. "trunk@800"
    reached: Callable[[Cohort], bool]       # checked at eval steps (and when `until` is hit)
    until: int | None = None                # exact step (fork `when: step`)


@dataclass
class CohortJob:
    """Everything an executor needs to train one cohort; the callbacks report back to the scheduler."""
    id: str
    cfg: CohortConfig
    members: list[MemberConfig]
    init: list[MemberState | None] | None
    resume: dict | None                     # a Cohort.state_dict() to continue from
    pauses: list[Pause]
    stop_after_pauses: bool                 # trunk cohorts end at their last fork point
    checkpoint_every: int
    on_log: Callable
    on_checkpoint: Callable[[Cohort], None]
    on_pause: Callable[[Cohort, Pause], None]
    on_eval: Callable[[Cohort], None] = lambda c: None


class LocalExecutor:
    """Trains a cohort in this process. A distributed executor implements the same `run`."""

    def run(self, job: CohortJob) -> Cohort:
        c = Cohort.from_state(job.resume) if job.resume else Cohort(job.cfg, job.members, job.init)
        pending = list(job.pauses)
        kw = dict(on_log=job.on_log, checkpoint_every=job.checkpoint_every, on_checkpoint=job.on_checkpoint)
        while pending:
            untils = [p.until for p in pending if p.until is not None]

            def stop(coh, pending=pending):
                job.on_eval(coh)
                return any(p.reached(coh) for p in pending)
            c.run(until=min(untils) if untils else None, stop=stop, **kw)
            hit = [p for p in pending if p.reached(c)]
            if not hit:
                raise RuntimeError(f"cohort {job.id}: every member retired at step {c.step} before the fork "
                                   f"point(s) {', '.join(p.name for p in pending)} were reached")
            for p in hit:
                job.on_pause(c, p)
                pending.remove(p)
        if not job.stop_after_pauses:
            c.run(stop=lambda coh: job.on_eval(coh) or False, **kw)
        return c


# ---------------------------------------------------------------- files
def snapshot_dir(uri: str, experiment: str) -> Path:
    from tracking.store import safe_name, sqlite_path
    base = sqlite_path(uri).parent if uri.startswith("sqlite:") else Path.cwd() / "mlruns"
    return base / "snapshots" / safe_name(experiment)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------- statistics
def _median(vals) -> float | None:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(statistics.median(vals)) if vals else None


def arm_summary(results: list[dict]) -> dict:
    """Seed medians (times and at-grok values over the seeds that reached them, as the importer does)."""
    grok = [r for r in results if r["grokked"]]
    out = {k: _median(r.get(k) for r in (grok if k != "t_mem" else results)) for k in SUMMARY_KEYS}
    out["delay_from_fork"] = _median(r["t_grok"] - r["fork_step"] for r in grok if r.get("fork_step") is not None)
    out.update(n_seeds=len(results), n_grokked=len(grok), n_diverged=sum(bool(r["diverged"]) for r in results))
    return out


def arm_table(graph: Graph, arms: dict[str, dict]) -> str:
    """Final table: members grokked/total, median t_mem, t_grok, delay (and from the fork), L at grok."""
    head = ("arm", "grokked", "t_mem", "t_grok", "delay", "from fork", "L@grok", "tau")
    rows = []
    for name in graph.order:
        a = arms.get(name)
        if a is None:
            continue
        if a["status"] == "skipped":
            rows.append((name, "skipped", a.get("reason", ""), "", "", "", "", ""))
            continue
        s = arm_summary(a["results"])
        f = lambda v, d=0: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        rows.append((name, f"{s['n_grokked']}/{s['n_seeds']}", f(s["t_mem"]), f(s["t_grok"]), f(s["delay"]),
                     f(s["delay_from_fork"]), f(s["logit_scale_at_grok"], 2), f"{a['params']['tau']:.4g}"))
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)  # noqa: E731
                              for i, (x, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *map(fmt, rows)])


# ---------------------------------------------------------------- the scheduler
@dataclass
class _Open:
    """Runs of the cohort in flight (so an exception can close them)."""
    runs: list[str] = field(default_factory=list)


class Scheduler:
    def __init__(self, graph: Graph, recorder, folder: Path, *, device: str = "cpu",
                 executor: LocalExecutor | None = None, progress: bool = True, log: Callable = print):
        self.g, self.rec, self.dir = graph, recorder, Path(folder)
        self.device, self.executor, self.progress, self.log = device, executor or LocalExecutor(), progress, log
        self.study = graph.study
        self.digest = self.study.digest()
        self.state = self._load_state()
        self.study_run: str | None = None
        self.arm_runs: dict[str, str] = {}
        self.member_runs: dict[str, str] = {}     # member key -> run id
        self.open = _Open()

    # ------------------------------------------------------------ state
    def _load_state(self) -> dict:
        path = self.dir / "state.json"
        if not path.is_file():
            return {"digest": self.digest, "study": self.study.study, "arms": {}, "forks": {},
                    "finished": False}
        state = json.loads(path.read_text())
        if state.get("digest") != self.digest:
            raise ResumeError(
                f"{self.study.source}: {self.dir} holds snapshots of study {state.get('study')!r} run with "
                f"other settings (digest {state.get('digest')} != {self.digest}); rerun with --fresh to "
                f"replace them, or use --experiment NAME for a separate experiment")
        return state

    def _save_state(self) -> None:
        _write_json(self.dir / "state.json", self.state)

    @property
    def finished(self) -> bool:
        return bool(self.state.get("finished"))

    # ------------------------------------------------------------ params
    def params(self, name: str) -> dict:
        """Identical keys on every arm and member run (the MLflow contract)."""
        a, d, st = self.g.arms[name], self.study.defaults, self.state
        derived = st["arms"].get(name, {}).get("derived") or st.get("derived", {}).get(name, {})
        fork_step = st["forks"].get(self._fork_name(a)) if a.forked else None
        tau = derived.get("tau", a.tau)
        w_c = derived.get("w_c", a.w_c if isinstance(a.w_c, (int, float)) else None)
        return {
            "arm": name, "p": a.p, "op": d.task.op, "model": d.model.kind, "loss": a.loss,
            "precision": a.precision, "rho": a.rho, "tau": float(tau), "clamp": a.clamp, "gamma": a.gamma,
            "train_fraction": d.task.train_fraction, "lr": d.optimizer.lr,
            "weight_decay": d.optimizer.weight_decay, "t_int": self._t_int(a, fork_step),
            "w_c": w_c, "budget": a.budget, "eval_every": d.eval_every,
            "fork_from": a.parent, "fork_step": fork_step,
            "tau_source": derived.get("tau_source", a.tau_source), "design": self.study.design}

    def _t_int(self, a: ArmNode, fork_step: int | None) -> int | None:
        if a.clamp == "none":
            return None
        if a.t_int is not None:
            return a.t_int
        return fork_step if a.forked else 0

    def _fork_name(self, a: ArmNode) -> str:
        return f"{a.parent}@{a.fork_at}" + ("m" if a.fork_when == "all_memorized" else "")

    def member_config(self, name: str, seed: int) -> MemberConfig:
        a, prm = self.g.arms[name], self.params(name)
        clamp, target = a.clamp, a.target
        if a.clamp == "w_c":
            clamp, target = "absolute", a.rho * prm["w_c"]
        elif a.clamp == "alloc":
            target = a.rho * prm["w_c"]
        margin = a.margin
        if a.trunk or self.g.children(name):   # a parent must live to its children's fork points
            margin = max(margin, a.budget)
        return MemberConfig(key=f"{name}/{seed}", seed=seed, tau=prm["tau"], clamp=clamp, target=target,
                            rho=a.rho, gamma=a.gamma, t_int=prm["t_int"] or 0, budget=a.budget, margin=margin)

    def cohort_config(self, name: str) -> CohortConfig:
        a, d = self.g.arms[name], self.study.defaults
        m = d.model
        return CohortConfig(p=a.p, op=d.task.op, train_fraction=d.task.train_fraction, model=m.kind,
                            d_embed=m.d_embed, d_hidden=m.d_hidden, d_model=m.d_model, n_heads=m.n_heads,
                            d_mlp=m.d_mlp, loss=a.loss, precision=a.precision, lr=d.optimizer.lr,
                            beta1=d.optimizer.beta1, beta2=d.optimizer.beta2, eps=d.optimizer.eps,
                            weight_decay=d.optimizer.weight_decay, eval_every=d.eval_every,
                            log_every=d.log_every, mem_threshold=d.mem_threshold,
                            grok_threshold=d.grok_threshold, device=self.device)

    # ------------------------------------------------------------ runs
    def _tags(self, arm: str | None = None, seed: int | None = None) -> dict:
        t = {"study": self.study.study}
        if arm is not None:
            t["arm"] = arm
        if seed is not None:
            t["seed"] = seed
        return t

    def open_study_run(self) -> None:
        st = self.study
        self.study_run = self.rec.run(
            "study", st.study, tags=self._tags(), description=st.description or None,
            params={"design": st.design, "preset": st.preset, "digest": self.digest, "source": Path(st.source).name,
                    "n_arms": len(self.g.arms), "n_seeds": len(st.defaults.seed_list())})
        self.rec.log_text(self.study_run, st.resolved_yaml(), "study.yaml")
        if not isinstance(self.rec, NullRecorder):
            with tempfile.TemporaryDirectory() as tmp:
                png = Path(tmp) / "graph.png"
                draw_graph(self.g, png, self.state["forks"])
                self.rec.log_artifact(self.study_run, str(png))

    def open_arm(self, name: str) -> None:
        a = self.g.arms[name]
        fork_step = self.state["forks"].get(self._fork_name(a)) if a.forked else None
        prm = self.params(name)
        desc = self.g.describe(name, fork_step)
        if "tau" in a.derived:
            desc += f" (tau {prm['tau']:.4g}, {prm['tau_source']})"
        self.arm_runs[name] = rid = self.rec.run("arm", name, parent_id=self.study_run, params=prm,
                                                 tags=self._tags(name), description=desc)
        self.open.runs.append(rid)
        for seed in a.seeds:
            mid = self.rec.run("member", f"{name} seed={seed}", parent_id=rid, params={**prm, "seed": seed},
                               tags=self._tags(name, seed), description=f"{desc}; seed {seed}")
            self.member_runs[f"{name}/{seed}"] = mid
            self.open.runs.append(mid)

    def finish_arm(self, name: str, cohort: Cohort) -> None:
        results = [r for r in cohort.results() if r["key"].split("/")[0] == name]
        for r in results:
            mid = self.member_runs[r["key"]]
            self.rec.log_curves(mid, cohort.curves(r["key"]))   # steps already stored are skipped
            self.rec.log_summary(mid, {**{k: r[k] for k in SUMMARY_KEYS}, "grokked": int(r["grokked"]),
                                       "diverged": int(bool(r["diverged"])), "final_step": r["final_step"]})
            self.rec.finish(mid)
        rid = self.arm_runs[name]
        curves = {r["key"]: cohort.curves(r["key"]) for r in results}
        self.rec.log_curves(rid, seed_mean_curves(curves.values()))
        summary = arm_summary(results)
        self.rec.log_summary(rid, summary)
        self.rec.log_text(rid, self.study.resolved_yaml(), "study.yaml")
        self.rec.log_text(rid, dense_curves_csv(name, curves), "curves.csv")
        self.rec.finish(rid)
        self.open.runs = [r for r in self.open.runs if r != rid and r not in
                          {self.member_runs[x["key"]] for x in results}]
        self.state["arms"][name] = {"status": "done", "results": _jsonable(results), "params": self.params(name),
                                    "derived": self.state.get("derived", {}).get(name, {})}

    # ------------------------------------------------------------ main loop
    def run(self) -> dict[str, dict]:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.open_study_run()
        while True:
            done = set(self.state["arms"])
            waves = self.g.waves(done)
            if not waves:
                break
            for group in waves[0]:
                self._run_group(group)
        self.rec.log_text(self.study_run, arm_table(self.g, self.state["arms"]), "arm_table.txt")
        self.rec.log_summary(self.study_run, {"n_arms_done": sum(a["status"] == "done"
                                                                 for a in self.state["arms"].values())})
        self.rec.finish(self.study_run)
        self.rec.flush()
        self.state["finished"] = True
        self._save_state()
        return self.state["arms"]

    def _skip_reason(self, name: str) -> str | None:
        bad = [u for u in self.g.upstream(name) if self.state["arms"].get(u, {}).get("status") == "skipped"]
        return f"upstream arm {bad[0]} was skipped" if bad else None

    def _run_group(self, group: list[str]) -> None:
        runnable = []
        for name in group:      # derived levers first: an arm that cannot be derived is skipped, said why
            reason = self._skip_reason(name)
            if reason is None and self.g.arms[name].derived:
                try:
                    results = {k: v["results"] for k, v in self.state["arms"].items() if v["status"] == "done"}
                    self.state.setdefault("derived", {})[name] = derive(self.g, name, results)
                    self._save_state()
                except RuntimeError as e:
                    reason = str(e)
            if reason is not None:
                self.log(f"skipping arm {name}: {reason}")
                self.state["arms"][name] = {"status": "skipped", "reason": reason, "results": [],
                                            "params": {"tau": float("nan")}}
                self._save_state()
            else:
                runnable.append(name)
        if not runnable:
            return
        job_id = _job_id(runnable)
        ckpt = self.dir / "cohorts" / f"{job_id}.pt"
        resume = None
        if ckpt.is_file():
            blob = snapshot.load(ckpt)
            resume = blob["cohort"]
            self.log(f"resuming cohort {job_id} from its snapshot at step {resume['step']}")
        for name in runnable:
            self.open_arm(name)
        members, init = [], []
        forked = self.g.arms[runnable[0]].forked
        fork_states = {}
        for name in runnable:
            a = self.g.arms[name]
            if forked and resume is None:
                fname = self._fork_name(a)
                if fname not in fork_states:
                    fork_states[fname] = snapshot.load(self.dir / "forks" / f"{fname}.pt")["members"]
            for seed in a.seeds:
                members.append(self.member_config(name, seed))
                if forked:
                    init.append(MemberState.from_dict(fork_states[self._fork_name(a)][seed])
                                if resume is None else None)
        pauses = self._pauses(runnable, resume["step"] if resume else None)
        bar = self._bar(job_id, runnable, members, resume)

        def on_log(c: Cohort, step: int, rows: dict) -> None:
            for key, row in rows.items():
                self.rec.log_curves(self.member_runs[key], {k: [(step, v)] for k, v in row.items()})

        def on_checkpoint(c: Cohort) -> None:
            self.rec.flush()           # everything up to this step is in the store before the snapshot
            snapshot.save(ckpt, {"cohort": c.state_dict(), "job": job_id, "digest": self.digest})

        def on_pause(c: Cohort, pause: Pause) -> None:
            arm = pause.name.split("@")[0]
            states = {int(k.split("/")[1]): c.member_state(k).to_dict()
                      for k in [m for m in list(c.records) if m.split("/")[0] == arm]}
            snapshot.save(self.dir / "forks" / f"{pause.name}.pt", {"members": states, "step": c.step})
            self.state["forks"][pause.name] = c.step
            self._save_state()
            bar.write(f"fork point {pause.name}: step {c.step}")

        def on_eval(c: Cohort) -> None:
            if bar is not None:
                bar.update(c.step - bar.n)
                grok = sum(r["t_grok"] is not None for r in c.records.values())
                bar.set_postfix_str(f"alive {len(c.members)}/{len(c.records)} grokked {grok}", refresh=False)

        job = CohortJob(id=job_id, cfg=self.cohort_config(runnable[0]), members=members,
                        init=init if forked else None, resume=resume, pauses=pauses,
                        stop_after_pauses=all(self.g.arms[n].trunk for n in runnable),
                        checkpoint_every=self.study.defaults.checkpoint_every, on_log=on_log,
                        on_checkpoint=on_checkpoint, on_pause=on_pause, on_eval=on_eval)
        cohort = self.executor.run(job)
        bar.update(cohort.step - bar.n)
        bar.close()
        for name in runnable:
            self.finish_arm(name, cohort)
        self.rec.flush()
        self._save_state()                  # arms done (their runs finished) ...
        ckpt.unlink(missing_ok=True)        # ... before the cohort snapshot goes

    def _pauses(self, runnable: list[str], resume_step: int | None) -> list[Pause]:
        """Fork points of these arms' children. A point already recorded is replayed (to the same step,
        rewriting the identical file) when the cohort resumes from before it."""
        out, seen = [], set()
        for child in self.g.arms.values():
            if child.parent not in runnable:
                continue
            name = self._fork_name(child)
            if name in seen:
                continue
            seen.add(name)
            parent, at = child.parent, child.fork_at
            recorded = self.state["forks"].get(name)
            if recorded is not None:
                if resume_step is not None and resume_step >= recorded:
                    continue
                out.append(Pause(name, reached=lambda c, s=recorded: c.step >= s, until=recorded))
            elif child.fork_when == "step":
                out.append(Pause(name, reached=lambda c, at=at: c.step >= at, until=at))
            else:
                def reached(c, at=at, parent=parent):
                    recs = [r for k, r in c.records.items() if k.split("/")[0] == parent]
                    return c.step >= at and all(r["t_mem"] is not None for r in recs)
                out.append(Pause(name, reached=reached))
        return out

    def _bar(self, job_id, runnable, members, resume):
        start = resume["step"] if resume else (
            self.state["forks"][self._fork_name(self.g.arms[runnable[0]])] if self.g.arms[runnable[0]].forked else 0)
        arms = runnable[0] + (f" +{len(runnable) - 1} arms" if len(runnable) > 1 else "")
        bar = tqdm(total=max(m.budget for m in members), initial=start, desc=arms, unit="step",
                   disable=not self.progress, file=sys.stderr, dynamic_ncols=True, leave=True,
                   mininterval=1.0)
        return bar

    def close_open_runs(self, status: str = "KILLED") -> None:
        for rid in self.open.runs:
            try:
                self.rec.finish(rid, status)
            except Exception:
                pass
        if self.study_run:
            try:
                self.rec.finish(self.study_run, status)
            except Exception:
                pass


def _job_id(names: list[str]) -> str:
    h = hashlib.sha1("|".join(names).encode()).hexdigest()[:8]
    return f"{names[0]}+{len(names) - 1}-{h}" if len(names) > 1 else f"{names[0]}-{h}"


def _jsonable(results: list[dict]) -> list[dict]:
    return json.loads(json.dumps(results, default=float))


def seed_mean_curves(member_curves) -> dict[str, list[tuple[int, float]]]:
    """Mean over the members that have a value at each step (retired members stop contributing)."""
    acc: dict[str, dict[int, list[float]]] = {}
    for curves in member_curves:
        for key, pts in curves.items():
            for step, v in pts:
                acc.setdefault(key, {}).setdefault(step, []).append(v)
    return {k: [(s, sum(v) / len(v)) for s, v in sorted(d.items())] for k, d in acc.items()}


def dense_curves_csv(arm: str, member_curves: dict[str, dict]) -> str:
    """One row per (seed, step), one column per curve key."""
    keys = sorted({k for c in member_curves.values() for k in c})
    buf = io.StringIO()
    buf.write(",".join(["arm", "seed", "step", *keys]) + "\n")
    for mkey, curves in member_curves.items():
        by_step: dict[int, dict[str, float]] = {}
        for k, pts in curves.items():
            for s, v in pts:
                by_step.setdefault(s, {})[k] = v
        seed = mkey.split("/")[1]
        for s in sorted(by_step):
            buf.write(",".join([arm, seed, str(s), *(repr(by_step[s][k]) if k in by_step[s] else ""
                                                     for k in keys)]) + "\n")
    return buf.getvalue()


# ---------------------------------------------------------------- entry point
def run_study(graph: Graph, *, uri: str, experiment: str, device: str = "cpu", fresh: bool = False,
              progress: bool = True, tracking: bool = True, log: Callable = print) -> dict[str, dict]:
    """Run (or resume, or report a finished) study; returns {arm: {status, results, params, ...}}."""
    folder = snapshot_dir(uri, experiment)
    if fresh:
        _start_over(graph, uri, experiment, folder, tracking, log)
    sched = Scheduler(graph, NullRecorder(), folder, device=device, progress=progress, log=log)
    if sched.finished:
        log(f"study {graph.study.study} already finished in experiment {experiment!r} "
            f"(state in {folder}); not retraining (use --fresh to start over)")
        log(arm_table(graph, sched.state["arms"]))
        return sched.state["arms"]
    if tracking:
        from tracking.recorder import Recorder
        sched.rec = Recorder(uri, experiment)
    t0 = time.perf_counter()
    try:
        arms = sched.run()
    except BaseException:
        sched.close_open_runs("KILLED")
        sched.rec.close()
        raise
    sched.rec.close()
    log(f"study {graph.study.study}: {len(arms)} arms in {time.perf_counter() - t0:.0f} s; "
        f"experiment {experiment!r} at {uri}")
    log(arm_table(graph, arms))
    return arms


def _start_over(graph: Graph, uri: str, experiment: str, folder: Path, tracking: bool, log) -> None:
    """--fresh: delete this study's runs in the experiment and its snapshots."""
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
    existed = folder.exists()
    shutil.rmtree(folder, ignore_errors=True)
    log(f"--fresh: deleted {n} runs of study {graph.study.study!r} in experiment {experiment!r}"
        + (f" and the snapshots in {folder}" if existed else " (no snapshots on disk)"))
