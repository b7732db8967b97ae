"""Tracking overhead: the same study trained with MLflow tracking on and off, side by side.

    python -m benchmarks.tracking [STUDY] [--preset smoke] [--repeat 2] [--json PATH]

Each repeat runs the study twice in this process, alternating off/on (so drift in machine load hits
both), each time from scratch in a fresh temporary store. "on" includes everything tracking adds while a
study runs: creating the runs, curves, summaries, artifacts, the graph picture and the final flush. The
one-time creation of an empty store (schema migrations, ~1-2 s, paid once per store, not per study) is
done before the clock starts and printed separately. Target: overhead <= 5% of wall time.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from interventions.graph import build_graph
from interventions.run import default_experiment
from interventions.scheduler import run_study
from interventions.spec import load_study


def one(graph, experiment: str, tracking: bool) -> tuple[float, float]:
    """(study wall seconds, store-creation seconds) for one run from scratch."""
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlruns' / 'mlflow.db'}"
        setup = 0.0
        if tracking:
            from tracking.store import ensure_experiment
            t = time.perf_counter()
            ensure_experiment(uri, experiment)
            setup = time.perf_counter() - t
        t = time.perf_counter()
        run_study(graph, uri=uri, experiment=experiment, progress=False, tracking=tracking,
                  log=lambda *_: None)
        return time.perf_counter() - t, setup


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tracking", description=__doc__.split("\n")[0])
    ap.add_argument("study", nargs="?", default="fork_study")
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", help="write {wall_off_s, wall_on_s, overhead_pct, store_setup_s} here")
    args = ap.parse_args(argv)
    study = load_study(args.study, args.preset)
    graph = build_graph(study)
    experiment = default_experiment(study.study, study.preset)
    one(graph, experiment, tracking=False)          # warm-up: imports, allocator, first-touch costs
    off, on, setup = [], [], []
    for _ in range(args.repeat):
        off.append(one(graph, experiment, tracking=False)[0])
        w, s = one(graph, experiment, tracking=True)
        on.append(w)
        setup.append(s)
    n_members = sum(len(a.seeds) for a in graph.arms.values())
    best_off, best_on = min(off), min(on)
    pct = 100.0 * (best_on - best_off) / best_off
    print(f"study {study.study} --preset {args.preset}: {len(graph.arms)} arms, {n_members} members; "
          f"best of {args.repeat}")
    print(f"{'tracking':<10}{'wall s':>9}   runs")
    print(f"{'off':<10}{best_off:>9.2f}   " + " ".join(f"{x:.2f}" for x in off))
    print(f"{'on':<10}{best_on:>9.2f}   " + " ".join(f"{x:.2f}" for x in on))
    print(f"overhead: {pct:+.1f}% of wall time (target <= 5%); one-time store creation "
          f"{min(setup):.2f} s not included")
    if args.json:
        Path(args.json).write_text(json.dumps({"wall_off_s": best_off, "wall_on_s": best_on,
                                               "overhead_pct": pct, "store_setup_s": min(setup)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
