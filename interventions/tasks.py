"""Modular arithmetic task (PAPER.md): all p^2 pairs (a op b) mod p, a seeded train/test split per seed.

Pairs live on the p x p grid; a pair is addressed by its flat index a * p + b. For `div` the column b = 0
is undefined and belongs to neither split.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

OPS = ("add", "sub", "mul", "div")


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % k for k in range(2, int(p**0.5) + 1))


@dataclass(frozen=True)
class Task:
    p: int
    op: str
    labels: torch.Tensor  # (p * p,) long; label of pair a * p + b, -1 where undefined
    valid: torch.Tensor  # (p * p,) bool

    @property
    def n_pairs(self) -> int:
        return int(self.valid.sum())

    def n_train(self, train_fraction: float) -> int:
        return int(round(train_fraction * self.n_pairs))


def make_task(p: int, op: str = "add") -> Task:
    if op not in OPS:
        raise ValueError(f"task.op: unknown op {op!r} (expected one of {', '.join(OPS)})")
    if p < 2:
        raise ValueError(f"task.p: must be >= 2, got {p}")
    if op == "div" and not _is_prime(p):
        raise ValueError(f"task.p: op 'div' needs a prime p (b has an inverse mod p), got {p}")
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    valid = torch.ones(p * p, dtype=torch.bool)
    if op == "add":
        labels = (a + b) % p
    elif op == "sub":
        labels = (a - b) % p
    elif op == "mul":
        labels = (a * b) % p
    else:  # a / b = a * b^(p-2) mod p (Fermat), b != 0
        inv = torch.tensor([pow(int(x), p - 2, p) if x else 0 for x in range(p)])
        labels = (a * inv[b]) % p
        valid = b != 0
        labels = torch.where(valid, labels, torch.full_like(labels, -1))
    return Task(p=p, op=op, labels=labels, valid=valid)


def split(task: Task, train_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Sorted flat indices of the training pairs: a random `train_fraction` of the valid pairs.

    Draws one randperm from `generator` (the member's seeded stream; the split is drawn before the init).
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction: must be in (0, 1), got {train_fraction}")
    pairs = task.valid.nonzero().squeeze(1)
    n = task.n_train(train_fraction)
    if not 0 < n < len(pairs):
        raise ValueError(f"train_fraction: {train_fraction} of {len(pairs)} pairs leaves an empty split")
    perm = torch.randperm(len(pairs), generator=generator)
    return pairs[perm[:n]].sort().values
