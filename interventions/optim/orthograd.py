"""⊥Grad (Prieto et al., "Grokking at the Edge of Numerical Stability", ICLR 2025; docs/extending.md): before the
base optimizer's step, each parameter tensor's gradient loses its component along the weights (the
direction that only scales the logits up, toward softmax collapse) and keeps its norm. Per parameter
tensor w with gradient g, flattened, per member:

    g_perp = g - (w.g / (w.w + 1e-30)) w
    g <- g_perp |g| / (|g_perp| + 1e-30)

The source runs it over AdamW with lr 0.01, beta2 0.99, eps 1e-25 and no weight decay; those are the
study file's to set (`optimizer: {kind: orthograd, lr: 0.01, beta2: 0.99, eps: 1e-25, weight_decay: 0}`),
not forced here. `base` picks the optimizer underneath (adamw by default; sgd works too), whose settings
ride along.
"""
from __future__ import annotations

from interventions.kinds import Wrapper
from interventions.registry import register_optimizer

EPS = 1e-30


@register_optimizer("orthograd")
class OrthoGrad(Wrapper):
    """Project each gradient orthogonally to its weights, at its own norm; then `base`'s step."""

    def transform(self, params, grads, step):
        for w, g in zip(params, grads):
            wf, gf = w.reshape(w.shape[0], -1), g.reshape(g.shape[0], -1)   # a row per member
            proj = (wf * gf).sum(1, keepdim=True) / ((wf * wf).sum(1, keepdim=True) + EPS)
            perp = gf - proj * wf
            scale = gf.norm(dim=1, keepdim=True) / (perp.norm(dim=1, keepdim=True) + EPS)
            g.copy_((perp * scale).view_as(g))
