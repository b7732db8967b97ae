"""The paper's MLP and what every model shares (specs, init, batches, buffers, `build`), batched over members.

PAPER.md, "Setup"; the transformer is in transformer.py.

Every parameter tensor is (M, *shape): member m's weights are row m. Inputs are pairs (a, b) of tokens,
so the first layer is exactly two per-token lookups: for the MLP, concat(E[a], E[b]) @ W1 equals
(E @ W1a)[a] + (E @ W1b)[b] with W1a, W1b the halves of W1 that read the a- and b-embedding; for the
transformer, everything before the mixing at "=" is a function of one token. Tables over the p tokens
replace the (N x 2d) @ W1 product (the MLP's largest FLOP cost) and are gathered with flat indices.

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
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from . import levers

if TYPE_CHECKING:
    from .transformer import Transformer


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


def fourier_top5(E: torch.Tensor, p: int) -> torch.Tensor:
    """PAPER.md `structure` per member: power of the embedding's DFT along the p token rows (E: (M, >= p, d);
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
    """Split members into groups of `chunk` and precompute their gather indices.

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


class MLP:
    """E (p x d_embed) shared by both operands; concat -> W1 + b1 -> GeLU -> W2 + b2 (PAPER.md).

    Training uses a hand-written backward (loss_grads) checked against autograd on `naive_logits`.
    """

    kind = "mlp"

    def __init__(self, p: int, d_embed: int = 128, d_hidden: int = 256):
        self.p, self.d, self.H = p, d_embed, d_hidden
        self.specs = [
            ParamSpec("E", (p, d_embed), True, "normal", d_embed),
            ParamSpec("W1", (2 * d_embed, d_hidden), True, "normal", 2 * d_embed),
            ParamSpec("W2", (d_hidden, p), True, "normal", d_hidden),
            ParamSpec("b1", (d_hidden,), False, "zeros"),
            ParamSpec("b2", (p,), False, "zeros"),
        ]
        self.alloc_layers = ("E", "W2")  # the layers the allocation clamp trades norm between
        self.paired = True  # table rows: a- and b-halves per token
        self.work_per_member = d_hidden  # width of the (N x width) activations, for chunk sizing
        self.p_pad = -(-p // 16) * 16  # logits computed 16-wide: GEMMs with p=59 columns run ~1.5x slower

    def _readout(self, P: dict, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
        """W2 and b2 padded to p_pad columns: zero weights; bias `fill` (-inf keeps pads out of softmax)."""
        W2, b2 = P["W2"], P["b2"]
        c, p = W2.shape[0], self.p
        W2p = W2.new_zeros(c, self.H, self.p_pad)
        W2p[..., :p] = W2
        b2p = b2.new_full((c, 1, self.p_pad), fill)
        b2p[:, 0, :p] = b2
        return W2p, b2p

    def tables(self, P: dict) -> torch.Tensor:
        """(c, p, 2H): row x = [E[x] @ W1a + b1, E[x] @ W1b], one GEMM against W1's halves side by side."""
        E, W1, b1 = P["E"], P["W1"], P["b1"]
        c, d, H = E.shape[0], self.d, self.H
        T = torch.bmm(E, W1.view(c, 2, d, H).permute(0, 2, 1, 3).reshape(c, d, 2 * H))
        T[..., :H] += b1.unsqueeze(1)
        return T

    def forward(self, P: dict, batch: Batch) -> torch.Tensor:
        """Logits (c, N, p) of the batch's training pairs; differentiable (tests, reference)."""
        T = self.tables(P).reshape(-1, self.H)  # rows 2x, 2x + 1: token x's a- and b-halves
        pre = (T.index_select(0, batch.ia) + T.index_select(0, batch.ib)).view(batch.e - batch.s, -1, self.H)
        return torch.baddbmm(P["b2"].unsqueeze(1), F.gelu(pre), P["W2"])

    def loss_grads(self, P: dict, G: dict, batch: Batch, inv_tau: torch.Tensor, loss: str,
                   ws: Workspace) -> torch.Tensor:
        """Loss (c,) of the batch's members on their training pairs; writes d loss / d param into G.

        P, G: the group's rows (views). Hand-written backward; activations live in `ws` buffers, each
        reused as soon as it is dead (h -> dh, pre -> dpre, z -> dz).
        """
        c, p, H, d = batch.e - batch.s, self.p, self.H, self.d
        N = batch.a.shape[1]
        E, W1 = P["E"], P["W1"]
        T = self.tables(P)
        pre = F.embedding_bag(batch.iab, T.view(-1, H), mode="sum").view(c, N, H)  # Ta[a] + Tb[b]
        h = torch._C._nn.gelu(pre, out=ws.get("h", (c, N, H), T))
        W2p, b2p = self._readout(P, float("-inf") if loss == "ce" else 0.0)
        z = torch.baddbmm(b2p, h, W2p, out=ws.get("z", (c, N, self.p_pad), T))  # pads: no loss, no grad
        value, dz = levers.loss_and_dlogits(z, batch.y, inv_tau, loss)
        G["W2"].copy_(torch.bmm(dz.transpose(1, 2), h)[:, :p].transpose(1, 2))  # dz^T h: the faster layout
        G["b2"].copy_(dz.sum(1)[:, :p])
        dh = torch.bmm(dz, W2p.transpose(1, 2), out=h)
        dpre = torch.ops.aten.gelu_backward.grad_input(dh, pre, approximate="none", grad_input=pre)
        dT = torch.mm(batch.scatter, dpre.view(-1, H), out=ws.get("dT", (c * 2 * p, H), T)).view(c, p, 2 * H)
        torch.sum(dT[..., :H], 1, out=G["b1"])  # every example lands in exactly one a-half row
        W1s = W1.view(c, 2, d, H).permute(0, 2, 1, 3).reshape(c, d, 2 * H)  # [W1a | W1b]
        torch.bmm(dT, W1s.transpose(1, 2), out=G["E"])
        G["W1"].view(c, 2, d, H).copy_(torch.bmm(E.transpose(1, 2), dT).view(c, d, 2, H).transpose(1, 2))
        return value

    def grid_logits(self, P: dict, rows: slice, T: torch.Tensor | None = None,
                    ws: Workspace | None = None) -> torch.Tensor:
        """Logits (c, r * p, p) of all pairs (a, b) with a in `rows` (a slice); no index tensors.

        T: the group's tables, when the caller evaluates several row blocks.
        """
        T = self.tables(P) if T is None else T
        ws = ws or Workspace()
        c, r, p, H = T.shape[0], rows.stop - rows.start, self.p, self.H
        pre = ws.get("grid", (c, r, p, H), T)
        torch.add(T[:, rows, :H].unsqueeze(2), T[:, :, H:].unsqueeze(1), out=pre)
        h = torch._C._nn.gelu_(pre).view(c, r * p, H)
        W2p, b2p = self._readout(P, 0.0)
        z = torch.baddbmm(b2p, h, W2p, out=ws.get("grid_z", (c, r * p, self.p_pad), T))
        return z[..., :p].contiguous()

    def naive_logits(self, P1: dict, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Textbook forward of ONE member (params without the member dim): concat -> W1 -> GeLU -> W2."""
        x = torch.cat([P1["E"][a], P1["E"][b]], -1)
        return F.gelu(x @ P1["W1"] + P1["b1"]) @ P1["W2"] + P1["b2"]


def build(cfg) -> MLP | Transformer:
    """The model a CohortConfig names."""
    if cfg.model == "mlp":
        return MLP(cfg.p, cfg.d_embed, cfg.d_hidden)
    if cfg.model in ("transformer", "transformer_noln"):
        from .transformer import Transformer  # it builds on ParamSpec, Batch and Workspace here
        return Transformer(cfg.p, cfg.d_model, cfg.n_heads, cfg.d_mlp, layernorm=cfg.model == "transformer")
    raise ValueError(f"cohort.model: unknown model {cfg.model!r} (expected mlp | transformer | transformer_noln)")
