"""The tensors every model and backend shares, batched over members: parameter specs and their init, the
member groups' training pairs as gather indices (`Batch`), reusable buffers (`Workspace`), and the Fourier
structure metric.

Every parameter tensor is (M, *shape): member m's weights are row m. Inputs are pairs (a, b) of tokens,
addressed on the vocab x vocab grid by the flat index a * vocab + b.

Init: every matrix N(0, 1) / sqrt(fan_in), fan_in = its input width (rows, for x @ W); for the
embeddings (E, pos), whose rows are looked up rather than mixed, fan_in = the embedding width (as
nn.Linear-style code treating E as a d-wide layer would). This reproduces the released step-1 norms:
p=59 MLP |E| 7.68 ~ sqrt(p), |W1| 16.0, |W2| 7.68; the transformer's total 35.7.
Biases (and LayerNorm shifts) zero, LayerNorm gains one. Matrices come first in `specs`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    matrix: bool  # in weight_norm, weight-decayed and clamped; vectors (biases, LN) are none of those
    init: str  # "normal" (N(0,1)/sqrt(fan_in)), "zeros", "ones"
    fan_in: int = 0  # "normal": the input width; embeddings: their width (rows are looked up, not mixed)


def init_member(specs: list[ParamSpec], gen: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One member's parameters, drawn in `specs` order from the member's generator (float64, then cast)."""
    out = {}
    for s in specs:
        if s.init == "normal":
            t = torch.randn(s.shape, generator=gen, dtype=torch.float64) / math.sqrt(s.fan_in)
        elif s.init == "zeros":
            t = torch.zeros(s.shape, dtype=torch.float64)
        else:
            t = torch.ones(s.shape, dtype=torch.float64)
        out[s.name] = t.to(dtype)
    return out


def squared_norms(P: dict[str, torch.Tensor], matrices: list[str], rows: slice = slice(None)) -> torch.Tensor:
    """Squared Frobenius norm of every matrix of members `rows`: (m, L), in working precision."""
    return torch.stack([P[n][rows].flatten(1).pow(2).sum(1) for n in matrices], 1)


def fourier_top5(E: torch.Tensor, p: int) -> torch.Tensor:
    """`structure` (docs/statistics.md) per member: power of the embedding's DFT along the p token rows (E: (M, >= p, d);
    the transformer's "=" row left out), summed over the embedding dimension, constant term dropped; the
    share of the 5 strongest of the distinct frequencies 1..p // 2 (a random init gives ~0.19 at p = 59,
    as the release's step-1 value)."""
    power = torch.fft.rfft(E[:, :p].double(), dim=1).abs().pow(2).sum(-1)[:, 1:]  # (M, p // 2)
    return power.topk(min(5, power.shape[1]), dim=1).values.sum(1) / power.sum(1)


class Workspace:
    """Reusable activation buffers: fresh multi-MB tensors every step cost page faults (the allocator
    hands large blocks back to the OS), a large share of a CPU step. One per worker thread."""

    def __init__(self):
        self.bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        n = math.prod(shape)
        b = self.bufs.get(name)
        if b is None or b.numel() < n or b.dtype != like.dtype or b.device != like.device:
            b = self.bufs[name] = torch.empty(n, dtype=like.dtype, device=like.device)
        return b[:n].view(shape)

    def get_list(self, name: str, like: list[torch.Tensor]) -> list[torch.Tensor]:
        """Tensors shaped like `like` (e.g. one member's gradients), kept for the next call."""
        b = self.bufs.get(name)
        if b is None or [t.shape for t in b] != [t.shape for t in like] or b[0].dtype != like[0].dtype:
            b = self.bufs[name] = [torch.empty_like(t) for t in like]
        return b

    def native(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """A buffer of `dtype` the native kernels size themselves (they grow it on demand)."""
        key = f"native:{name}:{dtype}"
        b = self.bufs.get(key)
        if b is None:
            b = self.bufs[key] = torch.empty(0, dtype=dtype)
        return b


@dataclass
class Batch:
    """Training pairs of a group of members (rows s:e of the cohort), as flat gather indices."""
    s: int
    e: int
    a: torch.Tensor  # (c, N) member-local token ids
    b: torch.Tensor
    y: torch.Tensor  # (c, N, 1) labels
    ia: torch.Tensor  # (c * N,) flat rows of the group's token tables for operand a (see make_batches)
    ib: torch.Tensor
    iab: torch.Tensor | None = None  # (c * N, 2): both, for embedding_bag
    scatter: torch.Tensor | None = None  # MLP: CSR 0/1 (c * 2p, c * N), sums example rows into table rows


def make_batches(train_idx: torch.Tensor, labels: torch.Tensor, p: int, chunk: int, paired: bool,
                 dtype: torch.dtype = torch.float32) -> list[Batch]:
    """Split members into groups of `chunk` and precompute their gather indices; p: the vocabulary.

    paired (MLP): one table of 2p rows per member, row 2x holding token x's a-half, row 2x + 1 its
    b-half; else (transformer) a table of p token rows per member.
    """
    out = []
    M = train_idx.shape[0]
    for s in range(0, M, chunk):
        e = min(M, s + chunk)
        idx = train_idx[s:e]
        a, b = idx // p, idx % p
        off = (torch.arange(e - s, device=idx.device) * p)[:, None]
        ia, ib = (a + off).reshape(-1), (b + off).reshape(-1)
        if paired:
            ia, ib = 2 * ia, 2 * ib + 1
        batch = Batch(s, e, a, b, labels[idx].unsqueeze(-1), ia, ib, torch.stack([ia, ib], 1))
        if paired:  # the MLP's backward scatters into table rows with a sparse 0/1 product
            n = ia.numel()
            ex = torch.arange(n, device=idx.device)
            batch.scatter = _csr(torch.cat([ia, ib]), torch.cat([ex, ex]), (2 * p * (e - s), n), dtype)
        out.append(batch)
    return out


def _csr(rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """0/1 CSR matrix with ones at (rows, cols); entries of a row sorted by column (a fixed sum order)."""
    order = torch.argsort(rows * shape[1] + cols)
    crow = torch.zeros(shape[0] + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=shape[0]).cumsum(0)
    with warnings.catch_warnings():  # CSR support is flagged "beta"; the spmm used here is stable
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, cols[order], torch.ones(len(rows), dtype=dtype, device=rows.device),
                                       shape, check_invariants=False)
