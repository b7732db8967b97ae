"""The field's interventions as plug-ins (../LEVERS.md), each against its formula written out plainly:
StableMax and the softmax-precision loss, ⊥Grad and SGD, the Grokfast filters (state carried through
snapshots, compaction and forks; other members untouched), the Omnigrok init scale, and Prieto et al.'s
deep MLP (its batched forward equal to the textbook one, trained on the generic path)."""
from collections import deque
from types import SimpleNamespace

import pytest
import torch

from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig
from interventions.registry import LEVERS, LOSSES, OPTIMIZERS
from interventions.vocab import Levers

F64 = torch.float64


# ---------------------------------------------------------------- StableMax
def textbook_stablemax(z: torch.Tensor, y: int) -> torch.Tensor:
    """-log StableMax(z)_y of one row of logits, element by element (Prieto et al.)."""
    s = [x + 1 if x >= 0 else 1 / (1 - x) for x in z]
    return -torch.log(s[y] / sum(s))


def test_stablemax_loss_and_gradient_equal_the_textbook_formula_at_both_signs_and_large_logits():
    z = torch.tensor([[[3.0, -2.0, 0.0, 1e6, -1e6], [-0.5, -30.0, 7.0, 2.0, -1e4]],
                      [[1e8, -1.0, -1.0, 0.25, 4.0], [0.0, 0.0, 0.0, 0.0, 0.0]]], dtype=F64)
    y = torch.tensor([[[1], [2]], [[0], [4]]])
    loss = LOSSES.get("stablemax")()
    got_z = z.clone().requires_grad_(True)
    per = loss.pair_losses(got_z, y)
    loss.value(got_z, y).sum().backward()
    for c in range(2):
        for n in range(2):
            row = z[c, n].clone().requires_grad_(True)
            want = textbook_stablemax(row, int(y[c, n, 0]))
            want.backward()
            assert per[c, n].item() == pytest.approx(want.item(), rel=1e-12)
            # value is the mean over the member's pairs: d value / d z = d pair loss / d z / N
            assert torch.allclose(got_z.grad[c, n] * 2, row.grad, rtol=1e-12, atol=0)
    assert torch.isfinite(got_z.grad).all()


@pytest.mark.parametrize("bits,dtype", [(64, F64), (64, torch.float32), (32, torch.float32)])
def test_stablemax_closed_form_gradient_equals_autograd_and_ignores_padded_classes(bits, dtype):
    """The fast paths' value_and_dlogits: d loss / d z of z / tau (two members, tau 1 and 1.7), with two
    padded classes at -inf that take no probability and get no gradient."""
    loss = LOSSES.get("stablemax")(LOSSES.get("stablemax").Settings(bits=bits))
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(2, 6, 9, generator=g) * 6).to(dtype)
    y = torch.randint(0, 7, (2, 6, 1), generator=g)
    inv = torch.tensor([1.0, 1 / 1.7], dtype=dtype)
    padded = torch.cat([z[..., :7], torch.full((2, 6, 2), float("-inf"), dtype=dtype)], -1)
    value, dz = loss.value_and_dlogits(padded.clone(), y, inv)
    real = z[..., :7].clone().requires_grad_(True)
    want = loss.value(real * inv.view(-1, 1, 1), y)
    want.sum().backward()
    assert dz.dtype == dtype and torch.equal(dz[..., 7:], torch.zeros(2, 6, 2, dtype=dtype))
    tol = 1e-12 if dtype == F64 else 1e-6
    assert torch.allclose(value, want.detach(), rtol=tol, atol=0)
    assert torch.allclose(dz[..., :7], real.grad, rtol=tol, atol=tol * 1e-3)


def test_stablemax_probabilities_sum_to_one_and_keep_their_precision():
    z = torch.randn(3, 4, 6, dtype=torch.float32) * 20
    for bits, dtype in ((64, F64), (32, torch.float32)):
        loss = LOSSES.get("stablemax")(LOSSES.get("stablemax").Settings(bits=bits))
        p = loss.probs(z)
        assert p.dtype == dtype and torch.allclose(p.sum(-1), torch.ones((), dtype=dtype), atol=1e-6)
        assert loss.pair_losses(z, torch.zeros(3, 4, 1, dtype=torch.long)).dtype == torch.float32
    # s = (1e8 + 1, 1/2): p_y = 1 - 5e-9, which float32 rounds to exactly 1 (collapse) and float64 does not
    z = torch.tensor([[[1e8, -1.0]]], dtype=F64)
    y = torch.zeros(1, 1, 1, dtype=torch.long)
    p32 = LOSSES.get("stablemax")(LOSSES.get("stablemax").Settings(bits=32)).probs(z).gather(-1, y)
    p64 = LOSSES.get("stablemax")().probs(z).gather(-1, y)
    assert p32.item() == 1.0 and p64.item() < 1.0
    want = textbook_stablemax(z[0, 0], 0).item()
    assert LOSSES.get("stablemax")().pair_losses(z, y).item() == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------- softmax precision
