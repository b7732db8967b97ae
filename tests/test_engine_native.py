"""The compiled CPU kernels (interventions/native): same mathematics as the ATen path, deterministic.

The kernels build on first use (about a minute, then cached). Outside CI a machine that cannot build them
skips these tests with the reason; under CI=true that is a failure (CI machines have gcc and ninja).
"""
import os

import pytest
import torch

from interventions.engine.backends import softmax_collapse
from interventions.engine.tensors import Workspace
from interventions.engine import native
from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig
from interventions.registry import LOSSES
from interventions.vocab import Levers

SMALL = dict(p=13, d_embed=16, d_hidden=24, lr=1e-2, log_every=25)  # d_hidden: 3 vectors of 8 (no 16-block)
GROKS = dict(p=23, train_fraction=0.7, d_embed=32, d_hidden=64, lr=1e-2, weight_decay=3.0, log_every=100)


@pytest.fixture(scope="module")
def kernels():
    try:
        return native.module()
    except native.NativeUnavailable as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"native kernels unavailable under CI: {e}")
        pytest.skip(f"native kernels unavailable: {e}")


def members(n=3, **kw):
    return [MemberConfig(key=f"m{i}", seed=i, **kw, lever=Levers.of(tau=(1.0, 1.7, 1.3)[i % 3])) for i in range(n)]


def test_auto_picks_native_where_it_applies_and_aten_elsewhere(kernels):
    assert Cohort(CohortConfig(**SMALL), members(1)).kernels == "native"
    assert Cohort(CohortConfig(**SMALL, kernels="aten"), members(1)).kernels == "aten"
    assert Cohort(CohortConfig(**SMALL, precision="float64"), members(1)).kernels == "native"
    assert Cohort(CohortConfig(**{**SMALL, "d_hidden": 20}), members(1)).kernels == "aten"
    tf = dict(p=7, d_model=8, n_heads=2, d_mlp=16, model="transformer")
    assert Cohort(CohortConfig(**tf), members(1)).kernels == "aten"
    with pytest.raises(ValueError, match="cohort.kernels: native kernels cannot run d_hidden 20"):
        Cohort(CohortConfig(**{**SMALL, "d_hidden": 20}, kernels="native"), members(1))
    with pytest.raises(ValueError, match="cohort.kernels: unknown kernels 'fast'"):
        CohortConfig(**SMALL, kernels="fast")


def test_environment_variable_forces_aten(kernels, monkeypatch):
    monkeypatch.setenv("INTERVENTIONS_KERNELS", "aten")
    assert Cohort(CohortConfig(**SMALL), members(1)).kernels == "aten"


# (precision, rtol, atol): how close the two paths' last bits are in each working precision
TOL = {"float32": (1e-5, 1e-6), "float64": (1e-12, 1e-13)}


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("p", [13, 16])
def test_step_matches_the_aten_path(kernels, loss, p, precision):
    """Loss, gradients (through AdamW's update) and evaluation metrics agree with the ATen path."""
    rtol, atol = TOL[precision]
    cfg = dict(SMALL, p=p, loss=loss, precision=precision)
    a = Cohort(CohortConfig(**cfg, kernels="aten"), members())
    a.run(until=40)  # trained weights, not the init
    n = Cohort.from_state({**a.state_dict(), "cfg": {**a.state_dict()["cfg"], "kernels": "native"}})
    assert n.kernels == "native"
    ev_a, ev_n = a.evaluate(full=True), n.evaluate(full=True)
    for k in ev_a:
        assert torch.allclose(ev_n[k], ev_a[k], rtol=rtol, atol=atol), k
    # gradients: the ATen path's hand-written backward vs the kernels (G is their scratch; compare updates)
    for i, b in enumerate(a.backend.batches):
        P = {k: v[i:i + 1] for k, v in a.P.items()}
        G = {k: torch.empty_like(v) for k, v in P.items()}
        value = a.model.loss_grads(P, G, b, a.inv_tau[i:i + 1], a.loss, Workspace())
        Pn = [a.P[k][i].clone() for k in a.names]
        Gn = [torch.empty_like(x) for x in Pn]
        zeros = [torch.zeros_like(x) for x in Pn]
        got = kernels.train_step(Pn, Gn, zeros, [z.clone() for z in zeros], b.a[0], b.b[0], b.y.view(-1),
                                 float(a.inv_tau[i]), loss == "ce", torch.tensor(1.0), [0.0, 0.9, 0.999, 1e-8, 0.0],
                                 torch.empty(0, dtype=Pn[0].dtype))
        assert got == pytest.approx(float(value), rel=rtol)
        for j, k in enumerate(a.names):
            scale = G[k].abs().max()
            assert (Gn[j] - G[k][0]).abs().max() <= 10 * rtol * scale + 1e-3 * atol, k


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_training_follows_the_aten_path_to_the_same_t_mem_and_t_grok(kernels, precision):
    """Same members trained both ways (README, "Kernels": the same t_mem and t_grok): every evaluation
    counts the same correct train and test pairs on both paths, so t_mem and t_grok are equal, not one
    evaluation apart. The last-bit differences never move a pair across its argmax here (no evaluation
    lies within a pair of a threshold either); at paper scale, 24000 steps deep in softmax collapse, they
    can (the paper-scale fork study: 2 of 12 seeds one evaluation apart)."""
    runs = {}
    for k in ("aten", "native"):
        c = Cohort(CohortConfig(**GROKS, kernels=k, precision=precision), members(2, budget=3000))
        c.run()
        runs[k] = {r["key"]: (r, c.evals(r["key"])) for r in c.results()}
    assert runs["native"].keys() == runs["aten"].keys() and len(runs["aten"]) == 2
    for key, (ra, evals) in runs["aten"].items():
        rn, evals_n = runs["native"][key]
        assert ra["t_mem"] is not None and ra["t_grok"] is not None, key
        assert (rn["t_mem"], rn["t_grok"]) == (ra["t_mem"], ra["t_grok"]), (key, ra, rn)
        assert evals_n == evals and len(evals) >= 10, key   # (step, train acc, test acc) at every evaluation


