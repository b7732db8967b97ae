"""The paper's MLP (docs/reproduction.md, "The paper's setup"), batched over members, with a hand-written backward.

Inputs are pairs (a, b) of tokens, so the first layer is exactly two per-token lookups: concat(E[a], E[b]) @ W1
equals (E @ W1a)[a] + (E @ W1b)[b] with W1a, W1b the halves of W1 that read the a- and b-embedding. Tables
over the tokens replace the (N x 2d) @ W1 product (the MLP's largest FLOP cost) and are gathered with flat
indices.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from interventions.engine.tensors import Batch, ParamSpec, Workspace
from interventions.kinds import Model, ModelSettings
from interventions.registry import register_model


class MLPSettings(ModelSettings):
    d_embed: int = Field(128, ge=1, description="width of the token embedding E")
    d_hidden: int = Field(256, ge=1, description="width of the hidden layer (W1's output)")


@register_model("mlp")
class MLP(Model):
    """E (vocab x d_embed) shared by both operands; concat -> W1 + b1 -> GeLU -> W2 + b2 (docs/reproduction.md).

    Training uses a hand-written backward (loss_grads) checked against autograd on `naive_logits`.
    """

    Settings = MLPSettings
    paired = True  # table rows: a- and b-halves per token
    needs_closed_form_loss = True   # loss_grads takes the loss's gradient in the logits in closed form

    def __init__(self, vocab: int, n_classes: int, settings: MLPSettings = MLPSettings()):
        super().__init__(vocab, n_classes, settings)
        d_embed, d_hidden = settings.d_embed, settings.d_hidden
        self.p, self.C, self.d, self.H = vocab, n_classes, d_embed, d_hidden
        self.specs = [
            ParamSpec("E", (vocab, d_embed), True, "normal", d_embed),
            ParamSpec("W1", (2 * d_embed, d_hidden), True, "normal", 2 * d_embed),
            ParamSpec("W2", (d_hidden, n_classes), True, "normal", d_hidden),
            ParamSpec("b1", (d_hidden,), False, "zeros"),
            ParamSpec("b2", (n_classes,), False, "zeros"),
        ]
        self.alloc_layers = ("E", "W2")  # the layers the allocation clamp trades norm between
        self.work_per_member = d_hidden  # width of the (N x width) activations, for chunk sizing
        self.p_pad = -(-n_classes // 16) * 16  # logits computed 16-wide: GEMMs with 59 columns run ~1.5x slower

    def _readout(self, P: dict, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
        """W2 and b2 padded to p_pad columns: zero weights; bias `fill` (-inf keeps pads out of softmax)."""
        W2, b2 = P["W2"], P["b2"]
        c, p = W2.shape[0], self.C
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

    def loss_grads(self, P: dict, G: dict, batch: Batch, inv_tau: torch.Tensor, loss,
                   ws: Workspace) -> torch.Tensor:
        """Loss (c,) of the batch's members on their training pairs; writes d loss / d param into G.

        P, G: the group's rows (views). Hand-written backward; activations live in `ws` buffers, each
        reused as soon as it is dead (h -> dh, pre -> dpre, z -> dz).
        """
        c, p, C, H, d = batch.e - batch.s, self.p, self.C, self.H, self.d
        N = batch.a.shape[1]
        E, W1 = P["E"], P["W1"]
        T = self.tables(P)
        pre = F.embedding_bag(batch.iab, T.view(-1, H), mode="sum").view(c, N, H)  # Ta[a] + Tb[b]
        h = torch._C._nn.gelu(pre, out=ws.get("h", (c, N, H), T))
        W2p, b2p = self._readout(P, loss.pad_logit)
        z = torch.baddbmm(b2p, h, W2p, out=ws.get("z", (c, N, self.p_pad), T))  # pads: no loss, no grad
        value, dz = loss.value_and_dlogits(z, batch.y, inv_tau)
        G["W2"].copy_(torch.bmm(dz.transpose(1, 2), h)[:, :C].transpose(1, 2))  # dz^T h: the faster layout
        G["b2"].copy_(dz.sum(1)[:, :C])
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
        """Logits (c, r * vocab, n_classes) of all pairs (a, b) with a in `rows` (a slice); no index tensors.

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
        return z[..., :self.C].contiguous()

    def naive_logits(self, P1: dict, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Textbook forward of ONE member (params without the member dim): concat -> W1 -> GeLU -> W2."""
        x = torch.cat([P1["E"][a], P1["E"][b]], -1)
        return F.gelu(x @ P1["W1"] + P1["b1"]) @ P1["W2"] + P1["b2"]
