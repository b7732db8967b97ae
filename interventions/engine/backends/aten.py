"""The ATen fast path: a model's hand-written backward (models/mlp.py, models/deep_mlp.py; the transformer's
autograd of its own forward), the tau lever folded into it, the cohort's optimizer, op by op on any device.

It covers cohorts whose model has `loss_grads` (the MLPs' need a loss with a closed-form gradient in the
logits, `value_and_dlogits`) and whose levers act on the gradients (Grokfast's filters, between the
backward and the optimizer), after the step (the clamp) or at the init, besides tau (base.fast_path_levers).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from interventions.engine.backends.base import Backend, Work, fast_path_levers
from interventions.engine.tensors import Batch, Workspace
from interventions.registry import LOSSES, MODELS

if TYPE_CHECKING:
    from interventions.engine.cohort import Cohort


class ATen(Backend):
    kernels = "aten"

    @classmethod
    def covers(cls, cfg, levers: list) -> str | None:
        model, loss = MODELS.get(cfg.model), LOSSES.get(cfg.loss)
        if not hasattr(model, "loss_grads"):
            return f"model {cfg.model} (no hand-written backward)"
        if getattr(model, "needs_closed_form_loss", False) and not loss.closed_form:
            return f"loss {cfg.loss} (model {cfg.model}'s backward needs a closed-form gradient in the logits)"
        return fast_path_levers(levers, ("after_step", "init", "grads"))

    def _stepper(self, c: Cohort, k: int, after_step: Callable[[slice, int], None], stopped: dict[int, int]) -> Work:
        names, t0, adam0 = c.names, c.step, c.adam_step
        grad_levers = c.hooked("grads")

        def work(b: Batch, ws: Workspace) -> None:
            sl = slice(b.s, b.e)
            P = [c.P[n][sl] for n in names]
            G = [self.G[n][sl] for n in names]
            S = {k: [d[n][sl] for n in names] for k, d in c.S.items()}
            Gd = dict(zip(names, G))
            for s in range(1, k + 1):
                loss = c.model.loss_grads(dict(zip(names, P)), Gd, b, c.inv_tau[sl], c.loss, ws)
                for lv in grad_levers:
                    lv.grads(Gd, c.P, sl, t0 + s)
                c.optimizer.step(P, G, S, self.decay, adam0 + s)
                after_step(sl, t0 + s)
                if self._diverged(loss, b, t0 + s, t0 + k, stopped):
                    return
        return work

    def rebuild(self, c: Cohort) -> None:
        super().rebuild(c)
        self.G = {k: v.new_empty(v.shape) for k, v in c.P.items()}  # gradients, per member
