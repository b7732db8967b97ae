"""Engine throughput against a textbook PyTorch loop and against the machine, per model and path.

    python -m benchmarks.engine [--model mlp|transformer_noln|deep_mlp] [--kernels auto|native|aten|generic|all]
                                [--precision float32|float64] [--lever NAME[=JSON]] [--loss NAME]
                                [--late SNAPSHOT [--subnormals flush|keep|both]] [--threads N] [--device D]
                                [--json PATH]

The engine trains the members (12 seeds, full batch, CE, eval of all pairs every 25 steps) as one cohort;
the reference trains the same members the way common grokking code does it, one nn.Module and one
torch.optim.AdamW per seed (benchmarks/textbook.py). They run in alternating blocks so that both see the
same machine load. Printed per side: member-steps/s, CPU-ms per member-step (all threads; shared cores
distort it less), the ratio to the reference, and GFLOP/s from the stated FLOP count per member-step
(benchmarks/flops.py: the engine's algebra for the engine, the textbook one for the reference) with its
efficiency: that rate over torch.mm's on 2048 x 2048 matrices in the same precision on the same threads,
measured in the same run.

Models: mlp (the paper's, p 59), transformer_noln (the paper's no-LayerNorm transformer, lr 5e-4, p 59),
deep_mlp (Prieto et al.'s one-hot MLP, [200, 200] ReLU, p 113). --kernels all times the native, ATen and
generic paths side by side, each its own cohort of the same members. --lever and --loss change the cell
(a registered lever with its settings as JSON, `--lever grokfast_ema='{"lamb": 2}'`; a registered loss):
a path that cannot train that cell times the plain cell instead and says so, so the generic path with a
plug-in is set beside the fast paths on the paper cell. --late times a late phase from a cohort snapshot
(benchmarks.late makes one in softmax collapse; a study's snapshots/<experiment>/cohorts/*.pt also do), with
subnormals flushed on the worker threads (the engine's default), kept, or both side by side; no reference.
--device cuda times engine, textbook loop and torch.mm on the accelerator.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from benchmarks import flops
from benchmarks.textbook import Reference
from interventions.engine import snapshot
from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig
from interventions.kinds import user_fields
from interventions.registry import LEVERS
from interventions.vocab import Levers

CELLS = {"mlp": {"p": 59}, "transformer_noln": {"p": 59, "lr": 5e-4}, "deep_mlp": {"p": 113}}
FLUSH = "INTERVENTIONS_FLUSH_SUBNORMALS"


def cohorts(args, levers: dict) -> dict[str, Cohort]:
    """One cohort per path asked for, named by the path, with " (plain cell)" where it could not train
    the cell with --lever/--loss, " (late)" from --late."""
    paths = ["native", "aten", "generic"] if args.kernels == "all" else [args.kernels]
    state = snapshot.load(args.late) if args.late else None
    cell = dict(CELLS[args.model], model=args.model, precision=args.precision, device=args.device)
    if args.p:
        cell["p"] = args.p
    out = {}
    for k in paths:
        try:
            if state is not None:
                cfg = {**state["cfg"], "kernels": k, "device": args.device}
                out[f"{k} (late)"] = Cohort.from_state({**state, "cfg": cfg})
                continue
            lv = Levers.of(**levers)
            ms = [MemberConfig(key=f"bench/{s}", seed=s, budget=10**9, lever=lv) for s in range(args.members)]
            try:
                out[k] = Cohort(CohortConfig(**cell, loss=args.loss, kernels=k), ms)
            except ValueError:
                if not (levers or args.loss != "ce") or k == "generic":
                    raise
                plain = [MemberConfig(key=m.key, seed=m.seed, budget=m.budget) for m in ms]
                out[f"{k} (plain cell)"] = Cohort(CohortConfig(**cell, kernels=k), plain)
        except ValueError as e:        # e.g. native kernels not built here, or not for this model
            print(f"{k}: not timed ({e})")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="engine steps timed (default 300)")
    ap.add_argument("--reference-steps", type=int, default=30, help="reference steps timed (default 30)")
    ap.add_argument("--blocks", type=int, default=4, help="alternating blocks each side is split into")
    ap.add_argument("--members", type=int, default=12)
    ap.add_argument("--model", default="mlp", choices=list(CELLS))
    ap.add_argument("--p", type=int, default=None, help="the task's size (default: the model's cell)")
    ap.add_argument("--precision", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or an accelerator (cuda): engine and textbook loop")
    ap.add_argument("--kernels", default="auto", choices=["auto", "native", "aten", "generic", "all"],
                    help="engine path (default auto: native where it builds); all: native, aten and generic")
    ap.add_argument("--lever", action="append", default=[], metavar="NAME[=JSON]",
                    help="a registered lever in every member, its settings as JSON (default: the source's)")
    ap.add_argument("--loss", default="ce", help="a registered loss (default ce)")
    ap.add_argument("--late", type=Path, default=None, help="time from this cohort snapshot (its own cell)")
    ap.add_argument("--subnormals", default="flush", choices=["flush", "keep", "both"],
                    help="worker threads flush subnormals (the default), keep them, or time both")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    levers = {}
    for spec in args.lever:
        name, _, given = spec.partition("=")
        S = LEVERS.get(name).Settings   # no JSON: every setting at the source's default, given
        levers[name] = json.loads(given) if given else {k: getattr(S(), k) for k in user_fields(S)}

    engines = cohorts(args, levers)
    first = next(iter(engines.values()))
    cfg, start = first.cfg, first.step
    modes = ["flush", "keep"] if args.subnormals == "both" else [args.subnormals]
    sides, count = {}, {}
    for k, c in engines.items():
        c.run(until=c.step + 25)  # warm-up: allocator, first eval
        for mode in modes:
            name = f"{k}" + (f" {mode}" if len(modes) > 1 else "")
            sides[name] = (args.steps, lambda n, c=c, mode=mode: run(c, n, mode))
            count[name] = (flops.member_step(c) or {}).get("engine")
    ref = None
    if args.late is None:
        ref = Reference(first, cfg)   # the plain cell: CE, no lever
        ref.run(5)
        sides["reference"] = (args.reference_steps, ref.run)
        count["reference"] = (flops.member_step(first) or {}).get("textbook")
    rate_mm = flops.matmul_rate(first.dtype, first.device)
    wall = {s: 0.0 for s in sides}
    cpu = {s: 0.0 for s in sides}  # process CPU time, all threads: the work, whatever the load
    for k in range(args.blocks):
        for side, (total, go) in sides.items():
            n = total * (k + 1) // args.blocks - total * k // args.blocks
            w, c = time.perf_counter(), time.process_time()
            go(n)
            flops.sync(first.device)
            wall[side] += time.perf_counter() - w
            cpu[side] += time.process_time() - c
    rate_mm = max(rate_mm, flops.matmul_rate(first.dtype, first.device))   # the machine's best, before or after
    M = len(first.members)
    steps = {s: total for s, (total, _) in sides.items()}
    rate = {s: M * steps[s] / wall[s] for s in wall}
    cpu_ms = {s: 1e3 * cpu[s] / (M * steps[s]) for s in cpu}
    gflops = {s: rate[s] * count[s] / 1e9 if count[s] else None for s in sides}
    vs = {s: rate[s] / rate["reference"] if ref else None for s in sides}
    main_side = next(iter(sides))
    out = {"engine_member_steps_per_s": rate[main_side], "engine_cpu_ms_per_member_step": cpu_ms[main_side],
           "paths": {s: {"member_steps_per_s": rate[s], "cpu_ms_per_member_step": cpu_ms[s], "ratio": vs[s],
                         "gflops": gflops[s], "efficiency": gflops[s] / rate_mm if gflops[s] else None}
                     for s in sides if s != "reference"},
           "matmul_gflops": rate_mm, "flops_per_member_step": count,
           "members": M, "p": cfg.p, "model": cfg.model, "precision": cfg.precision,
           "loss": args.loss if args.late is None else cfg.loss,
           "levers": levers, "late": str(args.late) if args.late else None, "start_step": start,
           "kernels": first.kernels if len(engines) == 1 else "all", "subnormals": args.subnormals,
           "device": str(first.device),
           "engine_steps": args.steps, "torch_threads": torch.get_num_threads(),
           "load_average_1m": os.getloadavg()[0]}
    if ref:
        out.update({"reference_member_steps_per_s": rate["reference"], "ratio": vs[main_side],
                    "reference_cpu_ms_per_member_step": cpu_ms["reference"],
                    "cpu_ratio": cpu_ms["reference"] / cpu_ms[main_side], "reference_steps": args.reference_steps})
    extra = f" loss={args.loss if args.late is None else cfg.loss}" + "".join(f" {k}={v}" for k, v in levers.items())
    print(f"{cfg.model} p={cfg.p} members={M} {cfg.precision}{extra} threads={torch.get_num_threads()} "
          f"load={os.getloadavg()[0]:.1f}" + (f" from {args.late} (step {start})" if args.late else ""))
    stated = {"engine": count[main_side], "textbook": count.get("reference")}
    print("FLOPs per member-step: "
          + (", ".join(f"{k} {v / 1e6:.0f} M" for k, v in stated.items() if v) or "not stated")
          + f"; torch.mm {rate_mm:.0f} GFLOP/s ({cfg.precision}, {torch.get_num_threads()} threads)")
    print(f"{'':24} {'member-steps/s':>15} {'cpu-ms/member-step':>19} {'vs reference':>13} {'GFLOP/s':>8} "
          f"{'efficiency':>10}")
    for s in sides:
        r = f"{vs[s]:12.2f}x" if vs[s] else f"{'-':>13}"
        g = f"{gflops[s]:8.1f} {gflops[s] / rate_mm:10.0%}" if gflops[s] else f"{'-':>8} {'-':>10}"
        print(f"{s:24} {rate[s]:15.1f} {cpu_ms[s]:19.2f} {r} {g}   ({steps[s]} steps in {wall[s]:.1f} s)")
    return write_json(args.json, out)


def run(c: Cohort, n: int, subnormals: str) -> None:
    """n steps of cohort c, its worker threads flushing subnormals or keeping them."""
    before = os.environ.get(FLUSH)
    os.environ[FLUSH] = "1" if subnormals == "flush" else "0"
    try:
        c.run(until=c.step + n)
    finally:
        if before is None:
            os.environ.pop(FLUSH)
        else:
            os.environ[FLUSH] = before


def write_json(path: Path | None, out: dict) -> dict:
    """The figures `out`, also written to `path` as JSON when one is given (--json)."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