@pytest.mark.parametrize("bits,dtype", [(16, torch.float16), (32, torch.float32), (64, F64)])
def test_softmax_precision_loss_is_cross_entropy_computed_in_that_dtype(bits, dtype):
    torch.manual_seed(0)
    z = torch.randn(2, 5, 7, dtype=F64) * 3
    y = torch.randint(0, 7, (2, 5, 1))
    loss = LOSSES.get("softmax_precision")(LOSSES.get("softmax_precision").Settings(bits=bits))
    got = loss.pair_losses(z, y)
    v = z.to(dtype)
    m = v.max(-1, keepdim=True).values   # the textbook, stable: log sum exp(v - max) + max - v_y, in dtype
    direct = (torch.log(torch.exp(v - m).sum(-1)) + m.squeeze(-1) - v.gather(-1, y).squeeze(-1)).double()
    exact = torch.logsumexp(z, -1) - z.gather(-1, y).squeeze(-1)
    eps = torch.finfo(dtype).eps
    assert got.dtype == F64
    assert torch.allclose(got, direct, rtol=8 * eps, atol=8 * eps)
    err = (got - exact).abs().max().item()
    assert err < 16 * eps and (bits == 64 or err > 1e-3 * eps)   # rounded in that dtype, not in float64
    zz = z.clone().requires_grad_(True)
    loss.value(zz, y).sum().backward()
    assert zz.grad.dtype == F64 and torch.isfinite(zz.grad).all()
    assert loss.probs(z).dtype == dtype


def test_softmax_collapse_comes_at_a_smaller_logit_gap_in_float16_than_in_float32():
    def collapse_gap(bits):
        loss = LOSSES.get("softmax_precision")(LOSSES.get("softmax_precision").Settings(bits=bits))
        for k in range(1, 400):
            z = torch.tensor([[[k / 4, 0.0, 0.0, 0.0, 0.0]]], dtype=torch.float32)
            if loss.probs(z)[0, 0, 0].item() == 1.0:
                return k / 4
    g16, g32, g64 = collapse_gap(16), collapse_gap(32), collapse_gap(64)
    assert g16 < g32 < g64 and 6 < g16 < 11 and 14 < g32 < 20


# ---------------------------------------------------------------- optimizers
def opt(name, **settings):
    entry = OPTIMIZERS.get(name)
    return entry(entry.Settings(**settings))


def test_orthograd_makes_each_members_gradient_orthogonal_to_its_weights_at_the_same_norm():
    torch.manual_seed(1)
    params = [torch.randn(3, 4, 5, dtype=F64), torch.randn(3, 6, dtype=F64)]
    grads = [torch.randn_like(w) + 0.7 * w for w in params]   # a component along w to remove
    before = [g.clone() for g in grads]
    opt("orthograd").transform(params, grads, 1)
    for w, g, g0 in zip(params, grads, before):
        for m in range(3):
            wf, gf, g0f = w[m].flatten(), g[m].flatten(), g0[m].flatten()
            assert abs(wf @ gf) / (wf.norm() * gf.norm()) < 1e-6
            assert gf.norm().item() == pytest.approx(g0f.norm().item(), rel=1e-12)
    zero = [torch.zeros(1, 4, dtype=F64)]   # a zero bias: nothing to project out
    g = [torch.randn(1, 4, dtype=F64)]
    g0 = g[0].clone()
    opt("orthograd").transform(zero, g, 1)
    assert torch.allclose(g[0], g0, rtol=1e-14)


@pytest.mark.parametrize("base,settings", [("sgd", {"lr": 0.1, "momentum": 0.5}),
                                           ("adamw", {"lr": 0.01, "beta2": 0.99, "eps": 1e-25, "weight_decay": 0.0})])
