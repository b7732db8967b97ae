"""A late, saturated phase to time (benchmarks.engine --late) and where its subnormals come from.

    python -m benchmarks.late make OUT.pt [--model M] [--precision P] [--steps 1000] [--norm N] [--tau T]
    python -m benchmarks.late census SNAPSHOT.pt [--kernels aten|generic] [--steps 10]

`make` trains the model's benchmark cell (12 members) held at an absolute weight norm from step 200 with
the logits divided by tau, as a norm-up arm is: they memorize and their softmax collapses (sc_frac is
printed), and writes the cohort snapshot at the last step. The defaults (p 59: norm 62.7 = 1.15 x the
paper's w_c 54.5 for the MLP, tau 0.25; the transformer 60, tau 0.5) reach sc_frac 0.4-0.5 by step 250.

`census` runs a few training steps and one full evaluation of a snapshot on the calling thread under a
dispatch mode that counts, per ATen operation, the subnormal values among its floating-point outputs and
inputs, then the subnormal entries of the optimizer's buffers. The native kernels run the same mathematics
in one call each, out of the census's sight.
"""
from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch
# the one way to see every ATen operation, autograd's backward ones included; torch has no public path to
# it (checked on torch 2.13), and only this diagnostic uses it
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.engine import CELLS
from interventions.engine import snapshot
from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig
from interventions.vocab import Levers

HELD = {"mlp": (62.7, 0.25), "transformer_noln": (60.0, 0.5), "deep_mlp": (60.0, 0.25)}   # (norm, tau)


def flat(x) -> list:
    """The leaves of nested lists, tuples and dict values (an operation's arguments or results)."""
    if isinstance(x, (list, tuple)):
        return [leaf for v in x for leaf in flat(v)]
    if isinstance(x, dict):
        return flat(list(x.values()))
    return [x]


def subnormals(t) -> int:
    if not (isinstance(t, torch.Tensor) and t.is_floating_point() and t.layout == torch.strided and t.numel()):
        return 0
    return int(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum())


class Census(TorchDispatchMode):
    """Per ATen operation: calls, subnormal outputs, subnormal inputs (this thread's operations only)."""

    def __init__(self):
        super().__init__()
        self.calls, self.out, self.inp = collections.Counter(), collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.calls[name] += 1
        self.inp[name] += sum(subnormals(t) for t in flat((args, kwargs)))
        result = func(*args, **kwargs)
        self.out[name] += sum(subnormals(t) for t in flat(result))
        return result

    def print(self, title: str) -> None:
        rows = [n for n in self.calls if self.out[n] or self.inp[n]]
        print(f"{title}: {len(rows)} of {len(self.calls)} operations see subnormals")
        for n in sorted(rows, key=lambda n: -(self.out[n] + self.inp[n])):
            print(f"  {n:30} {self.calls[n]:6} calls {self.out[n]:10} out {self.inp[n]:10} in")


def make(args) -> None:
    norm, tau = HELD[args.model]
    held = Levers.of(clamp="absolute", target=args.norm or norm, t_int=200, tau=args.tau or tau)
    cfg = CohortConfig(**CELLS[args.model], model=args.model, precision=args.precision)
    c = Cohort(cfg, [MemberConfig(key=f"bench/{s}", seed=s, budget=10**9, lever=held) for s in range(args.members)])
    c.run(until=args.steps)
    ev = c.evaluate(full=True)
    print(f"step {c.step}: sc_frac {ev['softmax/collapse'].mean():.3f} (mean of {len(c.members)}), train acc "
          f"{ev['train/acc'].mean():.3f}, test acc {ev['test/acc'].mean():.3f}, kernels {c.kernels}")
    snapshot.save(args.out, c.state_dict())
    print(f"wrote {args.out}")


def census(args) -> None:
    state = snapshot.load(args.snapshot)
    c = Cohort.from_state({**state, "cfg": {**state["cfg"], "kernels": args.kernels}})
    print(f"{c.cfg.model} {c.cfg.precision} step {c.step}, {c.kernels} path, {len(c.members)} members")
    with Census() as m:
        c.backend.train(c, args.steps)   # outside Cohort.run: on this thread, where the mode sees it
    m.print(f"training, {args.steps} steps")
    with Census() as m:
        c.evaluate(full=True)
    m.print("evaluation (full)")
    for buf, d in c.S.items():
        n = sum(subnormals(v) for v in d.values())
        print(f"optimizer {buf}: {n} subnormal of {sum(v.numel() for v in d.values())}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="train into softmax collapse and write the cohort snapshot")
    mk.add_argument("out", type=Path)
    mk.add_argument("--model", default="mlp", choices=list(CELLS))
    mk.add_argument("--precision", default="float32", choices=["float32", "float64"])
    mk.add_argument("--members", type=int, default=12)
    mk.add_argument("--steps", type=int, default=1000)
    mk.add_argument("--norm", type=float, default=None, help="the held weight norm (default: the model's)")
    mk.add_argument("--tau", type=float, default=None, help="the temperature (default: the model's)")
    cs = sub.add_parser("census", help="which operations see subnormals, from a snapshot")
    cs.add_argument("snapshot", type=Path)
    cs.add_argument("--kernels", default="aten", choices=["aten", "generic"])
    cs.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    make(args) if args.cmd == "make" else census(args)


if __name__ == "__main__":
    main()
