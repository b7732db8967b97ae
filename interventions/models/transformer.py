"""The paper's 1-layer transformer, batched over a leading member dimension (engine.tensors: specs, batches)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from interventions.engine.tensors import Batch, ParamSpec, Workspace
from interventions.kinds import Model, ModelSettings
from interventions.registry import register_model


class TransformerSettings(ModelSettings):
    d_model: int = Field(128, ge=1, description="width of the residual stream (a multiple of n_heads)")
    n_heads: int = Field(4, ge=1, description="attention heads")
    d_mlp: int = Field(512, ge=1, description="width of the MLP's hidden layer")

    @model_validator(mode="after")
    def _heads(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        return self


@register_model("transformer")
class Transformer(Model):
    """1 layer, tokens [a, b, =], n_heads heads, learned positions, MLP d_mlp GeLU, readout at "=".

    A pre-LN block (LN before attention, before the MLP and before the unembedding) whose gains/shifts are
    vectors, so outside weight_norm, weight decay and the clamp; `transformer_noln` (the paper's model, docs/reproduction.md) has
    no LayerNorm and no biases anywhere. The clamp covers every matrix: E, pos, W_Q, W_K, W_V, W_O, W_in,
    W_out, W_U. The input tokens are the task's plus "=" (token id vocab).
    """

    Settings = TransformerSettings
    layernorm = True

    def __init__(self, vocab: int, n_classes: int, settings: TransformerSettings = TransformerSettings()):
        super().__init__(vocab, n_classes, settings)
        p, d_model, n_heads, d_mlp = vocab, settings.d_model, settings.n_heads, settings.d_mlp
        layernorm = self.layernorm
        self.p, self.d, self.nh, self.dh = p, d_model, n_heads, d_model // n_heads
        self.d_mlp, self.ln = d_mlp, layernorm
        d = d_model
        self.specs = [
            ParamSpec("E", (p + 1, d), True, "normal", d),
            ParamSpec("pos", (3, d), True, "normal", d),
            ParamSpec("W_Q", (d, d), True, "normal", d),
            ParamSpec("W_K", (d, d), True, "normal", d),
            ParamSpec("W_V", (d, d), True, "normal", d),
            ParamSpec("W_O", (d, d), True, "normal", d),
            ParamSpec("W_in", (d, d_mlp), True, "normal", d),
            ParamSpec("W_out", (d_mlp, d), True, "normal", d_mlp),
            ParamSpec("W_U", (d, n_classes), True, "normal", d),
        ]
        if layernorm:
            for n in ("ln1", "ln2", "lnf"):
                self.specs += [ParamSpec(f"{n}_g", (d,), False, "ones"), ParamSpec(f"{n}_b", (d,), False, "zeros")]
        self.alloc_layers = ("E", "W_U")
        self.work_per_member = d_mlp

    def _ln(self, P: dict, name: str, x: torch.Tensor) -> torch.Tensor:
        if not self.ln:
            return x
        g, b = P[f"{name}_g"], P[f"{name}_b"]
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (self.d,)
        return F.layer_norm(x, (self.d,)) * g.view(shape) + b.view(shape)

    def _pairs(self, P: dict, ia: torch.Tensor, ib: torch.Tensor, n: int) -> torch.Tensor:
        """Logits (c, n, p) for pairs given as flat row indices into the (c * p) token tables."""
        E, pos, WQ, WK, WV = P["E"], P["pos"], P["W_Q"], P["W_K"], P["W_V"]
        c, p, nh, dh, d = E.shape[0], self.p, self.nh, self.dh, self.d
        x_eq = E[:, p] + pos[:, 2]  # (c, d): the "=" position, the same for every pair
        u0 = self._ln(P, "ln1", E[:, :p] + pos[:, 0:1])  # (c, p, d) position-0 token table
        u1 = self._ln(P, "ln1", E[:, :p] + pos[:, 1:2])
        u2 = self._ln(P, "ln1", x_eq.unsqueeze(1))  # (c, 1, d)
        q = torch.bmm(u2, WQ).view(c, 1, nh, dh)
        u01 = torch.cat([u0, u1, u2], 1)  # (c, 2p + 1, d)
        k = torch.bmm(u01, WK).view(c, 2 * p + 1, nh, dh)
        v = torch.bmm(u01, WV)
        sc = (k * q).sum(-1) / math.sqrt(dh)  # (c, 2p + 1, nh) score of each token table row
        sc_a = sc[:, :p].reshape(c * p, nh).index_select(0, ia).view(c, n, nh)
        sc_b = sc[:, p: 2 * p].reshape(c * p, nh).index_select(0, ib).view(c, n, nh)
        w = torch.softmax(torch.stack([sc_a, sc_b, sc[:, 2 * p:].expand(c, n, nh)], -1), -1)  # (c, n, nh, 3)
        v_a = v[:, :p].reshape(c * p, d).index_select(0, ia).view(c, n, nh, dh)
        v_b = v[:, p: 2 * p].reshape(c * p, d).index_select(0, ib).view(c, n, nh, dh)
        v_eq = v[:, 2 * p:].view(c, 1, nh, dh)
        att = w[..., 0:1] * v_a + w[..., 1:2] * v_b + w[..., 2:3] * v_eq
        x = x_eq.unsqueeze(1) + torch.bmm(att.reshape(c, n, d), P["W_O"])
        x = x + torch.bmm(F.gelu(torch.bmm(self._ln(P, "ln2", x), P["W_in"])), P["W_out"])
        return torch.bmm(self._ln(P, "lnf", x), P["W_U"])

    def tables(self, P: dict) -> None:
        return None  # the transformer's eval gathers per chunk

    def forward(self, P: dict, batch: Batch) -> torch.Tensor:
        return self._pairs(P, batch.ia, batch.ib, batch.a.shape[1])

    def loss_grads(self, P: dict, G: dict, batch: Batch, inv_tau: torch.Tensor, loss,
                   ws: Workspace | None = None) -> torch.Tensor:
        with torch.enable_grad():
            # copies: a detached view would share its version counter with the whole (M, ...) tensor,
            # which other worker threads update in place
            leaves = {k: v.clone().requires_grad_(True) for k, v in P.items()}
            z = self._pairs(leaves, batch.ia, batch.ib, batch.a.shape[1])
            value = loss.value(z * inv_tau.view(-1, 1, 1), batch.y)
            grads = torch.autograd.grad(value.sum(), list(leaves.values()))
        for k, g in zip(leaves, grads):
            G[k].copy_(g)
        return value.detach()

    def grid_logits(self, P: dict, rows: slice, T: None = None, ws: Workspace | None = None) -> torch.Tensor:
        c, p = P["E"].shape[0], self.p
        a = torch.arange(p, device=P["E"].device)[rows]
        r = len(a)
        off = (torch.arange(c, device=a.device) * p)[:, None]
        ia = (a.repeat_interleave(p)[None] + off).reshape(-1)
        ib = (torch.arange(p, device=a.device).repeat(r)[None] + off).reshape(-1)
        return self._pairs(P, ia, ib, r * p)

    def naive_logits(self, P1: dict, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Textbook forward of ONE member: full causal attention over [a, b, =], logits at "="."""
        n, d, nh, dh = len(a), self.d, self.nh, self.dh
        tok = torch.stack([a, b, torch.full_like(a, self.p)], 1)
        x = P1["E"][tok] + P1["pos"]

        def ln(name, t):
            return F.layer_norm(t, (d,), P1[f"{name}_g"], P1[f"{name}_b"]) if self.ln else t

        u = ln("ln1", x)
        q, k, v = [(u @ P1[w]).view(n, 3, nh, dh).transpose(1, 2) for w in ("W_Q", "W_K", "W_V")]
        mask = torch.ones(3, 3, dtype=torch.bool).tril()
        att = (q @ k.transpose(-1, -2) / math.sqrt(dh)).masked_fill(~mask, float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(1, 2).reshape(n, 3, d) @ P1["W_O"]
        x = x + F.gelu(ln("ln2", x) @ P1["W_in"]) @ P1["W_out"]
        return ln("lnf", x)[:, 2] @ P1["W_U"]


@register_model("transformer_noln")
class TransformerNoLN(Transformer):
    """The transformer without LayerNorm (the paper's no-LN transformer, docs/reproduction.md): no biases, no LN vectors."""

    layernorm = False