def test_orthograd_steps_its_base_optimizer_on_the_projected_gradient(base, settings):
    torch.manual_seed(2)
    params = [torch.randn(2, 3, 4, dtype=F64), torch.randn(2, 4, dtype=F64)]
    mine, theirs = [w.clone() for w in params], [w.clone() for w in params]
    wrapped, plain = opt("orthograd", base=base, **settings), opt(base, **settings)
    assert wrapped.state_names == plain.state_names
    S1 = {b: [torch.zeros_like(w) for w in params] for b in plain.state_names}
    S2 = {b: [torch.zeros_like(w) for w in params] for b in plain.state_names}
    for step in range(1, 4):
        grads = [torch.randn_like(w) for w in params]
        projected = [g.clone() for g in grads]
        wrapped.transform(theirs, projected, step)
        wrapped.step(mine, grads, S1, [True, False], step)
        plain.step(theirs, projected, S2, [True, False], step)
        for a, b in zip(mine, theirs):
            assert torch.equal(a, b)


def test_sgd_equals_torch_sgd_with_momentum_and_weight_decay_on_the_matrices():
    torch.manual_seed(3)
    W, b = torch.randn(4, 5, dtype=F64), torch.randn(5, dtype=F64)
    tW, tb = torch.nn.Parameter(W.clone()), torch.nn.Parameter(b.clone())
    ref = torch.optim.SGD([{"params": [tW], "weight_decay": 0.1}, {"params": [tb], "weight_decay": 0.0}],
                          lr=0.05, momentum=0.9)
    sgd = opt("sgd", lr=0.05, momentum=0.9, weight_decay=0.1)
    assert sgd.state_names == ("momentum_buffer",) and opt("sgd").state_names == ()
    params = [W.clone()[None], b.clone()[None]]   # one member
    S = {"momentum_buffer": [torch.zeros_like(p) for p in params]}
    for step in range(1, 6):
        gW, gb = torch.randn_like(W), torch.randn_like(b)
        tW.grad, tb.grad = gW.clone(), gb.clone()
        ref.step()
        sgd.step(params, [gW[None].clone(), gb[None].clone()], S, [True, False], step)
        assert torch.equal(params[0][0], tW.detach())
        assert torch.equal(params[1][0], tb.detach())


# ---------------------------------------------------------------- Grokfast
def fake_cohort(M: int) -> SimpleNamespace:
    P = {"W": torch.zeros(M, 3, 2, dtype=F64), "b": torch.zeros(M, 2, dtype=F64)}
    return SimpleNamespace(P=P, names=list(P), dtype=F64, device=torch.device("cpu"))


def direct_ema(s, gs):
    h, out = None, []
    for g in gs:
        h = g.clone() if h is None else s.alpha * h + (1 - s.alpha) * g
        out.append(g + s.lamb * h)
    return out


def direct_ma(s, gs):
    last, out = deque(maxlen=s.window), []
    for g in gs:
        last.append(g.clone())
        out.append(g + s.lamb * sum(last) / s.window if len(last) == s.window else g)
    return out


FILTERS = {"grokfast_ema": ([{"alpha": 0.9, "lamb": 2.0}, None, {"alpha": 0.5, "lamb": 1.0}], direct_ema),
           "grokfast_ma": ([{"window": 3, "lamb": 5.0}, None, {"window": 5, "lamb": 0.5}], direct_ma)}


def step_all(lever, seq, rows=None):
    """Apply the lever to each step's gradients (copies), member by member (as CPU groups) or in one group."""
    out = []
    for t, G in enumerate(seq):
        G = {n: g.clone() for n, g in G.items()}
        M = next(iter(G.values())).shape[0]
        for sl in ([slice(0, M)] if rows == "one group" else [slice(i, i + 1) for i in range(M)]):
            lever.grads({n: g[sl] for n, g in G.items()}, None, sl, t + 1)
        out.append(G)
    return out


@pytest.mark.parametrize("name", FILTERS)
def test_grokfast_filter_equals_its_formula_and_leaves_an_inactive_member_bit_for_bit(name):
    given, direct = FILTERS[name]
    settings = [Levers.of(**({name: g} if g else {})).settings(name) for g in given]
    assert [s.active() for s in settings] == [True, False, True]
    torch.manual_seed(4)
    seq = [{n: torch.randn_like(p) for n, p in fake_cohort(3).P.items()} for _ in range(9)]
    for rows in (None, "one group"):
        out = step_all(LEVERS.get(name)(settings, fake_cohort(3)), seq, rows)
        for n in ("W", "b"):
            for m in (0, 2):
                want = direct(settings[m], [G[n][m] for G in seq])
                for t in range(len(seq)):
                    assert torch.allclose(out[t][n][m], want[t], rtol=1e-12, atol=1e-12), (n, m, t)
            assert all(torch.equal(out[t][n][1], seq[t][n][1]) for t in range(len(seq)))


