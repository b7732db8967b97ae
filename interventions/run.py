"""CLI: run a study (an intervention graph) and log every arm to MLflow.

    python -m interventions.run STUDY [--preset NAME] [--set k=v ...] [--tracking-uri URI]
                                [--experiment NAME] [--device cpu|cuda] [--dry-run] [--fresh]
                                [--executor local|ray [--ray-address ADDR] [--cpus-per-task N]]
                                [--snapshot-dir DIR]

STUDY is a bundled study name (fork_study, mediation, collapse_grid, dose_law, allocation, precision_audit,
transformer), a suite (`paper`: all of them, each at its paper preset, or at `--preset default`), or a path
to a YAML file. Rerunning
the same command after an interruption resumes from the last snapshot; a finished study is not retrained
unless --fresh. Bad input exits with status 2 and one message naming the file, the key path and the reason.
"""
from __future__ import annotations

import argparse
import sys

from interventions.version import __version__
from interventions.study.graph import build_graph
from interventions.study.spec import SpecError, default_experiment, load_study
from interventions.study.suite import find_suite, load_suite

EXIT_BAD_INPUT = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m interventions.run",
                                 description="Run an intervention-graph study and track it in MLflow.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__} (grokking-interventions)")
    ap.add_argument("study", help="bundled study name (fork_study, mediation, ...), a suite (paper) or a YAML path")
    ap.add_argument("--preset", help="named preset of the study file (default: 'default' if it has one)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override any field by dotted key, e.g. --set defaults.task.p=31 "
                         "--set arms.clamp_raised.rho=1.2 (repeatable; applied after the preset)")
    ap.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
                                           "sqlite:///<cwd>/mlruns/mlflow.db)")
    ap.add_argument("--experiment", help="MLflow experiment (default: the study name; "
                                         "<study>-<preset> for presets other than 'default')")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="where cohorts train: this process (default) or a Ray cluster, a wave's cohorts at once")
    ap.add_argument("--ray-address", metavar="ADDR",
                    help="with --executor ray: 'auto' or HOST:PORT joins a running cluster (default: start a "
                         "local Ray instance for this command)")
    ap.add_argument("--cpus-per-task", type=int, metavar="N",
                    help="with --executor ray: CPUs (worker threads) per cohort task (default: the smallest "
                         "node's CPU count)")
    ap.add_argument("--snapshot-dir", metavar="DIR",
                    help="where fork states, cohort checkpoints and state.json go (default: beside a SQLite "
                         "store, else ./mlruns/snapshots); on a cluster, a folder every node can read")
    ap.add_argument("--dry-run", action="store_true",
                    help="validate and print the expanded graph; train and write nothing")
    ap.add_argument("--fresh", action="store_true",
                    help="start over: delete this study's old runs and snapshots first")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    suite = find_suite(args.study)
    try:
        if suite is not None:
            if args.experiment:
                raise SpecError(suite, "--experiment", "a suite gives each study its own experiment")
            studies = load_suite(suite, args.preset, args.sets)
        else:
            studies = [(build_graph(load_study(args.study, args.preset, args.sets)), None)]
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    graph, study = studies[0][0], studies[0][0].study
    from tracking.credentials import write_refusal
    from tracking.store import EXPERIMENT_KIND, StoreError, check_uri, resolve_uri
    uri = resolve_uri(args.tracking_uri)
    experiment = args.experiment or default_experiment(study.study, study.preset)
    try:
        check_uri(uri)
        for x in [experiment] if suite is None else [x for _, x in studies]:
            if why := (not args.dry_run) and write_refusal(uri, x, EXPERIMENT_KIND):
                raise StoreError(uri, why)
    except StoreError as e:
        print(f"error: {study.source}: --tracking-uri: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if suite is None:
        studies = [(graph, experiment)]
    if (args.ray_address or args.cpus_per_task) and args.executor != "ray":
        print(f"error: {study.source}: --ray-address/--cpus-per-task: only with --executor ray", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        from interventions.execution.persist import snapshot_dir
        from interventions.study.views import render
        for g, x in studies:
            print(render(g))
            print(f"  tracking: {uri}, experiment {x!r}; snapshots in {snapshot_dir(uri, x, args.snapshot_dir)}")
        print("dry run: nothing trained, nothing written")
        return 0
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print(f"error: {study.source}: --device: cuda requested but no CUDA device is available",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
    from interventions.execution.tracking_process import prestart
    prestart(uri)   # the tracking process starts now, beside the imports of torch below
    executor = None
    if args.executor == "ray":
        from interventions.execution.cluster import ClusterError, RayExecutor
        try:
            plugins = [p["source"] for g, _ in studies for p in g.study.plugin_info if p["listed"]]
            executor = RayExecutor(args.ray_address, cpus=args.cpus_per_task, device=args.device, plugins=plugins)
        except ClusterError as e:
            print(f"error: {study.source}: --executor ray: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
    from interventions.execution.persist import ResumeError
    try:
        from interventions.execution.studies import run_suite
        run_suite(studies, uri=uri, device=args.device, fresh=args.fresh, progress=not args.no_progress,
                  summary=suite is not None, executor=executor, snapshots=args.snapshot_dir)
    except ResumeError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as e:     # the study cannot go on (e.g. no seed memorized before a fork point)
        print(f"error: {study.source}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: open runs marked KILLED; run the same command again to resume",
              file=sys.stderr)
        return 130
    finally:
        if executor is not None:
            executor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
