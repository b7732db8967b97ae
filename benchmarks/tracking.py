"""Tracking overhead: the same study run with MLflow tracking on and off, side by side; or (--store)
tracking's private MLflow paths beside the public API on a synthetic paper-size experiment.

    python -m benchmarks.tracking [STUDY] [--preset default] [--repeat 2] [--json PATH]
    python -m benchmarks.tracking --store [--members 1000] [--keys 12] [--points 60] [--repeat 1] [--json PATH]

Each side is the command a user types, timed from launch to exit: "on" is `python -m interventions.run
STUDY --preset P --tracking-uri <fresh store>`; "off" is the same study through the same run_study with
tracking off (`--untracked`, in a fresh interpreter too). So "on" includes everything tracking adds:
starting the tracking process and its imports, creating the runs, curves, summaries, artifacts, the
graph picture and the final flush. Each repeat runs both, alternating which goes first (drift in machine
load hits both); the best wall time of each is compared, and the median of the pairs' overheads (the two
runs of a pair are back to back, so drift cancels). The one-time creation of an empty store (schema
migrations, ~1-2 s, paid once per store, not per study) is done before the clock starts and printed
separately. Target: overhead <= 5% of wall time. The default is the main job, as `make run` runs it
(fork_study, its default preset: ~3 min a side); a smoke preset (~5 s) mostly shows tracking's fixed cost,
MLflow's own import in the tracking process. The warm-up before the clock runs the smoke preset untracked.

--store times, in one temporary SQLite store, each place where tracking reaches into MLflow's private
store objects against the public MlflowClient path that replaces it, on the shapes the paper uses
(~1000 member runs in arms of 12 seeds, 12 curve keys x 60 points each): a private path stays only where
it is > 2x faster (the ratio printed). Live curve points, and live member runs (opened with a dataset input,
summaries logged, ended with their arm), are timed on a tenth of the members, as a study logs them (curve
points: RUNNING, one step of every key at a time). The synthetic curves are written through tracking.bulk (setup,
untimed). At the default sizes one repeat takes ~4 min on 2 cores (the public paths are most of it).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEEDS = 12   # members per arm, as in the paper's folders


def one(study: str, preset: str, tracking: bool) -> tuple[float, float, float]:
    """(wall s, store-creation s, CPU s of the command and all it started) for one run from scratch."""
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlruns' / 'mlflow.db'}"
        setup = 0.0
        if tracking:
            from tracking.store import ensure_experiment
            from interventions.study.spec import default_experiment
            t = time.perf_counter()
            ensure_experiment(uri, default_experiment(study, preset))
            setup = time.perf_counter() - t
            cmd = ["-m", "interventions.run", study, "--preset", preset, "--tracking-uri", uri, "--no-progress"]
        else:
            cmd = ["-m", "benchmarks.tracking", "--untracked", study, "--preset", preset]
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *cmd], stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}")
        return wall, setup, usage.ru_utime + usage.ru_stime


def untracked(study: str, preset: str) -> int:
    """The "off" side: what `python -m interventions.run` does, with tracking off."""
    from interventions.study.graph import build_graph
    from interventions.execution.studies import run_study
    from interventions.study.spec import load_study
    graph = build_graph(load_study(study, preset))
    with tempfile.TemporaryDirectory() as tmp:
        run_study(graph, uri=f"sqlite:///{tmp}/mlflow.db", experiment=study, progress=False, tracking=False)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tracking", description=__doc__.split("\n")[0])
    ap.add_argument("study", nargs="?", default="fork_study")
    ap.add_argument("--store", action="store_true", help="private MLflow paths vs the public API instead")
    ap.add_argument("--untracked", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--members", type=int, default=1000, help="--store: member runs")
    ap.add_argument("--keys", type=int, default=12, help="--store: curve keys per member")
    ap.add_argument("--points", type=int, default=60, help="--store: points per curve")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", help="write the figures printed (seconds, ratios) here as JSON")
    args = ap.parse_args(argv)
    if args.store:
        return store_paths(args.members, args.keys, args.points, args.repeat, args.json)
    if args.untracked:
        return untracked(args.study, args.preset)
    one(args.study, "smoke", tracking=False)   # warm-up: the kernels' build cache, the OS file cache
    runs: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    for r in range(args.repeat):
        for tracking in ((False, True) if r % 2 == 0 else (True, False)):
            runs[tracking].append(one(args.study, args.preset, tracking))
    best = {k: min(v) for k, v in runs.items()}   # by wall time
    pct = 100.0 * (best[True][0] - best[False][0]) / best[False][0]
    paired = sorted(100.0 * (on[0] - off[0]) / off[0] for off, on in zip(runs[False], runs[True]))
    median = statistics.median(paired)
    print(f"study {args.study} --preset {args.preset}, the command from launch to exit; {args.repeat} pairs")
    print(f"{'tracking':<10}{'wall s':>9}{'CPU s':>9}   wall of each run, in order")
    for k in (False, True):
        print(f"{'on' if k else 'off':<10}{best[k][0]:>9.2f}{best[k][2]:>9.2f}   "
              + " ".join(f"{w:.2f}" for w, *_ in runs[k]))
    setup = min(s for _, s, _ in runs[True])
    print(f"overhead (target <= 5%): best against best {pct:+.1f}%; each pair (run side by side) "
          + " ".join(f"{x:+.1f}%" for x in paired) + f", median {median:+.1f}%\n"
          f"tracking's CPU (best runs) {best[True][2] - best[False][2]:+.2f} s; one-time store creation {setup:.2f} s "
          "not included.\nThe tracking process works beside the training and starts beside the command's own "
          "imports; wall times on a machine shared with other jobs vary by +-20%.")
    if args.json:
        Path(args.json).write_text(json.dumps({"wall_off_s": best[False][0], "wall_on_s": best[True][0],
                                               "overhead_pct": pct, "paired_overhead_pct": paired,
                                               "median_paired_overhead_pct": median, "store_setup_s": setup,
                                               "cpu_off_s": best[False][2], "cpu_on_s": best[True][2]}, indent=1))
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
    """(seconds in add_runs, member ids): arms of SEEDS members, each arm one call, as the importer."""
    from tracking.recorder import Recorder
    rec = Recorder(uri, experiment, private_sql=private_sql)
    study = rec.run("study", "bench", tags={"study": "bench"})
    arms = [rec.run("arm", f"arm{a}", parent_id=study, tags={"study": "bench", "arm": f"arm{a}"})
            for a in range(-(-n_members // SEEDS))]
    rec.flush()
    ids, t = [], time.perf_counter()
    for a, arm_id in enumerate(arms):
        ids += rec.add_runs("member", arm_id, _member_specs(f"arm{a}", min(SEEDS, n_members - len(ids))),
                           status="FINISHED")
    took = time.perf_counter() - t
    rec.close()
    return took, ids


def _live_members(uri: str, experiment: str, n_members: int, private_sql: bool) -> float:
    """Seconds to open member runs (RUNNING, a dataset input each) an arm of SEEDS at a time, then log
    their summaries and end each arm with its members, as a study's tracking process does."""
    from tracking.recorder import Recorder
    rec = Recorder(uri, experiment, private_sql=private_sql)
    study = rec.run("study", "bench", tags={"study": "bench"})
    arms = [rec.run("arm", f"arm{a}", parent_id=study, tags={"study": "bench", "arm": f"arm{a}"})
            for a in range(-(-n_members // SEEDS))]
    rec.flush()
    t, left = time.perf_counter(), n_members
    for a, arm_id in enumerate(arms):
        specs = _member_specs(f"arm{a}", min(SEEDS, left))
        left -= len(specs)
        for sp in specs:
            sp["datasets"] = [{"name": "add_mod59_tf0.40", "digest": f"s{sp['params']['seed']}",
                               "source": {"split_seeds": [sp["params"]["seed"]]}, "profile": {"train_pairs": 1392}}]
        ids = rec.add_runs("member", arm_id, [{k: v for k, v in sp.items() if k != "metrics"} for sp in specs])
        for rid, sp in zip(ids, specs):
            rec.log_summary(rid, sp["metrics"])
        rec.finish([*ids, arm_id])
    took = time.perf_counter() - t
    rec.close()
    return took


def _log_points(uri: str, experiment: str, n_members: int, keys: list[str], n_points: int,
                private_sql: bool) -> float:
    """Seconds to log live curves (RUNNING member runs, one step of every key at a time, then flush),
    as a study's tracking process does."""
    from tracking.recorder import Recorder
    rec = Recorder(uri, experiment, private_sql=private_sql)
    study = rec.run("study", "bench", tags={"study": "bench"})
    ids = [rec.run("member", f"m{i}", parent_id=study, tags={"study": "bench", "seed": i}) for i in range(n_members)]
    rec.flush()
    t = time.perf_counter()
    for i in range(n_points):
        for rid in ids:
            rec.log_curves(rid, {k: [(25 * i, i / n_points)] for k in keys})
    rec.flush()
    took = time.perf_counter() - t
    rec.close()
    return took


def _curve_store(uri: str, n_members: int, keys: list[str], n_points: int) -> list[str]:
    """A synthetic experiment of finished members with curves (written in bulk: setup, not timed)."""
    from tracking import bulk
    from tracking.store import client, ensure_experiment
    eid = ensure_experiment(uri, "bench/curves")
    curves = {k: [(25 * i, i / n_points) for i in range(n_points)] for k in keys}
    runs = [bulk.NewRun(f"m{i}", {"mlflow.runName": f"m{i}", "role": "member"}, {}, {}, curves)
            for i in range(n_members)]
    return bulk.insert_runs(client(uri), eid, runs)


def store_paths(n_members: int, n_keys: int, n_points: int, repeat: int, json_path: str | None) -> int:
    """Each private MLflow path of tracking/ beside its public replacement, best of `repeat`, as ratios."""
    from tracking.query import load_curves
    keys = [f"curve/k{i}" for i in range(n_keys)]
    times: dict[str, dict[str, list[float]]] = {"import": {"private": [], "public": []},
                                                "curves": {"private": [], "public": []},
                                                "points": {"private": [], "public": []},
                                                "live": {"private": [], "public": []}}
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
            for path in order:
                times["points"][path].append(_log_points(uri, f"bench/points/{path}/{r}", n_members // 10, keys,
                                                         n_points, path == "private"))
            for path in order:
                times["live"][path].append(_live_members(uri, f"bench/live/{path}/{r}", n_members // 10,
                                                         path == "private"))
    print(f"synthetic store: {n_members} member runs (arms of {SEEDS}), {n_keys} curve keys x {n_points} points; "
          f"best of {repeat}")
    print(f"{'path':<58}{'private s':>10}{'public s':>10}{'public/private':>16}")
    what = {"import": "bulk finished runs (tracking.bulk vs create+log_batch+end)",
            "curves": "load_curves (history_bulk vs get_metric_history)",
            "points": "live curve points (bulk.log_metrics vs log_batch)",
            "live": "live member runs, opened and ended by arm (bulk vs per run)"}
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