@pytest.mark.parametrize("name", FILTERS)
def test_grokfast_state_round_trips_through_snapshots_compaction_and_forks(name):
    given, _ = FILTERS[name]
    settings = [Levers.of(**({name: g} if g else {})).settings(name) for g in given]
    torch.manual_seed(5)
    seq = [{n: torch.randn_like(p) for n, p in fake_cohort(3).P.items()} for _ in range(8)]
    head, tail = seq[:4], seq[4:]
    a = LEVERS.get(name)(settings, fake_cohort(3))
    step_all(a, head)
    snap = {k: v.clone() for k, v in a.state_dict().items()}
    carried = a.member_state(0)
    assert a.member_state(1) == {}   # an inactive member carries nothing
    resumed = LEVERS.get(name)(settings, fake_cohort(3))
    resumed.load_state_dict(snap)
    forked = LEVERS.get(name)([settings[0]], fake_cohort(1), state=[carried])
    fresh = LEVERS.get(name)([settings[0]], fake_cohort(1))
    compacted = LEVERS.get(name)(settings, fake_cohort(3))
    compacted.load_state_dict({k: v.clone() for k, v in snap.items()})
    compacted.select(torch.tensor([1, 2]))
    want = step_all(a, tail)
    for t, got in enumerate(step_all(resumed, tail)):
        assert all(torch.equal(got[n], want[t][n]) for n in got)
    member0 = [{n: g[0:1] for n, g in G.items()} for G in tail]
    for t, f in enumerate(step_all(forked, member0)):
        assert all(torch.equal(f[n][0], want[t][n][0]) for n in f)
    for t, c in enumerate(step_all(compacted, [{n: g[1:3] for n, g in G.items()} for G in tail])):
        assert all(torch.equal(c[n][1], want[t][n][2]) for n in c)
    anew = step_all(fresh, member0)   # without the carried state the member filters otherwise
    assert any(not torch.equal(anew[t][n][0], want[t][n][0]) for t in range(len(tail)) for n in anew[t])


def test_grokfast_is_off_for_an_arm_that_does_not_name_it_and_on_where_settings_are_given():
    for name in FILTERS:
        lever = LEVERS.get(name)
        assert not Levers().settings(name).active()   # an arm without the lever: its defaults, off
        named = Levers.of(**{name: {"lamb": 2.0}})
        assert named.settings(name).active() and Levers.from_dict(named.to_dict()) == named
        assert not Levers.of(**{name: {"lamb": 0.0}}).settings(name).active()
        assert lever.check(lever.Settings(), None) is not None and lever.check(named[name], None) is None
        assert "lamb 2.0" in lever.describe(named[name], None, None)


def test_grokfast_in_a_cohort_leaves_the_other_members_as_a_cohort_without_it_trains_them():
    """To rounding only: MKL's GEMMs may round a member's row differently in the last bit by where its
    memory lies (without MKL_CBWR=COMPATIBLE), whatever the lever does; its bit-for-bit test is above."""
    cfg = CohortConfig(p=7, d_embed=8, d_hidden=16, precision="float64", kernels="generic")
    ema = MemberConfig(key="ema", seed=1, lever=Levers.of(grokfast_ema={"alpha": 0.9}))
    c = Cohort(cfg, [ema, MemberConfig(key="free", seed=1)])
    alone = Cohort(cfg, [MemberConfig(key="free", seed=1)])
    c.run(until=6)
    alone.run(until=6)
    assert all(torch.allclose(c.P[n][1], alone.P[n][0], rtol=0, atol=1e-13) for n in c.names)
    assert not torch.equal(c.P["W1"][0], c.P["W1"][1])
    fork = Cohort(cfg, [ema], init=[c.member_state("ema")])   # the filter's h travels with the member
    assert all(torch.equal(fork.levers["grokfast_ema"].mem[n][0], c.levers["grokfast_ema"].mem[n][0])
               for n in c.names)


