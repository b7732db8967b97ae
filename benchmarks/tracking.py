"""Tracking overhead: the same study trained with MLflow tracking on and off, side by side; or (--store)
tracking's private MLflow paths beside the public API on a synthetic paper-size experiment.

    python -m benchmarks.tracking [STUDY] [--preset smoke] [--repeat 2] [--json PATH]
    python -m benchmarks.tracking --store [--members 1000] [--keys 12] [--points 60] [--repeat 1] [--json PATH]

Each repeat runs the study twice in this process, alternating off/on (so drift in machine load hits
both), each time from scratch in a fresh temporary store; the best wall time of each is compared. "on"
includes everything tracking adds while a study runs: starting the tracking process, creating the runs,
curves, summaries, artifacts, the graph picture and the final flush. The one-time creation of an empty
store (schema migrations, ~1-2 s, paid once per store, not per study) is done before the clock starts
and printed separately. Target: overhead <= 5% of wall time.

--store times, in one temporary SQLite store, each place where tracking reaches into MLflow's private
store objects against the public MlflowClient path that replaces it, on the shapes the paper uses
(~1000 member runs in arms of 12 seeds, 12 curve keys x 60 points each): a private path stays only where
it is > 2x faster (the ratio printed). The synthetic curves are written through tracking.bulk (setup,
untimed). At the default sizes one repeat takes ~4 min on 2 cores (the public paths are most of it).
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from interventions.graph import build_graph
from interventions.run import default_experiment
from interventions.runner import run_study
from interventions.spec import load_study

SEEDS = 12   # members per arm, as in the paper's folders


def _cpu(who) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def one(graph, experiment: str, tracking: bool) -> tuple[float, float, float, float]:
    """(wall s, store-creation s, this process's CPU s, tracking process CPU s) for one run from scratch."""
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlruns' / 'mlflow.db'}"
        setup = 0.0
        if tracking:
            from tracking.store import ensure_experiment
            t = time.perf_counter()
            ensure_experiment(uri, experiment)
            setup = time.perf_counter() - t
        c0, k0, t = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
        run_study(graph, uri=uri, experiment=experiment, progress=False, tracking=tracking,
                  log=lambda *_: None)
        return (time.perf_counter() - t, setup, _cpu(resource.RUSAGE_SELF) - c0,
                _cpu(resource.RUSAGE_CHILDREN) - k0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tracking", description=__doc__.split("\n")[0])
    ap.add_argument("study", nargs="?", default="fork_study")
    ap.add_argument("--store", action="store_true", help="private MLflow paths vs the public API instead")
    ap.add_argument("--members", type=int, default=1000, help="--store: member runs")
    ap.add_argument("--keys", type=int, default=12, help="--store: curve keys per member")
    ap.add_argument("--points", type=int, default=60, help="--store: points per curve")
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", help="write the figures printed (seconds, ratios) here as JSON")
    args = ap.parse_args(argv)
    if args.store:
        return store_paths(args.members, args.keys, args.points, args.repeat, args.json)
    study = load_study(args.study, args.preset)
    graph = build_graph(study)
    experiment = default_experiment(study.study, study.preset)
    one(graph, experiment, tracking=False)          # warm-up: imports, allocator, first-touch costs
    off, on, setup, cpu_off, cpu_on, cpu_child = [], [], [], [], [], []
    for _ in range(args.repeat):
        w, _, c, _ = one(graph, experiment, tracking=False)
        off.append(w)
        cpu_off.append(c)
        w, s, c, k = one(graph, experiment, tracking=True)
        on.append(w)
        setup.append(s)
        cpu_on.append(c)
        cpu_child.append(k)
    n_members = sum(len(a.seeds) for a in graph.arms.values())
    best_off, best_on = min(off), min(on)
    pct = 100.0 * (best_on - best_off) / best_off
    print(f"study {study.study} --preset {args.preset}: {len(graph.arms)} arms, {n_members} members; "
          f"best of {args.repeat}")
    print(f"{'tracking':<10}{'wall s':>9}{'train CPU s':>13}{'tracking CPU s':>16}   wall of each run")
    print(f"{'off':<10}{best_off:>9.2f}{min(cpu_off):>13.2f}{0:>16.2f}   " + " ".join(f"{x:.2f}" for x in off))
    print(f"{'on':<10}{best_on:>9.2f}{min(cpu_on):>13.2f}{min(cpu_child):>16.2f}   "
          + " ".join(f"{x:.2f}" for x in on))
    print(f"overhead: {pct:+.1f}% of wall time (target <= 5%); one-time store creation "
          f"{min(setup):.2f} s not included.\nTracking CPU is spent in a separate process (MLflow calls, "
          "matplotlib) beside the training; wall times on a machine shared with other jobs vary by +-20%.")
    if args.json:
        Path(args.json).write_text(json.dumps({"wall_off_s": best_off, "wall_on_s": best_on,
                                               "overhead_pct": pct, "store_setup_s": min(setup),
                                               "tracking_process_cpu_s": min(cpu_child)}, indent=1))
    return 0


def _member_specs(arm: str, n: int) -> list[dict]:
    """n member runs as the importer writes them: 23 params, 4 tags, 10 summaries."""
    params = {k: 1.0 for k in ("p", "rho", "tau", "gamma", "train_fraction", "lr", "weight_decay", "t_int",
                               "w_c", "budget", "eval_every", "fork_step")}
    params.update({k: "none" for k in ("model", "loss", "precision", "clamp", "fork_from", "tau_source",
                                       "design", "design_role", "retire", "arm")})
    summaries = ("t_mem", "t_grok", "delay", "grokked", "diverged", "logit_scale_at_grok", "weight_norm_at_grok",
                 "weight_norm_final", "N0", "target")
    return [{"name": f"{arm} seed={s}", "params": {**params, "arm": arm, "seed": s},
             "tags": {"study": "bench", "arm": arm, "seed": s, "design_role": "none"},
             "metrics": {k: 100.0 * (s + 1) for k in summaries}} for s in range(n)]


def _import_members(uri: str, experiment: str, n_members: int, private_sql: bool) -> tuple[float, list[str]]:
    """(seconds in add_finished_runs, member ids): arms of SEEDS members, each arm one call, as the importer."""
    from tracking.recorder import Recorder
    rec = Recorder(uri, experiment, private_sql=private_sql)
    study = rec.run("study", "bench", tags={"study": "bench"})
    arms = [rec.run("arm", f"arm{a}", parent_id=study, tags={"study": "bench", "arm": f"arm{a}"})
            for a in range(-(-n_members // SEEDS))]
    rec.flush()
    ids, t = [], time.perf_counter()
    for a, arm_id in enumerate(arms):
        ids += rec.add_finished_runs("member", arm_id, _member_specs(f"arm{a}", min(SEEDS, n_members - len(ids))))
    took = time.perf_counter() - t
    rec.close()
    return took, ids


def _curve_store(uri: str, n_members: int, keys: list[str], n_points: int) -> list[str]:
    """A synthetic experiment of finished members with curves (written in bulk: setup, not timed)."""
    from tracking import bulk
    from tracking.store import client, ensure_experiment
    eid = ensure_experiment(uri, "bench/curves")
    curves = {k: [(25 * i, i / n_points) for i in range(n_points)] for k in keys}
    runs = [bulk.FinishedRun(f"m{i}", {"mlflow.runName": f"m{i}", "role": "member"}, {}, {}, curves)
            for i in range(n_members)]
    return bulk.insert_finished_runs(client(uri), eid, runs)


def store_paths(n_members: int, n_keys: int, n_points: int, repeat: int, json_path: str | None) -> int:
    """Each private MLflow path of tracking/ beside its public replacement, best of `repeat`, as ratios."""
    from tracking.query import load_curves
    keys = [f"curve/k{i}" for i in range(n_keys)]
    times: dict[str, dict[str, list[float]]] = {"import": {"private": [], "public": []},
                                                "curves": {"private": [], "public": []}}
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlruns' / 'mlflow.db'}"
        ids = _curve_store(uri, n_members, keys, n_points)
        for r in range(repeat):
            order = ("private", "public") if r % 2 == 0 else ("public", "private")   # drift hits both
            for path in order:
                took, members = _import_members(uri, f"bench/import/{path}/{r}", n_members, path == "private")
                assert len(set(members)) == n_members
                times["import"][path].append(took)
            for path in order:
                t = time.perf_counter()
                df = load_curves(ids, keys, uri, private_sql=path == "private")
                times["curves"][path].append(time.perf_counter() - t)
                assert len(df) == n_members * n_keys * n_points
    print(f"synthetic store: {n_members} member runs (arms of {SEEDS}), {n_keys} curve keys x {n_points} points; "
          f"best of {repeat}")
    print(f"{'path':<58}{'private s':>10}{'public s':>10}{'public/private':>16}")
    what = {"import": "bulk finished runs (tracking.bulk vs create+log_batch+end)",
            "curves": "load_curves (history_bulk vs get_metric_history)"}
    out = {}
    for name, t in times.items():
        priv, pub = min(t["private"]), min(t["public"])
        out[name] = {"private_s": priv, "public_s": pub, "ratio": pub / priv}
        print(f"{what[name]:<58}{priv:>10.2f}{pub:>10.2f}{pub / priv:>15.1f}x")
    print("rule: keep a private path only where public/private > 2")
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
