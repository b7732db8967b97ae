"""Engine models: the fast batched forward/backward against textbook code (tiny p, float64)."""
import math

import pytest
import torch
import torch.nn.functional as F

from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig
from interventions.registry import LOSSES
from interventions.vocab import Levers

TINY = dict(p=7, d_embed=8, d_hidden=16, d_model=8, n_heads=2, d_mlp=16, hidden=[12, 10], precision="float64")
MODELS = ["mlp", "transformer", "transformer_noln", "deep_mlp"]


def loss_values(z, y, inv_tau, kind):
    """The per-member loss of z / tau, as the generic path trains on it (registered loss `kind`)."""
    return LOSSES.get(kind)().value(z * inv_tau.view(-1, *([1] * (z.dim() - 1))), y)


def make(model="mlp", loss="ce", taus=(1.0, 1.7), **kw) -> Cohort:
    cfg = CohortConfig(**{**TINY, "model": model, "loss": loss, **kw})
    return Cohort(cfg, [MemberConfig(key=f"m/{i}", seed=i, lever=Levers.of(tau=t)) for i, t in enumerate(taus)])


def rows(c: Cohort, i: int) -> dict:
    return {k: v[i:i + 1] for k, v in c.P.items()}


def one(c: Cohort, i: int) -> dict:
    return {k: v[i] for k, v in c.P.items()}


def pairs(c: Cohort, i: int):
    idx = c.train_idx[i]
    return idx // c.cfg.p, idx % c.cfg.p, c.labels[idx]


@pytest.mark.parametrize("model", MODELS)
def test_fast_forward_equals_naive_forward(model):
    c = make(model)
    p = c.cfg.p
    for b in c.backend.batches:
        i = b.s
        a, bb, _ = pairs(c, i)
        naive = c.model.naive_logits(one(c, i), a, bb)
        assert torch.allclose(c.model.forward(rows(c, i), b)[0], naive, rtol=0, atol=1e-12)
        # the evaluation's all-pairs grid, in row blocks
        grid_a = torch.arange(p).repeat_interleave(p)
        grid_b = torch.arange(p).repeat(p)
        full = torch.cat([c.model.grid_logits(rows(c, i), slice(r, min(p, r + 3)))[0] for r in range(0, p, 3)])
        assert torch.allclose(full, c.model.naive_logits(one(c, i), grid_a, grid_b), rtol=0, atol=1e-12)


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("model", MODELS)
def test_hand_written_backward_matches_autograd_of_naive_forward(model, loss):
    c = make(model, loss)
    G = {k: torch.zeros_like(v) for k, v in c.P.items()}
    for b in c.backend.batches:
        i = b.s
        value = c.model.loss_grads(rows(c, i), {k: v[i:i + 1] for k, v in G.items()}, b, c.inv_tau[i:i + 1],
                                   c.loss, c.backend.workers.ws)
        P1 = {k: v.clone().requires_grad_(True) for k, v in one(c, i).items()}
        a, bb, y = pairs(c, i)
        ref = loss_values(c.model.naive_logits(P1, a, bb)[None], y[None, :, None], c.inv_tau[i:i + 1], loss)
        ref.backward()
        assert value.item() == pytest.approx(ref.item(), rel=1e-12)
        for k, t in P1.items():
            assert torch.allclose(G[k][i], t.grad, rtol=1e-9, atol=1e-12), k


def test_tau_divides_the_logits_before_the_loss():
    z = torch.randn(2, 5, 7, dtype=torch.float64)
    y = torch.randint(0, 7, (2, 5, 1))
    tau = torch.tensor([1.0, 1.7], dtype=torch.float64)
    got = loss_values(z, y, 1.0 / tau, "ce")
    want = torch.stack([F.cross_entropy(z[i] / tau[i], y[i, :, 0]) for i in range(2)])
    assert torch.allclose(got, want, rtol=1e-12)
    # same params, tau 1 vs 1.7: the measured logit_scale (post-tau) scales by 1 / tau, accuracy does not move
    c = Cohort(CohortConfig(**TINY), [MemberConfig(key="t1", seed=3, lever=Levers.of(tau=1.0)),
                                      MemberConfig(key="t17", seed=3, lever=Levers.of(tau=1.7))])
    ev = c.evaluate(full=True)
    assert ev["logit/scale"][1].item() == pytest.approx(ev["logit/scale"][0].item() / 1.7, rel=1e-12)
    assert ev["train/acc"][0] == ev["train/acc"][1]