@pytest.mark.parametrize("kind", ["native", "aten"])
def test_a_member_does_not_depend_on_its_cohort_mates_or_the_thread_count(kernels, kind):
    """Bitwise: a member alone on one thread = the same member among others on two threads."""
    cfg = CohortConfig(**SMALL, kernels=kind)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = Cohort(cfg, [MemberConfig(key="m1", seed=1, lever=Levers.of(tau=1.7))])
        alone.run(until=60)
        torch.set_num_threads(2)
        crowd = Cohort(cfg, members(3))
        crowd.run(until=60)
    finally:
        torch.set_num_threads(threads)
    i = crowd.active.index("m1")
    for k in alone.P:
        assert torch.equal(alone.P[k][0], crowd.P[k][i]), k
    assert alone.records["m1"].curves == crowd.records["m1"].curves


def test_run_in_pieces_is_bit_identical_to_one_run(kernels):
    """New worker threads at every call to run() must not change a bit (see embed_grad in mlp_cpu.cpp).

    p = 37: 547 training pairs, more than one block of 512 (the dW2 product accumulates over blocks)."""
    cfg = CohortConfig(**{**SMALL, "p": 37})
    whole = Cohort(cfg, members())
    whole.run(until=30)
    pieces = Cohort(cfg, members())
    for t in range(1, 31):
        pieces.run(until=t)
    for k in whole.P:
        assert torch.equal(whole.P[k], pieces.P[k]), k
    assert whole.records == pieces.records


def test_divergence_is_detected_by_the_kernels(kernels):
    c = Cohort(CohortConfig(**SMALL), members(2))
    c.run(until=3)
    c.P["W2"][1].fill_(float("nan"))
    c.run(until=30)
    res = {r["key"]: r for r in c.results()}
    assert res["m1"]["diverged"] and res["m1"]["retired_at"] == 4
    assert not res["m0"]["diverged"] and "m0" in c.active


# ---- softmax collapse: where the last bits decide which gradients vanish --------------------------------
# Margins (nats, post-tau) of the correct class that put every row in collapse (p_y == 1 exactly) and
# d loss / d logits across the subnormal range: exp underflows past ~87-103 nats in float32, ~708-745 in
# float64.
COLLAPSE_MARGINS = {torch.float32: (80.0, 30.0), torch.float64: (690.0, 80.0)}


