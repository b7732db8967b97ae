"""Run a study: arms in dependency order, each wave's cohort groups planned as jobs (plan.py) and handed to
an executor (jobs.py), their events turned into MLflow logging, snapshots and progress, and state.json kept
for an exact resume.

Files under <store dir>/snapshots/<experiment>/ (the store dir holds mlflow.db):
  state.json            study digest, fork steps, derived settings, resolved levers, finished arms' results
  forks/<arm>@<at>.pt   member states at a fork point (kept: later arms such as logit_matched fork from it)
  cohorts/<job>.pt      the running cohort's last checkpoint (deleted once its arms are logged)

Every MLflow call and every write of state.json or of a cohort snapshot goes through one helper thread
(persist.Worker) in program order; MLflow calls go on to a tracking process (tracker.py), and each file
write first waits until that process has stored everything sent before it. So a SIGKILL at any moment
leaves: curves stored -> snapshot; arm runs finished -> state.json -> snapshot deleted. A resumed run
replays from the last snapshot bit-identically and the Recorder skips any (key, step) already stored.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from interventions.engine import checkpoints, native, snapshot
from interventions.execution import completeness, plan
from interventions.execution.jobs import CohortJob, LocalExecutor
from interventions.execution.persist import ResumeError, Worker, load_state, snapshot_dir, write_text
from interventions.execution.summary import arm_summary, arm_table, w_c_summary
from interventions.execution.tracker import NullRecorder, Tracker, plugin_tags, provenance
from interventions.registry import LEVERS
from interventions.study.derive import derive, w_c_sources
from interventions.study.derive import levers as resolve_levers
from interventions.study.graph import Graph
from interventions.study.views import describe, picture
from interventions.vocab import Levers

__all__ = ["ResumeError", "Runner", "snapshot_dir"]


class Runner:
    def __init__(self, graph: Graph, folder: Path, *, make_tracker: Callable | None = None,
                 device: str = "cpu", executor=None, progress: bool = True, log: Callable = print):
        self.g, self.dir, self.device = graph, Path(folder), device
        self.make_tracker = make_tracker or (lambda: Tracker(NullRecorder(), graph.study.study))
        self.executor = executor or LocalExecutor()
        self.progress, self.log = progress, log
        self.study = graph.study
        self.digest = self.study.digest()
        self.state = load_state(self.dir, self.digest, self.study.study, self.study.source,
                                {p["name"]: p["digest"] for p in self.study.plugin_info}, self.study.identity())
        self.done_before = {n for n, a in self.state["arms"].items() if a["status"] == "done"}   # by earlier runs
        self.w_c_sources = w_c_sources(graph)     # arms whose summary carries w_c and its interval
        self.tracker = None                       # used on the worker thread only
        self.worker: Worker | None = None

    @property
    def finished(self) -> bool:
        return bool(self.state.get("finished"))

    def _persist(self, synced: bool = True) -> None:
        """Queue a write of the state as it is now; synced: only once everything tracked before it is
        stored (needed when the state says arms are done; not for fork points or derived levers)."""
        args = (write_text, self.dir / "state.json", json.dumps(self.state, indent=1))
        self.worker.put(self._synced, *args) if synced else self.worker.put(*args)

    def _synced(self, fn: Callable, *args) -> None:
        self.tracker.sync()
        fn(*args)

    def levers(self, name: str) -> Levers:
        return Levers.from_dict(self.state["levers"][name])

    def params(self, name: str) -> dict:
        f = self.g.arms[name].fork
        return plan.params(self.g, name, self.levers(name), self.state["forks"].get(f.name) if f else None,
                           self.state["derived"].get(name, {}))

    # ------------------------------------------------------------ main loop
    def run(self) -> dict[str, dict]:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tracker = self.tracker or self.make_tracker()   # on the main thread (a child dies with it)
        self.worker = Worker()
        st = self.study
        kernels = sorted({plan.kernels(self.g, a, self.device) for a in self.g.order})
        self.worker.put(self.tracker.open_study, st.description or None,
                        {"design": st.design, "preset": st.preset, "digest": self.digest,
                         "source": Path(st.source).name, "n_arms": len(self.g.arms),
                         "seeds": ",".join(map(str, st.defaults.seed_list())), "kernels": ",".join(kernels)},
                        st.resolved_yaml(), picture(self.g), dict(self.state["forks"]),
                        {**provenance(native.built_path()), **plugin_tags(st.plugin_info)})
        for path in sorted((self.dir / "forks").glob("*.pt")):   # fork snapshots of an earlier, killed run
            self.worker.put(self.tracker.log_study_file, str(path), "forks")
        while True:
            waves = self.g.waves(set(self.state["arms"]))
            if not waves:
                break
            self._run_wave(waves[0])
        arms = self.state["arms"]
        self.worker.put(completeness.repair, self)
        self.worker.put(self.tracker.finish_study, arm_table(self.g.order, arms),
                        sum(a["status"] == "done" for a in arms.values()))
        self.worker.put(completeness.verify, self, completeness.expected(self, self.g.order, study=True))
        self.state["finished"] = True
        self._persist()
        self.worker.put(shutil.rmtree, self.dir / "cohorts", True)   # stale after an ill-timed kill
        self.worker.wait()
        return arms

    def _run_wave(self, groups: list[list[str]]) -> None:
        """Every cohort group of the wave as a job, all handed to the executor at once (a cluster runs
        them side by side); each group's arms are logged as soon as its job is done."""
        slots = getattr(self.executor, "slots", 1)   # jobs it runs side by side
        groups = [part for g in groups for by_path in plan.split_by_path(self.g, g, self.device)
                  for part in plan.split_group(self.g, by_path, slots)]
        started = [s for s in map(self._start_group, groups) if s is not None]
        work = [(job, self._events(job, runnable, bar)) for job, runnable, bar in started]
        self.executor.run_all(work, lambda i, result: self._finish_group(*started[i], result))

    def _start_group(self, group: list[str]):
        """(job, runnable arms, progress bar) of a cohort group, its arm runs opened; None if no arm of
        it can run."""
        runnable = [n for n in group if self._prepare(n)]
        if not runnable:
            return None
        job = plan.cohort_job(self.g, runnable, {n: self.levers(n) for n in runnable}, self.state["forks"],
                              self.dir, self.device)
        job_kernels = plan.kernels(self.g, runnable[0], self.device)   # the path that trains the group
        for name in runnable:
            prm = self.params(name)
            self.worker.put(self.tracker.open_arm, name, prm, self._description(name, prm),
                            list(self.g.arms[name].seeds), self._datasets(name),
                            {"kernels": job_kernels, **plan.fork_carry(self.g, name)})
        return job, runnable, self._bar(runnable, job)

    def _finish_group(self, job: CohortJob, runnable: list[str], bar, result: dict) -> None:
        bar.update(result["step"] - bar.n)
        bar.close()
        yaml_text = self.study.resolved_yaml()
        for name in runnable:
            results = [r for r in result["results"] if r["key"].arm == name]
            curves = {r["key"]: result["curves"][r["key"]] for r in results}
            summary = arm_summary(results, curves)
            if name in self.w_c_sources:
                summary.update(w_c_summary(results, curves, self.g.arms[name].retire))
            ckpts = {r["key"]: result["checkpoints"][r["key"]] for r in results if r["key"] in result["checkpoints"]}
            if ckpts:
                self.worker.put(self._log_checkpoints, ckpts, job.fork_file)
            self.worker.put(self.tracker.finish_arm, name, results, curves, summary, yaml_text)
            plain = [{**r, **{k: str(r[k]) for k in ("key", "fork_from") if r[k] is not None}} for r in results]
            self.state["arms"][name] = {"status": "done", "params": self.params(name), "summary": summary,
                                        "results": json.loads(json.dumps(plain, default=float))}
        self._persist()                                   # after the arm runs are finished ...
        self.worker.put(job.checkpoint_file.unlink, True)  # ... and before the snapshot goes

    def _log_checkpoints(self, ckpts: dict, fork_file: Path | None) -> None:
        """On the worker thread: each member's checkpoint files (checkpoints.write) logged to its run."""
        forks = snapshot.load(fork_file)["members"] if fork_file is not None else {}
        with tempfile.TemporaryDirectory() as tmp:
            for key, files in ckpts.items():
                for path in checkpoints.write(Path(tmp) / f"{key.arm}-{key.seed}", files, forks.get(key.seed)):
                    self.tracker.log_member_file(key, str(path), "checkpoints")
            self.tracker.sync()   # the tracking process has copied them before they go

    def _events(self, job: CohortJob, runnable: list[str], bar) -> Callable[[tuple], None]:
        """The handler of the job's events (jobs.py lists them)."""
        writing = threading.Event()   # set while a snapshot waits in the queue

        def handle(ev: tuple) -> None:
            kind = ev[0]
            if kind == "log":
                self.worker.put(self.tracker.log_rows, ev[1], ev[2])
            elif kind == "checkpoint":
                if writing.is_set():        # the last one is not written yet: skip this one, never stall
                    return
                writing.set()
                self.worker.put(self._synced, snapshot.save, job.checkpoint_file,
                                {"cohort": ev[1], "job": job.id, "digest": self.digest,
                                 "forks": dict(self.state["forks"])})
                self.worker.put(writing.clear)
            elif kind == "fork":
                fork, step, states = ev[1:]
                # written here, synchronously: the next cohort reads it; state.json (queued) records it after
                path = self.dir / "forks" / f"{fork.name}.pt"
                snapshot.save(path, {"members": states, "step": step})
                self.worker.put(self.tracker.log_study_file, str(path), "forks")   # kept: loadable later
                self.state["forks"][fork.name] = step
                self._persist(synced=False)
                msg = f"fork point {fork.label()}: step {step}"
                bar.write(msg) if self.progress else self.log(msg)
            elif kind == "resumed":
                self.log(f"resuming {', '.join(runnable)} from the snapshot at step {ev[1]}")
                bar.update(ev[1] - bar.n)
            elif kind == "progress":
                step, alive, total, grok = ev[1:]
                bar.update(step - bar.n)
                bar.set_postfix_str(f"alive {alive}/{total} grokked {grok}", refresh=False)
        return handle

    def _prepare(self, name: str) -> bool:
        """Derive the arm's levers from finished arms and resolve its levers, once (kept in the
        state); False (arm skipped, said why) if impossible."""
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
            if name not in self.state["levers"]:
                f = self.g.arms[name].fork
                lv = resolve_levers(self.g, name, self.state["derived"].get(name, {}),
                           self.state["forks"].get(f.name) if f else None)
                self.state["levers"][name] = lv.to_dict()
                self._persist(synced=False)
            return True
        self.log(f"skipping arm {name}: {reason}")
        self.state["arms"][name] = {"status": "skipped", "reason": reason, "results": [], "params": {}}
        self._persist()
        return False

    def _description(self, name: str, prm: dict) -> str:
        desc = describe(self.g, name, prm["fork_step"])
        for lever, setting in self.g.arms[name].derived:   # a derived value and how it was derived
            key = setting if LEVERS.get(lever).flat else f"{lever}.{setting}"
            if prm.get(key) is not None and prm.get(f"{key}_source"):
                desc += f"; {key} {prm[key]:.4g} = {prm[f'{key}_source']}"
        return desc

    def _datasets(self, name: str) -> dict:
        seeds = list(self.g.arms[name].seeds)
        return {None: plan.dataset(self.g, name, seeds), **{s: plan.dataset(self.g, name, [s]) for s in seeds}}

    def _bar(self, runnable: list[str], job: CohortJob):
        f = self.g.arms[runnable[0]].fork
        start = self.state["forks"][f.name] if f else 0
        desc = runnable[0] + (f" +{len(runnable) - 1} arms" if len(runnable) > 1 else "")
        return tqdm(total=max(m.budget for m in job.members), initial=start, desc=desc, unit="step",
                    disable=not self.progress, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)

    def store_lacks(self) -> list[str]:
        """A finished study: what the store lacks of what state.json reports (tracking.audit), one line a run."""
        self.tracker = self.tracker or self.make_tracker()
        return [line for _, line in self.tracker.check(completeness.expected(self, self.g.order, study=True))]

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        if self.tracker is not None:
            self.tracker.close()

    def abort(self, status: str = "KILLED") -> None:
        """After an exception on the training thread: let queued writes land, close the open runs."""
        try:
            if self.worker is not None:
                self.worker.wait()
        except BaseException:
            pass
        if self.tracker is None:
            return
        try:
            self.tracker.abort(status)
            self.tracker.close()
        except BaseException:
            pass
