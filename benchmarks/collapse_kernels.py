"""Native kernels vs the ATen path where softmax collapses: a fork study's raised arm, restarted from
the study's own fork snapshot and trained on the ATen path, beside the results the study recorded.

    python -m interventions.run fork_study --preset paper --set task.p=59        # ~30 min, native
    python -m benchmarks.collapse_kernels mlruns/snapshots/fork_study-paper       # ~15 min, ATen

The paper-scale raised arm (1.15 x N0 from the fork at 800) holds norm ~68 and enters softmax collapse
after ~10000 steps; there the last bits of the softmax decide which gradients vanish. Prints per-seed
delays from the fork on both paths, the medians and their relative difference (target: within 3%).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from interventions.engine import snapshot
from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig, MemberState
from interventions.vocab import Levers
from interventions.vocab import MemberKey


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("snapshots", type=Path, help="the study's snapshot folder (holds state.json and forks/)")
    ap.add_argument("--arm", default="clamp_raised")
    ap.add_argument("--kernels", default="aten", help="kernels to retrain the arm with (default aten)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    state = json.loads((args.snapshots / "state.json").read_text())
    arm = state["arms"][args.arm]
    prm, recorded = arm["params"], {r["seed"]: r for r in arm["results"]}
    lever = Levers.from_dict(state["levers"][args.arm])   # the arm's levers, as the study trained it
    fork = next(k for k in state["forks"] if k.startswith(prm["fork_from"] + "@"))
    states = snapshot.load(args.snapshots / "forks" / f"{fork}.pt")["members"]
    init = [MemberState.from_dict(states[s]) for s in sorted(recorded)]
    cfg = CohortConfig(**{**init[0].to_dict()["cohort"], "kernels": args.kernels})
    members = [MemberConfig(key=MemberKey(args.arm, s), seed=s, budget=prm["budget"], lever=lever)
               for s in sorted(recorded)]
    t0 = time.perf_counter()
    c = Cohort(cfg, members, init)
    c.run()
    wall = time.perf_counter() - t0
    fork_step = prm["fork_step"]
    rows = []
    for r in c.results():
        rec = recorded[r["seed"]]
        rows.append((r["seed"], None if rec["t_grok"] is None else rec["t_grok"] - fork_step,
                     None if r["t_grok"] is None else r["t_grok"] - fork_step))
    inf = float("inf")
    med = [statistics.median(inf if x is None else x for x in col) for col in zip(*[r[1:] for r in rows])]
    rel = (med[0] - med[1]) / med[1] if all(m < inf for m in med) else None
    print(f"{args.arm}: delay from the fork {fork} (step {fork_step}), per seed: recorded ({state['study']}, "
          f"kernels {prm.get('kernels', 'as recorded')}) vs retrained ({args.kernels})")
    for seed, a, b in rows:
        print(f"  seed {seed:>3}  {a if a is not None else '-':>8}  {b if b is not None else '-':>8}")
    print(f"  median    {med[0]:>8g}  {med[1]:>8g}   relative difference {rel:+.2%}" if rel is not None
          else f"  median    {med[0]:>8g}  {med[1]:>8g}")
    print(f"  retrained in {wall:.0f} s")
    out = {"arm": args.arm, "fork": fork, "seeds": [r[0] for r in rows], "recorded": [r[1] for r in rows],
           "retrained": [r[2] for r in rows], "median_recorded": med[0], "median_retrained": med[1],
           "relative_difference": rel, "kernels": args.kernels, "wall_s": wall}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
