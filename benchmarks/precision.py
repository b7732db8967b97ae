"""Float64 against float32 on the paper's main cell: the engine's throughput per precision and CPU path.

    python -m benchmarks.precision [--steps 100] [--blocks 4] [--members 12] [--p 59] [--json PATH]

Three cohorts of the same members (p=59 MLP, 12 seeds, full batch, CE, eval of all p^2 pairs every 25
steps): float32 on the compiled kernels, float64 on the compiled kernels, float64 on the ATen path. They
run in alternating blocks so that all three see the same machine load; prints member-steps per second,
CPU time per member-step, and each one's speed relative to float32 (what the precision audit's float64
arms cost beside its float32 arms).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from benchmarks.engine import write_json
from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig

SIDES = (("float32", "native"), ("float64", "native"), ("float64", "aten"))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100, help="steps timed per side (default 100)")
    ap.add_argument("--blocks", type=int, default=4, help="alternating blocks each side is split into")
    ap.add_argument("--members", type=int, default=12)
    ap.add_argument("--p", type=int, default=59)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)

    members = [MemberConfig(key=f"bench/{s}", seed=s, budget=10**9) for s in range(args.members)]
    cohorts = {}
    for precision, kernels in SIDES:
        c = Cohort(CohortConfig(p=args.p, precision=precision, kernels=kernels), members)
        c.run(until=25)  # warm-up: allocator, first eval
        cohorts[f"{precision}/{c.kernels}"] = c
    wall = dict.fromkeys(cohorts, 0.0)
    cpu = dict.fromkeys(cohorts, 0.0)
    for k in range(args.blocks):
        n = args.steps * (k + 1) // args.blocks - args.steps * k // args.blocks
        for side, c in cohorts.items():
            w, t = time.perf_counter(), time.process_time()
            c.run(until=c.step + n)
            wall[side] += time.perf_counter() - w
            cpu[side] += time.process_time() - t
    rate = {s: args.members * args.steps / wall[s] for s in wall}
    cpu_ms = {s: 1e3 * cpu[s] / (args.members * args.steps) for s in cpu}
    first = next(iter(cohorts))
    print(f"mlp p={args.p} members={args.members} steps={args.steps} threads={torch.get_num_threads()} "
          f"load={os.getloadavg()[0]:.1f}")
    print(f"{'':16} {'member-steps/s':>15} {'cpu-ms/member-step':>19} {'vs ' + first:>20}")
    for s in cohorts:
        print(f"{s:16} {rate[s]:15.1f} {cpu_ms[s]:19.2f} {rate[s] / rate[first]:19.2f}x")
    return write_json(args.json, {"member_steps_per_s": rate, "cpu_ms_per_member_step": cpu_ms,
                                  "members": args.members, "p": args.p, "steps": args.steps,
                                  "torch_threads": torch.get_num_threads(),
                                  "load_average_1m": os.getloadavg()[0]})


if __name__ == "__main__":
    main()
