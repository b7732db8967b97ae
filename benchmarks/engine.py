"""Engine throughput vs a plain PyTorch loop on the paper's main cell (issue 2, acceptance 2).

    python -m benchmarks.engine [--steps 300] [--reference-steps 30] [--threads N] [--kernels K] [--json PATH]
    python -m benchmarks.engine --model transformer_noln [--steps 100] [--reference-steps 20]

Both train the same members (p=59 MLP, 12 seeds, full batch, CE, float32, same seeds and splits, eval of
all p^2 pairs every 25 steps): the engine as one cohort; the reference the way common grokking code does
it, one nn.Module and one torch.optim.AdamW per seed. They run in alternating blocks so that both see the
same machine load. Prints member-steps per second of each and their ratio, and the CPU time (all
threads) per member-step, a figure that shared, loaded cores distort less; --json writes
engine_member_steps_per_s, reference_member_steps_per_s, ratio (plus the CPU figures and settings).
--kernels aten|native|generic picks the engine's path (default auto: the compiled kernels where they build);
--kernels all times the native, ATen and generic paths side by side (each its own cohort of the same
members, in the same alternation), the generic path being what a plug-in lever or loss trains on.
--model transformer_noln times the paper's no-LayerNorm transformer (d_model 128, 4 heads, MLP 512, lr 5e-4;
ATen path) against a textbook nn.Module of the same shapes (its own init, the engine's splits).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig


class PlainMLP(nn.Module):
    """The paper's MLP as a textbook module: Embedding, concat, Linear, GELU, Linear."""

    def __init__(self, p: int, d_embed: int, d_hidden: int):
        super().__init__()
        self.embed = nn.Embedding(p, d_embed)
        self.l1 = nn.Linear(2 * d_embed, d_hidden)
        self.l2 = nn.Linear(d_hidden, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(F.gelu(self.l1(self.embed(x).flatten(1))))


class PlainTransformer(nn.Module):
    """The no-LayerNorm transformer as common grokking code writes it: tokens [a, b, =], learned positions,
    causal attention over all three positions, a GeLU MLP, no biases, the logits read at "="."""

    def __init__(self, p: int, d: int, n_heads: int, d_mlp: int):
        super().__init__()
        self.p, self.nh = p, n_heads
        self.embed, self.pos = nn.Embedding(p + 1, d), nn.Parameter(torch.randn(3, d) / d ** 0.5)
        self.qkv, self.o = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.w_in, self.w_out = nn.Linear(d, d_mlp, bias=False), nn.Linear(d_mlp, d, bias=False)
        self.unembed = nn.Linear(d, p, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = self.embed(torch.cat([x, x.new_full((n, 1), self.p)], 1)) + self.pos
        q, k, v = (t.view(n, 3, self.nh, -1).transpose(1, 2) for t in self.qkv(h).chunk(3, -1))
        h = h + self.o(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(n, 3, -1))
        h = h + self.w_out(F.gelu(self.w_in(h)))
        return self.unembed(h[:, -1])


class Reference:
    """One module + AdamW per member, started from the engine's init and split."""

    def __init__(self, cohort: Cohort, cfg: CohortConfig):
        p = cfg.p
        self.items = []
        grid = torch.stack([torch.arange(p).repeat_interleave(p), torch.arange(p).repeat(p)], 1)
        self.x_all, self.y_all = grid, cohort.labels
        for i in range(len(cohort.members)):
            if cfg.model != "mlp":
                net = PlainTransformer(p, cfg.d_model, cfg.n_heads, cfg.d_mlp)
                opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                        weight_decay=cfg.weight_decay)
                self.items.append((net, opt, grid[cohort.train_idx[i]], cohort.labels[cohort.train_idx[i]]))
                continue
            net = PlainMLP(p, cfg.d_embed, cfg.d_hidden)
            with torch.no_grad():
                net.embed.weight.copy_(cohort.P["E"][i])
                net.l1.weight.copy_(cohort.P["W1"][i].T)
                net.l1.bias.copy_(cohort.P["b1"][i])
                net.l2.weight.copy_(cohort.P["W2"][i].T)
                net.l2.bias.copy_(cohort.P["b2"][i])
            decay = [net.embed.weight, net.l1.weight, net.l2.weight]
            opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                     {"params": [net.l1.bias, net.l2.bias], "weight_decay": 0.0}],
                                    lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
            idx = cohort.train_idx[i]
            self.items.append((net, opt, grid[idx], cohort.labels[idx]))
        self.cfg, self.step = cfg, 0

    def run(self, n: int) -> None:
        for _ in range(n):
            self.step += 1
            for net, opt, x, y in self.items:
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x), y).backward()
                opt.step()
            if self.step % self.cfg.eval_every == 0:
                with torch.no_grad():
                    for net, _, _, _ in self.items:
                        net(self.x_all).argmax(-1).eq(self.y_all).float().mean()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="engine steps timed (default 300)")
    ap.add_argument("--reference-steps", type=int, default=30, help="reference steps timed (default 30)")
    ap.add_argument("--blocks", type=int, default=4, help="alternating blocks each side is split into")
    ap.add_argument("--members", type=int, default=12)
    ap.add_argument("--p", type=int, default=59)
    ap.add_argument("--precision", default="float32", choices=["float32", "float64"])
    ap.add_argument("--model", default="mlp", choices=["mlp", "transformer_noln"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--kernels", default="auto", choices=["auto", "native", "aten", "generic", "all"],
                    help="engine path (default auto: native where it builds); all: native, aten and generic")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    tf = dict(model="transformer_noln", lr=5e-4) if args.model != "mlp" else {}
    members = [MemberConfig(key=f"bench/{s}", seed=s, budget=10**9) for s in range(args.members)]
    paths = ["native", "aten", "generic"] if args.kernels == "all" else [args.kernels]
    cohorts = {}
    for k in paths:
        try:
            cohorts[k] = Cohort(CohortConfig(p=args.p, precision=args.precision, kernels=k, **tf), members)
        except ValueError as e:        # e.g. native kernels not built here, or not for this model
            print(f"{k}: not timed ({e})")
    first = next(iter(cohorts.values()))
    cfg = first.cfg
    ref = Reference(first, cfg)
    for c in cohorts.values():
        c.run(until=25)  # warm-up: allocator, first eval
    ref.run(5)
    sides = {**{f"engine:{k}": (args.steps, lambda n, c=c: c.run(until=c.step + n)) for k, c in cohorts.items()},
             "reference": (args.reference_steps, ref.run)}
    wall = {s: 0.0 for s in sides}
    cpu = {s: 0.0 for s in sides}  # process CPU time, all threads: the work, whatever the load
    for k in range(args.blocks):
        for side, (total, go) in sides.items():
            n = total * (k + 1) // args.blocks - total * k // args.blocks
            w, c = time.perf_counter(), time.process_time()
            go(n)
            wall[side] += time.perf_counter() - w
            cpu[side] += time.process_time() - c
    steps = {s: total for s, (total, _) in sides.items()}
    rate = {s: args.members * steps[s] / wall[s] for s in wall}
    cpu_ms = {s: 1e3 * cpu[s] / (args.members * steps[s]) for s in cpu}
    main_side = f"engine:{next(iter(cohorts))}"   # the sides are named by the --kernels asked for ("auto" too)
    out = {"engine_member_steps_per_s": rate[main_side], "reference_member_steps_per_s": rate["reference"],
           "ratio": rate[main_side] / rate["reference"],
           "engine_cpu_ms_per_member_step": cpu_ms[main_side],
           "reference_cpu_ms_per_member_step": cpu_ms["reference"],
           "cpu_ratio": cpu_ms["reference"] / cpu_ms[main_side],
           "paths": {k: {"member_steps_per_s": rate[f"engine:{k}"], "cpu_ms_per_member_step": cpu_ms[f"engine:{k}"],
                         "ratio": rate[f"engine:{k}"] / rate["reference"]} for k in cohorts},
           "members": args.members, "p": args.p, "model": args.model, "precision": args.precision,
           "kernels": first.kernels if len(cohorts) == 1 else "all",
           "engine_steps": args.steps, "reference_steps": args.reference_steps,
           "torch_threads": torch.get_num_threads(), "load_average_1m": os.getloadavg()[0]}
    print(f"{args.model} p={args.p} members={args.members} {args.precision} kernels={out['kernels']} "
          f"threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f}")
    print(f"{'':15} {'member-steps/s':>15} {'cpu-ms/member-step':>19} {'vs reference':>13}")
    for s in sides:
        print(f"{s:15} {rate[s]:15.1f} {cpu_ms[s]:19.2f} {rate[s] / rate['reference']:12.2f}x   "
              f"({steps[s]} steps in {wall[s]:.1f} s)")
    return write_json(args.json, out)


def write_json(path: Path | None, out: dict) -> dict:
    """The figures `out`, also written to `path` as JSON when one is given (--json)."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
