"""Running studies: `run_study` (run, resume, or just check and report a finished one) and `run_suite`."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from interventions.execution.persist import snapshot_dir
from interventions.execution.runner import Runner
from interventions.execution.summary import arm_table
from interventions.execution.tracking_process import TrackerProcess
from interventions.study.graph import Graph

__all__ = ["run_study", "run_suite"]


def run_study(graph: Graph, *, uri: str, experiment: str, device: str = "cpu", fresh: bool = False,
              progress: bool = True, tracking: bool = True, log: Callable = print, executor=None,
              snapshots: str | Path | None = None) -> dict[str, dict]:
    """Run, resume, or (when finished) just report a study; returns {arm: {status, results, params}}.
    executor: jobs.LocalExecutor (default) or cluster.RayExecutor; snapshots: the snapshot base folder."""
    folder = snapshot_dir(uri, experiment, snapshots)
    if fresh:
        _start_over(graph, uri, experiment, folder, tracking, log)
    make = (lambda: TrackerProcess(uri, experiment, graph.study.study)) if tracking else None
    runner = Runner(graph, folder, make_tracker=make, device=device, progress=progress, log=log,
                    executor=executor)
    if runner.finished:
        try:
            lacks = runner.store_lacks()
        except BaseException:
            runner.abort("KILLED")
            raise
        if not lacks:
            runner.close()
            log(f"study {graph.study.study} already finished in experiment {experiment!r} (state in {folder}); "
                "not retraining (--fresh starts over)")
            log(arm_table(graph.order, runner.state["arms"]))
            _say_where(uri, experiment, tracking, log)
            return runner.state["arms"]
        log(f"study {graph.study.study} finished (state in {folder}), but the store lacks {len(lacks)} of its "
            f"runs' records ({lacks[0]}); completing the store from state.json")
        runner.state["finished"] = False
    t0 = time.perf_counter()
    try:
        arms = runner.run()
    except BaseException:
        runner.abort("KILLED")
        raise
    runner.close()
    log(f"study {graph.study.study}: {len(arms)} arms in {time.perf_counter() - t0:.0f} s; "
        f"experiment {experiment!r} in {uri}")
    log(arm_table(graph.order, arms))
    _say_where(uri, experiment, tracking, log)
    return arms


def _say_where(uri: str, experiment: str, tracking: bool, log) -> None:
    from tracking.store import ui_link
    link = ui_link(uri, experiment) if tracking else None
    if link:
        log(f"runs table in the MLflow UI: {link}")


def _start_over(graph: Graph, uri: str, experiment: str, folder: Path, tracking: bool, log) -> None:
    """--fresh: delete this study's snapshots, then its runs in the experiment (a kill in between leaves a
    plain fresh start whose runs are found again by identity)."""
    existed = folder.exists()
    shutil.rmtree(folder, ignore_errors=True)
    n = 0
    if tracking:
        from tracking.store import delete_study_runs
        n = delete_study_runs(uri, experiment, graph.study.study)
    log(f"--fresh: deleted {n} runs of study {graph.study.study!r} in experiment {experiment!r}"
        + (f" and the snapshots in {folder}" if existed else " (no snapshots on disk)"))


def run_suite(studies: list[tuple[Graph, str]], *, uri: str, device: str, fresh: bool, progress: bool,
              summary: bool = True, executor=None, snapshots: str | None = None,
              log=print) -> list[tuple[str, str, float]]:
    """Run (or resume, or just report) each study in turn; [(study, experiment, seconds)]."""
    done = []
    for graph, experiment in studies:
        if summary:
            log(f"== {graph.study.study} (preset {graph.study.preset}) -> experiment {experiment!r}")
        t0 = time.perf_counter()
        run_study(graph, uri=uri, experiment=experiment, device=device, fresh=fresh, progress=progress, log=log,
                  executor=executor, snapshots=snapshots)
        done.append((graph.study.study, experiment, time.perf_counter() - t0))
    if summary:
        log("suite: " + "; ".join(f"{x} {s:.0f} s" for _, x, s in done) + f"; total {sum(s for *_, s in done):.0f} s")
    return done