def collapse_logits(n, p, pad, margins, seed=0, dtype=torch.float32):
    """Logits (n, pad) whose correct class leads the others by `margins` nats (post-tau) and labels."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, pad, generator=g) * 3).to(dtype)
    y = torch.randint(0, p, (n,), generator=g)
    z[torch.arange(n), y] = z[:, :p].max(1).values + margins.to(dtype)
    z[:, p:] = 0.0
    return z, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [1.0, 1.15])
def test_loss_gradients_and_collapsed_rows_equal_the_aten_path_deep_in_collapse(kernels, tau, dtype):
    """Bit for bit: the same d loss / d logits, so the same rows with p_y == 1 (zero gradient on y) and the
    same entries that underflow to 0 or to a subnormal (the old kernels flushed every subnormal to 0)."""
    n, p, pad = 1392, 59, 64
    lo, span = COLLAPSE_MARGINS[dtype]
    margins = lo + span * torch.rand(n, generator=torch.Generator().manual_seed(1))
    z, y = collapse_logits(n, p, pad, margins * tau, dtype=dtype)
    bias = torch.zeros(pad, dtype=dtype)
    bias[p:] = float("-inf")
    inv = torch.tensor([1.0 / tau], dtype=dtype)
    value, dz = LOSSES.get("ce")().value_and_dlogits((z + bias).unsqueeze(0), y.view(1, -1, 1), inv)
    loss, dz_native, db2 = kernels.loss_dlogits(z.clone(), bias, y, float(inv), True, p, n)
    dz = dz[0]
    assert torch.equal(dz_native, dz)
    assert torch.allclose(db2, dz.sum(0), rtol=1e-6, atol=1e-300)
    subnormal = (dz != 0) & (dz.abs() < torch.finfo(dtype).tiny)
    assert int(subnormal.sum()) > 1000 and int((dz == 0).sum()) > 1000  # the regime is exercised
    assert bool((dz[torch.arange(n), y] == 0).all())  # every row collapsed: p_y == 1 exactly
    assert loss == pytest.approx(float(value) * n, abs=1e-30)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_collapse_counts_equal_the_aten_path_across_the_collapse_boundary(kernels, dtype):
    """sc (p_y == 1 exactly) and saturation of the evaluation, on rows from 5 nats to deep collapse."""
    n, p = 2000, 59
    margins = torch.linspace(5, sum(COLLAPSE_MARGINS[dtype]), n)
    s, y = collapse_logits(n, p, p, margins, seed=2, dtype=dtype)
    kinds = torch.ones(n, dtype=torch.uint8)
    got = kernels.eval_logits(s.contiguous(), y, kinds, True)
    collapsed, saturated = softmax_collapse(s, y.view(-1, 1))
    assert 0 < int(collapsed.sum()) < n
    assert (got[5], got[6]) == (int(collapsed.sum()), int(saturated.sum()))
    assert got[0] == int((s.argmax(-1) == y).sum())


def test_a_cohort_in_softmax_collapse_follows_the_aten_path(kernels):
    """Members clamped from step 400 at norms from 'groks' (36) to 'collapses without grokking' (44, 48):
    both paths give the same sc_frac curves (within one training pair at every log step; the old kernels,
    which flushed subnormals and summed the softmax their own way, were 4 pairs off) and the same t_grok."""
    cfg = dict(GROKS, log_every=100)
    ms = [MemberConfig(key=f"w{w}/{s}", seed=s, budget=2000, lever=Levers.of(clamp="absolute", target=float(w), t_int=400))
          for w in (36, 44, 48) for s in (0, 1)]
    runs = {}
    for k in ("aten", "native"):
        c = Cohort(CohortConfig(**cfg, kernels=k), ms)
        c.run()
        runs[k] = {r["key"]: (r["t_grok"], c.curves(r["key"])["softmax/collapse"]) for r in c.results()}
    assert max(v for _, sc in runs["aten"].values() for _, v in sc) > 0.3  # deep in collapse
    assert any(t is not None for t, _ in runs["aten"].values())
    for key, (t_a, sc_a) in runs["aten"].items():
        t_n, sc_n = runs["native"][key]
        assert t_n == t_a, key
        assert [s for s, _ in sc_n] == [s for s, _ in sc_a]
        n_train = round(GROKS["train_fraction"] * GROKS["p"] ** 2)
        assert max(abs(a - b) for (_, a), (_, b) in zip(sc_a, sc_n)) * n_train <= 1.0 + 1e-9, key


def test_a_failed_build_falls_back_to_aten_with_one_warning(monkeypatch):
    """README: without a compiler the engine warns once and trains on its ATen path; kernels="native"
    is then an error that says why."""
    import warnings

    def no_compiler():
        raise native.NativeUnavailable("could not be built: g++: command not found")
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_build", no_compiler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = Cohort(CohortConfig(**SMALL), members(1))
        second = Cohort(CohortConfig(**SMALL), members(1))
    assert first.kernels == second.kernels == "aten"
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "g++: command not found" in msgs[0] and "ATen" in msgs[0], msgs
    with pytest.raises(ValueError, match="native kernels unavailable: could not be built: g\\+\\+"):
        Cohort(CohortConfig(**SMALL, kernels="native"), members(1))
