"""Prieto et al.'s MLP ("Grokking at the Edge of Numerical Stability", ICLR 2025), batched over members:
the input is concat(one_hot(a), one_hot(b)) (2 x vocab wide), then hidden layers of widths `hidden`
with biases and `activation`, then a linear readout to the classes:

    x_0 = concat(one_hot(a), one_hot(b)),  x_{l+1} = act(x_l W_l + b_l),  logits = x_L W_L + b_L

A one-hot row times W_0 is a row of W_0, so the first layer is two lookups, W_0[a] + W_0[vocab + b], and
W_0 is an embedding table: rows 0 .. vocab - 1 the a-tokens', the rest the b-tokens'. It is named `E`
for that reason (and because the toolkit reads `E` for the Fourier structure metric and in checkpoints:
its first vocab rows); the others are W1 .. WL, the biases b0 .. bL. Trains on the generic path (no
hand-written backward).
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


class DeepMLPSettings(ModelSettings):
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [200, 200], min_length=1,
                                                      description="the hidden layers' widths, in order")
    activation: Literal["relu", "gelu", "tanh"] = Field("relu", description="after each hidden layer")


@register_model("deep_mlp")
class DeepMLP(Model):
    """One-hot pair -> hidden layers (`hidden`, `activation`) -> readout (module doc)."""

    Settings = DeepMLPSettings

    def __init__(self, vocab: int, n_classes: int, settings: DeepMLPSettings = DeepMLPSettings()):
        super().__init__(vocab, n_classes, settings)
        widths = [2 * vocab, *settings.hidden, n_classes]
        self.n = len(widths) - 1   # linear layers, the readout among them
        self.W = ["E"] + [f"W{l}" for l in range(1, self.n)]
        self.b = [f"b{l}" for l in range(self.n)]
        self.specs = [ParamSpec(w, (widths[l], widths[l + 1]), True, "normal", widths[l]) for l, w in enumerate(self.W)]
        self.specs += [ParamSpec(b, (widths[l + 1],), False, "zeros") for l, b in enumerate(self.b)]
        self.act = ACTIVATIONS[settings.activation]
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
