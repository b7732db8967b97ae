"""The reference the engine is timed against: each model as common grokking code writes it, one nn.Module and
one torch.optim.AdamW per seed, started from the engine's init and split where the shapes allow."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from interventions.engine.cohort import Cohort, CohortConfig


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


class PlainOneHot(nn.Module):
    """Prieto et al.'s MLP as a textbook module: the one-hot pair (2 vocab wide) through Linear layers."""

    def __init__(self, vocab: int, hidden: list[int], n_classes: int, activation: str):
        super().__init__()
        widths = [2 * vocab, *hidden, n_classes]
        act = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}[activation]
        layers = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), act()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Reference:
    """One module + AdamW per member, the engine's split; the paper MLP and deep_mlp also start from the
    engine's init (the transformer's parameter layout differs: its own init)."""

    def __init__(self, cohort: Cohort, cfg: CohortConfig):
        p, V = cfg.p, cohort.task.vocab
        grid = torch.stack([torch.arange(V).repeat_interleave(V), torch.arange(V).repeat(V)], 1).to(cohort.device)
        if cfg.model == "deep_mlp":   # the one-hot inputs, made once as a data loader would
            grid = torch.cat([F.one_hot(grid[:, 0], V), F.one_hot(grid[:, 1], V)], -1).to(cohort.dtype)
        self.x_all, self.y_all = grid, cohort.labels
        self.items = []
        for i in range(len(cohort.members)):
            net, groups = self._module(cohort, cfg, i)
            net.to(cohort.device)
            opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                    weight_decay=cfg.weight_decay)
            idx = cohort.train_idx[i]
            self.items.append((net, opt, grid[idx], cohort.labels[idx]))
        self.cfg, self.step = cfg, 0

    @staticmethod
    def _module(cohort: Cohort, cfg: CohortConfig, i: int):
        """(module, AdamW parameter groups) of member i: weight decay on the matrices, none on biases."""
        P = {k: v[i] for k, v in cohort.P.items()}
        if cfg.model == "mlp":
            net = PlainMLP(cfg.p, cfg.d_embed, cfg.d_hidden).to(cohort.dtype)
            with torch.no_grad():
                for w, t in ((net.embed.weight, P["E"]), (net.l1.weight, P["W1"].T), (net.l1.bias, P["b1"]),
                             (net.l2.weight, P["W2"].T), (net.l2.bias, P["b2"])):
                    w.copy_(t)
        elif cfg.model == "deep_mlp":
            m = cohort.model
            net = PlainOneHot(cohort.task.vocab, cfg.hidden, cohort.task.n_classes, cfg.activation).to(cohort.dtype)
            linears = [x for x in net.net if isinstance(x, nn.Linear)]
            with torch.no_grad():
                for lin, w, b in zip(linears, m.W, m.b):
                    lin.weight.copy_(P[w].T)
                    lin.bias.copy_(P[b])
        else:
            net = PlainTransformer(cfg.p, cfg.d_model, cfg.n_heads, cfg.d_mlp).to(cohort.dtype)
            return net, net.parameters()
        matrices = [w for n, w in net.named_parameters() if not n.endswith("bias")]
        biases = [w for n, w in net.named_parameters() if n.endswith("bias")]
        return net, [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": biases, "weight_decay": 0.0}]

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
