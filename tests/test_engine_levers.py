"""Engine levers: norm clamp, N0, per-layer allocation clamp, transformer clamp, float64."""
import math

import numpy as np
import pytest
import torch

from interventions.levers.clamp import alloc_targets
from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig
from interventions.vocab import Levers

TINY = dict(p=11, d_embed=16, d_hidden=32, lr=1e-2)


def weight_norm(c: Cohort, key: str) -> float:
    i = c.active.index(key)
    return math.sqrt(sum(float(c.P[n][i].double().pow(2).sum()) for n in c.matrices))


def layer_norms(c: Cohort, key: str) -> dict[str, float]:
    i = c.active.index(key)
    return {n: float(c.P[n][i].double().norm()) for n in c.matrices}


def test_clamp_holds_weight_norm_from_t_int():
    clamped = Levers.of(clamp="absolute", target=9.0, t_int=4)
    c = Cohort(CohortConfig(**TINY), [MemberConfig(key="clamped", seed=0, lever=clamped),
                                      MemberConfig(key="free", seed=0)])
    c.run(until=3)
    assert weight_norm(c, "clamped") == weight_norm(c, "free") != pytest.approx(9.0, rel=1e-3)  # not yet
    for until in (4, 5, 17, 40):
        c.run(until=until)
        assert weight_norm(c, "clamped") == pytest.approx(9.0, rel=2e-6)
    assert weight_norm(c, "free") != pytest.approx(9.0, rel=1e-2)
    assert all(v == pytest.approx(9.0, rel=2e-6) for _, v in c.curves("clamped")["norm/total"][1:])


def test_clamp_n0_is_the_norm_entering_the_first_clamped_step():
    c = Cohort(CohortConfig(**TINY), [MemberConfig(key="m", seed=1, lever=Levers.of(clamp="n0", rho=1.2, t_int=6))])
    c.run(until=5)
    n0 = weight_norm(c, "m")
    c.run(until=9)
    rec = c.results()[0]
    assert rec["N0"] == pytest.approx(n0, rel=1e-6)
    assert rec["target"] == pytest.approx(1.2 * n0, rel=1e-6)
    assert weight_norm(c, "m") == pytest.approx(1.2 * n0, rel=2e-6)


def test_alloc_clamp_holds_every_layer_at_its_target():
    base = {"E": 1.0, "W1": 2.0, "W2": 1.5}
    c = Cohort(CohortConfig(**TINY), [
        MemberConfig(key="g+", seed=2, lever=Levers.of(clamp="alloc", target=8.0, gamma=0.4, t_int=3, alloc_base=base)),
        MemberConfig(key="g-", seed=2, lever=Levers.of(clamp="alloc", target=8.0, gamma=-0.5, t_int=3, alloc_base=base)),
        MemberConfig(key="own", seed=2, lever=Levers.of(clamp="alloc", rho=0.9, gamma=0.2, t_int=3))])
    c.run(until=30)
    s = 8.0 / math.sqrt(1 + 4 + 2.25)
    for key, g in (("g+", 0.4), ("g-", -0.5)):
        want = {"E": math.sqrt((s * 1.0) ** 2 - g * (s * 1.5) ** 2), "W1": 2.0 * s, "W2": math.sqrt(1 + g) * s * 1.5}
        got = layer_norms(c, key)
        assert got == pytest.approx(want, rel=2e-6)
        assert weight_norm(c, key) == pytest.approx(8.0, rel=2e-6)  # squared norm moved, total kept
    # own allocation at the first clamped step, scaled to rho * N0, W1 kept at its scaled share
    assert weight_norm(c, "own") == pytest.approx(0.9 * c.results()[2]["N0"], rel=2e-6)


def test_alloc_targets_reproduce_the_released_alloc_cells(paper_metrics):
    """gamma moves squared norm between E and W2 at fixed total, from the free control's allocation."""
    ctrl = np.load(paper_metrics / "alloc" / "mlp_ce_full_p59_ctrl.npz")
    base = [float(ctrl[k][-1]) for k in ("wn_E", "wn_W1", "wn_W2")]
    for g in ("-0.60", "-0.30", "+0.00", "+0.30", "+0.60"):
        cell = np.load(paper_metrics / "alloc" / f"mlp_ce_full_p59_alloc_g{g}.npz")
        got = alloc_targets(base, float(cell["wc_used"]), float(g), 0, 2)
        want = [float(cell[k][-1]) for k in ("wn_E", "wn_W1", "wn_W2")]
        assert got == pytest.approx(want, rel=1e-4), g


@pytest.mark.parametrize("model", ["transformer", "transformer_noln"])
def test_transformer_trains_and_the_clamp_covers_every_matrix(model):
    cfg = CohortConfig(p=7, model=model, d_model=8, n_heads=2, d_mlp=16, lr=1e-2, log_every=10)
    c = Cohort(cfg, [MemberConfig(key="m", seed=0, lever=Levers.of(clamp="absolute", target=6.0, t_int=1)),
                     MemberConfig(key="free", seed=0)])
    expected = {"E", "pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_U"}
    assert set(c.matrices) == expected
    assert (model == "transformer") == any(k.startswith("ln") for k in c.P)
    c.run(until=30)
    assert weight_norm(c, "m") == pytest.approx(6.0, rel=2e-6)
    loss = c.curves("free")["train/loss"]
    assert loss[-1][1] < loss[0][1]
    assert {f"norm/{n}" for n in expected} <= set(c.curves("m"))


def test_float64_cohort():
    c = Cohort(CohortConfig(**TINY, precision="float64"),
               [MemberConfig(key="m", seed=0, lever=Levers.of(clamp="absolute", target=9.0, t_int=2))])
    assert all(t.dtype == torch.float64 for t in c.P.values())
    c.run(until=25)
    assert weight_norm(c, "m") == pytest.approx(9.0, rel=1e-13)
    assert c.curves("m")["train/loss"][0][1] > 0
    assert c.evals("m")[0][0] == 25