# ---------------------------------------------------------------- init scale
def test_init_scale_multiplies_a_fresh_members_weight_matrices_not_its_biases():
    cfg = CohortConfig(p=7, d_embed=8, d_hidden=16, kernels="generic")
    c = Cohort(cfg, [MemberConfig(key="x3", seed=2, lever=Levers.of(init_scale={"alpha": 3.0})),
                     MemberConfig(key="plain", seed=2)])
    plain = Cohort(cfg, [MemberConfig(key="plain", seed=2)])
    for n in c.names:
        scale = 3.0 if n in c.matrices else 1.0
        assert torch.equal(c.P[n][0], plain.P[n][0] * scale), n
        assert torch.equal(c.P[n][1], plain.P[n][0]), n
    assert not Levers().settings("init_scale").active()


# ---------------------------------------------------------------- deep MLP
def deep(activation="relu", levers=(Levers(), Levers()), **kw) -> Cohort:
    cfg = CohortConfig(**{"p": 7, "model": "deep_mlp", "hidden": [8, 6], "activation": activation,
                          "precision": "float64", "kernels": "generic", **kw})
    return Cohort(cfg, [MemberConfig(key=f"m{i}", seed=i, lever=lv) for i, lv in enumerate(levers)])


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_deep_mlp_forward_and_grid_equal_the_textbook_one_hot_forward(activation):
    c = deep(activation)
    V = c.task.vocab
    assert [s.name for s in c.model.specs] == ["E", "W1", "W2", "b0", "b1", "b2"]
    assert c.P["E"].shape == (2, 2 * V, 8) and c.model.alloc_layers == ("E", "W2")
    grid_a, grid_b = torch.arange(V).repeat_interleave(V), torch.arange(V).repeat(V)
    for b in c.backend.batches:
        i = b.s
        P = {k: v[i:i + 1] for k, v in c.P.items()}
        P1 = {k: v[i] for k, v in c.P.items()}
        idx = c.train_idx[i]
        naive = c.model.naive_logits(P1, idx // V, idx % V)
        assert torch.allclose(c.model.forward(P, b)[0], naive, rtol=0, atol=1e-12)
        grid = torch.cat([c.model.grid_logits(P, slice(r, min(V, r + 3)))[0] for r in range(0, V, 3)])
        assert torch.allclose(grid, c.model.naive_logits(P1, grid_a, grid_b), rtol=0, atol=1e-12)


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_deep_mlp_hand_written_backward_equals_autograd_of_the_textbook_forward(activation, loss):
    """The ATen path's loss_grads: value and every gradient, members with tau 1 and 1.7."""
    c = deep(activation, levers=(Levers.of(tau=1.0), Levers.of(tau=1.7)), loss=loss, kernels="aten")
    assert c.kernels == "aten"
    V = c.task.vocab
    G = {k: torch.zeros_like(v) for k, v in c.P.items()}
    for b in c.backend.batches:
        i = b.s
        value = c.model.loss_grads({k: v[i:i + 1] for k, v in c.P.items()}, {k: v[i:i + 1] for k, v in G.items()},
                                   b, c.inv_tau[i:i + 1], c.loss, c.backend.workers.ws)
        P1 = {k: v[i].clone().requires_grad_(True) for k, v in c.P.items()}
        idx = c.train_idx[i]
        z = c.model.naive_logits(P1, idx // V, idx % V) * c.inv_tau[i]
        want = c.loss.value(z[None], c.labels[idx][None, :, None])
        want.backward()
        assert value.item() == pytest.approx(want.item(), rel=1e-12)
        for k, t in P1.items():
            assert torch.allclose(G[k][i], t.grad, rtol=1e-9, atol=1e-12), k


def test_deep_mlp_trains_on_the_generic_path_with_the_field_plugins():
    """deep MLP + StableMax + ⊥Grad over SGD + the MA filter + the init scale: the loss goes down."""
    filtered = Levers.of(grokfast_ma={"window": 2, "lamb": 1.0}, init_scale={"alpha": 0.5})
    c = deep(levers=(Levers(), filtered), loss="stablemax", optimizer="orthograd", base="sgd", lr=0.5, momentum=0.5)
    assert c.kernels == "generic" and set(c.levers) == {"grokfast_ma", "init_scale"}

    def losses():
        return torch.cat([c.loss.value(c.model.forward({k: v[b.s:b.e] for k, v in c.P.items()}, b), b.y)
                          for b in c.backend.batches])
    before = losses()
    c.run(until=40)
    assert (losses() < before).all()
    assert "softmax/collapse" in c.curves("m0") and "repr/fourier_top5" in c.curves("m1")
