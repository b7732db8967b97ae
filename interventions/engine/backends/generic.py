"""The generic path: any registered model, loss, optimizer and levers, on any device, by autograd through
the model's forward. One training step of a member group, top to bottom:

    z = model.forward(P, batch)                    logits of its training pairs
    z = lever.logits(z, rows)                      each lever with a logits hook (tau, ...)
    loss = loss.value(z, y); G = d loss / d P      autograd
    lever.grads(G, P, rows, step)                  each lever with a grads hook (gradient filters, ...)
    optimizer.step(P, G, S, decay, step)           in place, with its buffers S
    lever.after_step(P, rows, step)                each lever with an after_step hook (the clamp, ...)

The compiled fast paths (aten.py, native.py) do the same for what they cover, rounded differently in the
last bits; tests hold them against this path.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from interventions.engine.backends.base import Backend, Work
from interventions.engine.tensors import Batch, Workspace

if TYPE_CHECKING:
    from interventions.engine.cohort import Cohort


class Generic(Backend):
    kernels = "generic"

    def _stepper(self, c: Cohort, k: int, after_step: Callable[[slice, int], None], stopped: dict[int, int]) -> Work:
        names, t0, adam0 = c.names, c.step, c.adam_step
        logit_levers, grad_levers = c.hooked("logits"), c.hooked("grads")

        def work(b: Batch, ws: Workspace) -> None:
            sl = slice(b.s, b.e)
            P = [c.P[n][sl] for n in names]
            S = {key: [d[n][sl] for n in names] for key, d in c.S.items()}
            for s in range(1, k + 1):
                with torch.enable_grad():
                    # copies: a detached view would share its version counter with the whole (M, ...)
                    # tensor, which other worker threads update in place
                    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in zip(names, P)}
                    z = c.model.forward(leaves, b)
                    for lv in logit_levers:
                        z = lv.logits(z, sl)
                    loss = c.loss.value(z, b.y)
                    grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
                G = dict(zip(names, grads))
                for lv in grad_levers:
                    lv.grads(G, c.P, sl, t0 + s)
                c.optimizer.step(P, [G[n] for n in names], S, self.decay, adam0 + s)
                after_step(sl, t0 + s)
                if self._diverged(loss.detach(), b, t0 + s, t0 + k, stopped):
                    return
        return work
