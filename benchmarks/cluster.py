"""The default `mediation` study on the local executor (SQLite) and on a two-node Ray cluster (one CPU per
node, network namespaces of its own, the MLflow server over PostgreSQL in the head's), on this machine.

    python -m benchmarks.cluster [--study mediation] [--preset default] [--cpus 1] [--json PATH]

Needs root (ip netns). Prints both wall times of the study command (the cluster's start is timed apart),
their ratio, and the Ray executor's own summary line (tasks, connect time, task start latency, events).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import netns
from benchmarks.engine import write_json


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default="mediation")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--cpus", type=int, default=1, help="CPUs per node of the two-node cluster")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    why = netns.netns_available()
    if why:
        sys.exit(f"benchmarks.cluster: {why}")
    study = [args.study, "--preset", args.preset, "--no-progress"]
    out = {"study": args.study, "preset": args.preset, "cpus_per_node": args.cpus}
    with netns.reachable_dir() as d:
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "interventions.run", *study,
                            "--tracking-uri", f"sqlite:///{d}/local/mlflow.db"], cwd=d, env=netns.ENV,
                           capture_output=True, text=True)
        out["local_s"] = time.perf_counter() - t
        if r.returncode:
            sys.exit(f"local run failed:\n{r.stderr[-3000:]}")
        t = time.perf_counter()
        with netns.two_nodes(d, cpus=args.cpus) as (address, server, run):
            out["cluster_start_s"] = time.perf_counter() - t
            t = time.perf_counter()
            r = run([sys.executable, "-m", "interventions.run", *study, "--executor", "ray", "--ray-address", address,
                     "--tracking-uri", server.uri, "--snapshot-dir", str(d / "snap")], cwd=d, capture_output=True,
                    text=True)
            out["cluster_s"] = time.perf_counter() - t
        if r.returncode:
            sys.exit(f"cluster run failed:\n{r.stderr[-3000:]}")
    out["ratio"] = out["cluster_s"] / out["local_s"]
    ray_line = next((ln for ln in reversed((r.stdout + r.stderr).splitlines())   # the executor's summary
                     if ln.startswith("ray: ") and "cohort tasks" in ln), "")
    study_s = re.search(r"arms in (\d+) s", r.stdout)
    print(f"{args.study} --preset {args.preset}: local executor + SQLite {out['local_s']:.1f} s; "
          f"two-node Ray ({args.cpus} CPU/node) + MLflow server on PostgreSQL {out['cluster_s']:.1f} s "
          f"(study {study_s.group(1) if study_s else '?'} s); ratio {out['ratio']:.2f}; "
          f"cluster start (not in the ratio) {out['cluster_start_s']:.1f} s")
    print(ray_line)
    out["ray_summary"] = ray_line
    return write_json(args.json, out)


if __name__ == "__main__":
    main()
