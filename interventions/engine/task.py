"""A task's data as the engine uses it: the label table over all vocab x vocab token pairs, which pairs
exist, and a seeded train/test split per member (docs/reproduction.md, the paper's setup: a share `train_fraction` of the pairs).

Pairs live on the vocab x vocab grid, addressed by the flat index a * vocab + b. The task itself (which
pairs, which labels) is a registered plug-in (interventions.tasks); `make_task` builds its table once.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from interventions.registry import TASKS


@dataclass(frozen=True)
class Task:
    p: int                  # the task's size setting (the modulus of a modular task)
    op: str                 # its registered name
    vocab: int              # input tokens
    n_classes: int
    cyclic: bool            # tokens are the residues mod p (the Fourier structure metric applies)
    labels: torch.Tensor    # (vocab * vocab,) long; label of pair a * vocab + b, -1 where undefined
    valid: torch.Tensor     # (vocab * vocab,) bool

    @property
    def n_pairs(self) -> int:
        return int(self.valid.sum())

    def n_train(self, train_fraction: float) -> int:
        return int(round(train_fraction * self.n_pairs))


@lru_cache(maxsize=32)
def make_task(p: int, op: str = "add") -> Task:
    """The task `op` (a registered name) of size p; ValueError naming the registered tasks or why p does
    not make it."""
    try:
        entry = TASKS.get(op)
    except LookupError as e:
        raise ValueError(f"task.op: {e}") from None
    why = entry.check(p)
    if why is not None:
        raise ValueError(f"task.p: {why}")
    labels = torch.tensor(entry.labels(p), dtype=torch.long)
    return Task(p=p, op=op, vocab=entry.vocab(p), n_classes=entry.n_classes(p), cyclic=entry.cyclic,
                labels=labels, valid=labels >= 0)


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
