"""Prieto et al.'s MLP ("Grokking at the Edge of Numerical Stability", ICLR 2025), batched over members:
the input is concat(one_hot(a), one_hot(b)) (2 x vocab wide), then hidden layers of widths `hidden`
with biases and `activation`, then a linear readout to the classes:

    x_0 = concat(one_hot(a), one_hot(b)),  x_{l+1} = act(x_l W_l + b_l),  logits = x_L W_L + b_L

A one-hot row times W_0 is a row of W_0, so the first layer is two lookups, W_0[a] + W_0[vocab + b], and
W_0 is an embedding table: rows 0 .. vocab - 1 the a-tokens', the rest the b-tokens'. It is named `E`
for that reason (and because the toolkit reads `E` for the Fourier structure metric and in checkpoints:
its first vocab rows); the others are W1 .. WL, the biases b0 .. bL. A hand-written backward
(`loss_grads`, the ATen fast path's) scatters the first layer's gradient into the rows it read; the
generic path takes autograd of `forward`, and the tests hold the two together.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from interventions.engine.tensors import Batch, ParamSpec
from interventions.kinds import Model, ModelSettings
from interventions.registry import register_model

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh}
# d act / d x times the incoming gradient, from the pre-activation x and the activation's output
BACKWARD = {"relu": lambda g, x, out: torch.ops.aten.threshold_backward(g, x, 0.0),
            "gelu": lambda g, x, out: torch.ops.aten.gelu_backward(g, x),
            "tanh": lambda g, x, out: torch.ops.aten.tanh_backward(g, out)}


class DeepMLPSettings(ModelSettings):
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [200, 200], min_length=1,
                                                      description="the hidden layers' widths, in order")
    activation: Literal["relu", "gelu", "tanh"] = Field("relu", description="after each hidden layer")


@register_model("deep_mlp")
class DeepMLP(Model):
    """One-hot pair -> hidden layers (`hidden`, `activation`) -> readout (module doc)."""

    Settings = DeepMLPSettings
    needs_closed_form_loss = True   # loss_grads takes the loss's gradient in the logits in closed form

    def __init__(self, vocab: int, n_classes: int, settings: DeepMLPSettings = DeepMLPSettings()):
        super().__init__(vocab, n_classes, settings)
        widths = [2 * vocab, *settings.hidden, n_classes]
        self.n = len(widths) - 1   # linear layers, the readout among them
        self.W = ["E"] + [f"W{l}" for l in range(1, self.n)]
        self.b = [f"b{l}" for l in range(self.n)]
        self.specs = [ParamSpec(w, (widths[l], widths[l + 1]), True, "normal", widths[l]) for l, w in enumerate(self.W)]
        self.specs += [ParamSpec(b, (widths[l + 1],), False, "zeros") for l, b in enumerate(self.b)]
        self.act, self.act_backward = ACTIVATIONS[settings.activation], BACKWARD[settings.activation]
        self.alloc_layers = (self.W[0], self.W[-1])   # the allocation clamp trades norm between these
        self.work_per_member = max(settings.hidden)

    def _rest(self, P: dict, pre: torch.Tensor) -> torch.Tensor:
        """Logits (c, N, C) from the first layer's pre-activations (c, N, hidden[0])."""
        x = pre
        for l in range(1, self.n):
            x = torch.baddbmm(P[self.b[l]].unsqueeze(1), self.act(x), P[self.W[l]])
        return x

    def forward(self, P: dict, batch: Batch) -> torch.Tensor:
        """Logits (c, N, n_classes) of the batch's training pairs; differentiable."""
        E = P["E"]
        member = torch.arange(E.shape[0], device=E.device).unsqueeze(1)
        pre = E[member, batch.a] + E[member, self.vocab + batch.b] + P["b0"].unsqueeze(1)
        return self._rest(P, pre)

    def loss_grads(self, P: dict, G: dict, batch: Batch, inv_tau: torch.Tensor, loss, ws=None) -> torch.Tensor:
        """Loss (c,) of the batch's members on their training pairs; writes d loss / d param into G (the
        group's rows). The first layer's gradient lands in the rows of E its pairs read (index_add_: in
        order on a CPU, so bit for bit the same on every run)."""
        E, V = P["E"], self.vocab
        c, width = E.shape[0], E.shape[2]
        off = (torch.arange(c, device=E.device) * 2 * V).unsqueeze(1)
        ia, ib = (batch.a + off).reshape(-1), (batch.b + V + off).reshape(-1)
        x = F.embedding_bag(torch.stack([ia, ib], 1), E.reshape(-1, width), mode="sum").view(c, -1, width)
        xs, outs = [x.add_(P["b0"].unsqueeze(1))], []
        for l in range(1, self.n):
            outs.append(self.act(xs[-1]))
            xs.append(torch.baddbmm(P[self.b[l]].unsqueeze(1), outs[-1], P[self.W[l]]))
        value, dx = loss.value_and_dlogits(xs.pop(), batch.y, inv_tau)
        for l in range(self.n - 1, 0, -1):
            h = outs.pop()
            torch.bmm(h.transpose(1, 2), dx, out=G[self.W[l]])
            torch.sum(dx, 1, out=G[self.b[l]])
            dx = self.act_backward(torch.bmm(dx, P[self.W[l]].transpose(1, 2)), xs.pop(), h)
        torch.sum(dx, 1, out=G["b0"])
        dE = G["E"].zero_().view(-1, width)
        dx = dx.reshape(-1, width)
        dE.index_add_(0, ia, dx)
        dE.index_add_(0, ib, dx)
        return value

    def grid_logits(self, P: dict, rows: slice, T=None, ws=None) -> torch.Tensor:
        """Logits (c, r * vocab, n_classes) of every pair (a, b), a in `rows`, b over the vocab (a-major)."""
        E, V = P["E"], self.vocab
        pre = E[:, rows].unsqueeze(2) + E[:, V:].unsqueeze(1) + P["b0"][:, None, None]   # (c, r, V, h)
        return self._rest(P, pre.flatten(1, 2))

    def naive_logits(self, P1: dict, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Textbook forward of ONE member (parameters without the member dim), with real one-hot inputs."""
        V = self.vocab
        x = torch.cat([F.one_hot(a, V), F.one_hot(b, V)], -1).to(P1["E"].dtype)
        for l in range(self.n):
            x = x @ P1[self.W[l]] + P1[self.b[l]]
            if l < self.n - 1:
                x = self.act(x)
        return x
