"""The native backend: the MLP's training step and evaluation on a CPU (float32, float64) by the compiled kernels.

One call per member step and per member evaluation (interventions/native: mlp_cpu.cpp, built on first
use; the same mathematics as the ATen backend's, rounded differently in the last bits).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch

from .. import models
from .base import SUMS, Backend, Work

if TYPE_CHECKING:
    from ..cohort import Cohort


class Native(Backend):
    """One member per group (a CPU's batches); the kernels keep one set of gradients per worker thread."""

    kernels = "native"

    def __init__(self, cfg, module):
        super().__init__(cfg)
        self.module = module  # the compiled extension (interventions.native.module())

    def rebuild(self, c: Cohort) -> None:
        super().rebuild(c)
        # per pair: 0 undefined, 1 training, 2 test
        self.split = (c.train_mask.to(torch.uint8) + 2 * c.test_mask.to(torch.uint8)).contiguous()
        # per member: its rows of P, m1, m2, as the kernels take them
        self.rows = [tuple([d[k][i] for k in c.names] for d in (c.P, c.m1, c.m2)) for i in range(len(c.members))]

    def _stepper(self, c: Cohort, k: int, clamp: Callable[[slice, int], None], stopped: dict[int, int]) -> Work:
        cfg, t0, adam0 = self.cfg, c.step, c.adam_step
        steps = [torch.tensor(float(adam0 + s)) for s in range(1, k + 1)]
        hp = [cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay]
        inv_tau, ce = c.inv_tau.tolist(), cfg.loss == "ce"

        def work(b: models.Batch, ws: models.Workspace) -> None:
            i = b.s
            P, m1, m2 = self.rows[i]
            G = ws.get_list("native:grads", P)  # gradients live only inside the step: one set per thread
            args = (b.a[0], b.b[0], b.y.view(-1), inv_tau[i], ce)
            for s in range(1, k + 1):
                loss = self.module.train_step(P, G, m1, m2, *args, steps[s - 1], hp, ws.native("train", P[0].dtype))
                clamp(slice(i, i + 1), t0 + s)
                if not math.isfinite(loss):
                    stopped[i] = t0 + s
                    return
        return work

    def _evaluator(self, c: Cohort, full: bool, sums: dict[str, torch.Tensor]) -> Work:
        inv_tau, ce = c.inv_tau.tolist(), self.cfg.loss == "ce"

        def work(b: models.Batch, ws: models.Workspace) -> None:
            i = b.s
            got = self.module.evaluate(self.rows[i][0], c.labels, self.split[i], inv_tau[i], ce, full,
                                       ws.native("eval", self.rows[i][0][0].dtype))
            for k, v in zip(SUMS, got):
                sums[k][i] = v
        return work
