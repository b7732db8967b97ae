"""The ATen backend: training step and evaluation for any model, precision and device, op by op.

The model's hand-written backward (models.py, transformer.py), AdamW (optim.py), and the evaluation over
all p^2 pairs in bounded blocks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from .. import levers, models
from ..optim import AdamW
from .base import Backend, Work

if TYPE_CHECKING:
    from ..cohort import Cohort

# bounds the evaluation's (members x pairs x hidden) block, so a 150-member p=113 cohort evaluates in
# little memory
EVAL_BLOCK = 1 << 21


class ATen(Backend):
    kernels = "aten"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.opt = AdamW(cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay)

    def rebuild(self, c: Cohort) -> None:
        super().rebuild(c)
        self.G = {k: torch.empty_like(v) for k, v in c.P.items()}  # gradients, per member
        self.decay = [s.matrix for s in c.model.specs]

    def _stepper(self, c: Cohort, k: int, clamp: Callable[[slice, int], None], stopped: dict[int, int]) -> Work:
        names, t0, adam0 = c.names, c.step, c.adam_step

        def work(b: models.Batch, ws: models.Workspace) -> None:
            sl = slice(b.s, b.e)
            P = [c.P[n][sl] for n in names]
            G = [self.G[n][sl] for n in names]
            m1, m2 = [c.m1[n][sl] for n in names], [c.m2[n][sl] for n in names]
            for s in range(1, k + 1):
                loss = c.model.loss_grads(dict(zip(names, P)), dict(zip(names, G)), b, c.inv_tau[sl],
                                          self.cfg.loss, ws)
                self.opt.step(P, G, m1, m2, self.decay, adam0 + s)
                clamp(sl, t0 + s)
                bad = (~torch.isfinite(loss)).nonzero().flatten().tolist()
                if bad and b.e - b.s == 1:
                    stopped[b.s] = t0 + s
                    return
                for j in bad:  # a group steps on together; its diverged rows retire at the chunk's end
                    stopped.setdefault(b.s + j, t0 + k)
        return work

    def _evaluator(self, c: Cohort, full: bool, sums: dict[str, torch.Tensor]) -> Work:
        p, loss = self.cfg.p, self.cfg.loss

        def work(b: models.Batch, ws: models.Workspace) -> None:
            sl = slice(b.s, b.e)
            n = b.e - b.s
            Pc = {k: v[sl] for k, v in c.P.items()}
            T = c.model.tables(Pc)
            r = max(1, min(p, EVAL_BLOCK // (n * p * c.model.work_per_member)))
            inv = c.inv_tau[sl].view(-1, 1, 1)
            for a0 in range(0, p, r):
                rows = slice(a0, min(p, a0 + r))
                s = c.model.grid_logits(Pc, rows, T, ws).mul_(inv)  # (n, r * p, p) post-tau logits
                pairs = slice(rows.start * p, rows.stop * p)
                y = c.labels[pairs].view(1, -1, 1).expand(n, -1, 1)
                tm, vm = c.train_mask[sl, pairs], c.test_mask[sl, pairs]
                hit = s.argmax(-1) == y.squeeze(-1)
                sums["train_hit"][sl] += (hit & tm).sum(1)
                sums["test_hit"][sl] += (hit & vm).sum(1)
                sums["lsum"][sl] += torch.where(c.valid[pairs], torch.linalg.vector_norm(s, dim=-1), 0.0).sum(1)
                if not full:
                    continue
                per = levers.pair_losses(s, y, loss)
                sums["train_loss"][sl] += torch.where(tm, per, 0.0).sum(1)
                sums["test_loss"][sl] += torch.where(vm, per, 0.0).sum(1)
                collapsed, saturated = levers.softmax_collapse(s, y)
                sums["sc"][sl] += (collapsed & tm).sum(1)
                sums["sat"][sl] += (saturated & tm).sum(1)
        return work
