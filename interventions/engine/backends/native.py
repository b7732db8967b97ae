"""The native backend: the MLP's training step and evaluation on a CPU (float32, float64) by the compiled kernels.

One call per member step and per member evaluation (interventions/native: mlp_cpu.cpp, built on first
use; the same mathematics as the ATen backend's, rounded differently in the last bits).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch

from interventions.engine.backends.base import SUMS, Backend, Work, fast_path_levers
from interventions.engine.tensors import Batch, Workspace

if TYPE_CHECKING:
    from interventions.engine.cohort import Cohort


class Native(Backend):
    """One member per group (a CPU's batches); the kernels keep one set of gradients per worker thread."""

    kernels = "native"

    @classmethod
    def covers(cls, cfg, levers: list) -> str | None:
        """The kernels implement the bundled mlp on a square task (classes = tokens), ce or mse, adamw, the
        tau lever, on a CPU; any lever that acts only after the step runs between their steps."""
        if cfg.model != "mlp":
            return f"model {cfg.model} (native kernels: mlp only)"
        if not str(cfg.device).startswith("cpu"):
            return f"device {cfg.device} (native kernels: cpu only)"
        if cfg.d_hidden % 8:
            return f"d_hidden {cfg.d_hidden} (native kernels: a multiple of 8)"
        if cfg.loss not in ("ce", "mse") or cfg.optimizer != "adamw":
            return f"loss {cfg.loss}, optimizer {cfg.optimizer} (native kernels: ce or mse, adamw)"
        from interventions.engine.task import make_task
        task = make_task(cfg.p, cfg.op)
        if task.vocab != task.n_classes:
            return f"task {cfg.op} ({task.vocab} tokens, {task.n_classes} classes; native kernels: as many of each)"
        return fast_path_levers(levers)

    def __init__(self, cfg, module):
        super().__init__(cfg)
        self.module = module  # the compiled extension (interventions.native.module())

    def rebuild(self, c: Cohort) -> None:
        super().rebuild(c)
        # per pair: 0 undefined, 1 training, 2 test
        self.split = (c.train_mask.to(torch.uint8) + 2 * c.test_mask.to(torch.uint8)).contiguous()
        # per member: its rows of P and of AdamW's moments, as the kernels take them
        self.rows = [tuple([d[k][i] for k in c.names] for d in (c.P, c.m1, c.m2)) for i in range(len(c.members))]

    def _stepper(self, c: Cohort, k: int, after_step: Callable[[slice, int], None], stopped: dict[int, int]) -> Work:
        cfg, t0, adam0 = self.cfg, c.step, c.adam_step
        steps = [torch.tensor(float(adam0 + s)) for s in range(1, k + 1)]
        hp = [cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay]
        inv_tau, ce = c.inv_tau.tolist(), cfg.loss == "ce"

        def work(b: Batch, ws: Workspace) -> None:
            i = b.s
            P, m1, m2 = self.rows[i]
            G = ws.get_list("native:grads", P)  # gradients live only inside the step: one set per thread
            args = (b.a[0], b.b[0], b.y.view(-1), inv_tau[i], ce)
            for s in range(1, k + 1):
                loss = self.module.train_step(P, G, m1, m2, *args, steps[s - 1], hp, ws.native("train", P[0].dtype))
                after_step(slice(i, i + 1), t0 + s)
                if not math.isfinite(loss):
                    stopped[i] = t0 + s
                    return
        return work

    def _evaluator(self, c: Cohort, full: bool, sums: dict[str, torch.Tensor]) -> Work:
        inv_tau, ce = c.inv_tau.tolist(), self.cfg.loss == "ce"

        def work(b: Batch, ws: Workspace) -> None:
            i = b.s
            got = self.module.evaluate(self.rows[i][0], c.labels, self.split[i], inv_tau[i], ce, full,
                                       ws.native("eval", self.rows[i][0][0].dtype))
            for k, v in zip(SUMS, got):
                sums[k][i] = v
        return work