def test_mse_loss_is_sum_over_classes_mean_over_examples():
    z = torch.randn(1, 6, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (1, 6, 1))
    tau = 1.3
    want = sum(sum((z[0, n, k].item() / tau - float(k == y[0, n, 0])) ** 2 for k in range(5)) for n in range(6)) / 6
    got = loss_values(z, y, torch.tensor([1 / tau], dtype=torch.float64), "mse")
    assert got.item() == pytest.approx(want, rel=1e-12)
    zz = z.clone().requires_grad_(True)
    loss_values(zz, y, torch.tensor([1 / tau], dtype=torch.float64), "mse").sum().backward()
    value, dz = LOSSES.get("mse")().value_and_dlogits(z.clone(), y, torch.tensor([1 / tau], dtype=torch.float64))
    assert value.item() == pytest.approx(want, rel=1e-12)
    assert torch.allclose(dz, zz.grad, rtol=1e-12)


def test_init_follows_the_paper():
    """N(0,1)/sqrt(fan_in), biases zero; the embedding's fan_in is its width, giving the released
    step-1 norms at p=59 (|E| 7.68 ~ sqrt(59), |W1| 16.0, |W2| 7.66)."""
    c = Cohort(CohortConfig(p=59), [MemberConfig(key=f"m/{s}", seed=s) for s in range(3)])
    norms = {k: c.P[k].flatten(1).norm(dim=1) for k in ("E", "W1", "W2")}
    assert torch.allclose(norms["E"], torch.full((3,), math.sqrt(59.0)), rtol=0.03)
    assert torch.allclose(norms["W1"], torch.full((3,), 16.0), rtol=0.03)
    assert torch.allclose(norms["W2"], torch.full((3,), math.sqrt(59.0)), rtol=0.03)
    assert not c.P["b1"].any() and not c.P["b2"].any()
    assert not torch.equal(c.P["E"][0], c.P["E"][1])  # seeded per member


def test_engine_step_matches_plain_pytorch_adamw():
    """One member trained by the engine = the same MLP as nn.Modules with torch.optim.AdamW."""
    cfg = CohortConfig(**{**TINY, "lr": 1e-2})
    c = Cohort(cfg, [MemberConfig(key="m", seed=5, lever=Levers.of(tau=1.3))])
    P0 = one(c, 0)
    E = torch.nn.Parameter(P0["E"].clone())
    l1, l2 = torch.nn.Linear(16, 16).double(), torch.nn.Linear(16, 7).double()
    with torch.no_grad():
        l1.weight.copy_(P0["W1"].T), l1.bias.copy_(P0["b1"]), l2.weight.copy_(P0["W2"].T), l2.bias.copy_(P0["b2"])
    opt = torch.optim.AdamW([{"params": [E, l1.weight, l2.weight], "weight_decay": 1.0},
                             {"params": [l1.bias, l2.bias], "weight_decay": 0.0}], lr=1e-2)
    a, b, y = pairs(c, 0)
    for _ in range(5):
        opt.zero_grad()
        logits = l2(F.gelu(l1(torch.cat([E[a], E[b]], -1))))
        F.cross_entropy(logits / 1.3, y).backward()
        opt.step()
    c.run(until=5)
    assert torch.allclose(c.P["E"][0], E.detach(), rtol=0, atol=1e-12)
    assert torch.allclose(c.P["W1"][0], l1.weight.detach().T, rtol=0, atol=1e-12)
    assert torch.allclose(c.P["W2"][0], l2.weight.detach().T, rtol=0, atol=1e-12)
    assert torch.allclose(c.P["b2"][0], l2.bias.detach(), rtol=0, atol=1e-12)
