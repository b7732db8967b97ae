"""Flushing subnormals (FTZ/DAZ on the cohort's CPU worker threads) changes no bit of a run's results.

In softmax collapse the loss's probabilities of the far-off classes underflow to subnormals, and so do the
logits' gradients made from them and the products that read them (docs/engine.md lists the operations).
Each case below starts from a state in that regime, checked to hold subnormal probabilities, and trains it
on with and without flushing: parameters, optimizer state, curves and the evaluation must be identical;
over a long collapse, the parameters, curves and evaluation (the optimizer's moments within a few units in
the last place)."""
import threading

import pytest
import torch

from interventions.engine.backends import Workers, flushes_subnormals
from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig
from interventions.vocab import Levers

SMALL = dict(p=11, d_embed=16, d_hidden=32, d_model=16, n_heads=2, d_mlp=32, hidden=[24, 16], lr=1e-2,
             eval_every=5, log_every=5)
# the held norm, a multiple of the init's, that reaches collapse by step 60 with subnormal probabilities
# left (much higher and every far-off probability is exactly 0)
FACTOR = {("mlp", "float32"): 10.0, ("mlp", "float64"): 20.0, ("transformer_noln", "float32"): 3.0,
          ("transformer_noln", "float64"): 4.0}
PATHS = {"mlp": ("native", "aten", "generic"), "deep_mlp": ("aten", "generic"), "transformer_noln": ("aten", "generic")}
CASES = [(m, k, prec, FACTOR["transformer_noln" if m.startswith("transformer") else "mlp", prec])
         for m, ks in PATHS.items() for k in ks for prec in ("float32", "float64")]


def collapsed_state(model: str, kernels: str, precision: str, factor: float) -> dict:
    cfg = CohortConfig(model=model, precision=precision, kernels=kernels, **SMALL)
    try:
        n0 = float(Cohort(cfg, [MemberConfig(key=0, seed=0)]).evaluate()["norm/total"][0])
        held = Levers.of(clamp="absolute", target=factor * n0, t_int=1)
        c = Cohort(cfg, [MemberConfig(key=f"m{i}", seed=i, lever=held) for i in range(2)])
    except ValueError as e:
        if kernels != "native":
            raise
        pytest.skip(str(e))   # native kernels not built on this machine
    c.run(until=60)
    tiny, n = torch.finfo(c.dtype).tiny, 0
    for b in c.backend.batches:
        z = c.model.forward({k: v[b.s:b.e] for k, v in c.P.items()}, b) * c.inv_tau[b.s:b.e].view(-1, 1, 1)
        prob = torch.softmax(z, -1)
        n += int(((prob != 0) & (prob < tiny)).sum())
    assert n > 0 and c.evaluate(full=True)["softmax/collapse"].min() > 0, "not in the collapse regime"
    return c.state_dict()


@pytest.mark.parametrize("model,kernels,precision,factor", CASES)
def test_flushing_subnormals_changes_no_bit_in_softmax_collapse(model, kernels, precision, factor, monkeypatch):
    state = collapsed_state(model, kernels, precision, factor)
    runs = {}
    for flush in ("0", "1"):
        monkeypatch.setenv("INTERVENTIONS_FLUSH_SUBNORMALS", flush)
        c = Cohort.from_state(state)
        assert c.kernels == kernels
        c.run(until=90)
        runs[flush] = c
    a, b = runs["0"], runs["1"]
    for n in a.P:
        assert torch.equal(a.P[n], b.P[n]), n
        for s in a.S:
            assert torch.equal(a.S[s][n], b.S[s][n]), (s, n)
    assert [a.curves(k) for k in a.active] == [b.curves(k) for k in b.active]
    ea, eb = a.evaluate(full=True), b.evaluate(full=True)
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_over_a_long_collapse_parameters_and_curves_stay_identical(monkeypatch):
    """1400 steps held deep in collapse (sc_frac 0.1-0.7). A subnormal term can decide a rounding tie in a
    sum, so a gradient entry may differ in its last bit and AdamW's moments with it: the parameters, curves
    and evaluation stay identical, the moments within a few units in the last place."""
    cfg = CohortConfig(precision="float32", kernels="aten", **{**SMALL, "log_every": 100, "eval_every": 100})
    n0 = float(Cohort(cfg, [MemberConfig(key=0, seed=0)]).evaluate()["norm/total"][0])
    held = Levers.of(clamp="absolute", target=30 * n0, t_int=1)
    c = Cohort(cfg, [MemberConfig(key=f"m{i}", seed=i, lever=held) for i in range(2)])
    c.run(until=100)
    state, runs = c.state_dict(), {}
    for flush in ("0", "1"):
        monkeypatch.setenv("INTERVENTIONS_FLUSH_SUBNORMALS", flush)
        runs[flush] = Cohort.from_state(state)
        runs[flush].run(until=1500)
    a, b = runs["0"], runs["1"]
    assert all(torch.equal(a.P[n], b.P[n]) for n in a.P)
    assert [a.curves(k) for k in a.active] == [b.curves(k) for k in b.active]
    assert min(v for k in a.active for _, v in a.curves(k)["softmax/collapse"]) > 0.1
    ea, eb = a.evaluate(full=True), b.evaluate(full=True)
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    tiny = torch.finfo(torch.float32).tiny
    for s in a.S:
        for n in a.P:
            assert torch.allclose(a.S[s][n], b.S[s][n], rtol=4e-7, atol=tiny), (s, n)


def test_flushing_is_off_for_an_optimizer_eps_so_small_that_a_subnormal_moment_could_move_a_weight():
    from interventions.registry import OPTIMIZERS

    def optimizer(name, **settings):
        return OPTIMIZERS.get(name)(OPTIMIZERS.get(name).Settings(**settings))
    assert flushes_subnormals(optimizer("adamw")) and flushes_subnormals(optimizer("sgd"))
    assert not flushes_subnormals(optimizer("adamw", eps=1e-20))
    assert not flushes_subnormals(optimizer("orthograd", eps=1e-25))   # ⊥Grad's source setting, on its base
    assert flushes_subnormals(optimizer("orthograd", base="sgd"))


@pytest.mark.parametrize("flush", [False, True])
def test_worker_threads_flush_subnormals_when_asked_and_the_caller_never(flush):
    half_tiny = torch.tensor(torch.finfo(torch.float32).tiny / 2)
    seen = {}
    workers = Workers()
    with workers.running(torch.device("cpu"), flush):
        workers.map(lambda item, ws: seen.update({threading.get_ident(): float(half_tiny * 1.0)}), [0, 1, 2])
    assert threading.get_ident() not in seen
    assert set(seen.values()) == ({0.0} if flush else {float(half_tiny)})
    assert float(half_tiny * 1.0) == float(half_tiny)   # the calling thread keeps its subnormals


def test_a_worker_threads_products_round_the_same_before_and_after_its_first_parallel_op():
    """A new thread's MKL used the process's thread count until torch first set the thread's own (at a
    softmax, say), so the same float64 product rounded one way as a thread's first member's and another
    after: a member's bits depended on which thread took it first."""
    g = torch.Generator().manual_seed(0)
    A, B = (torch.randn(1, n, m, generator=g, dtype=torch.float64) for n, m in ((300, 64), (64, 32)))
    S = torch.randn(1, 300, 32, generator=g, dtype=torch.float64)
    out = []

    def work(item, ws):
        out.append(torch.bmm(A, B))
        torch.softmax(S, -1)
    workers = Workers()
    with workers.running(torch.device("cpu"), False):
        workers.map(work, list(range(8)))
    assert all(torch.equal(o, out[0]) for o in out)
