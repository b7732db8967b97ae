"""Engine cohort: snapshots, retirement, divergence, t_mem/t_grok detection, forks, run control, errors."""
import os

import pytest
import torch

from interventions.engine import snapshot
from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig, detect_times
from interventions.vocab import Levers

TINY = dict(p=11, d_embed=16, d_hidden=32, lr=1e-2, log_every=20)
GROKS = dict(p=23, train_fraction=0.7, d_embed=32, d_hidden=64, lr=1e-2, weight_decay=3.0, log_every=100)


def mixed_members() -> list[MemberConfig]:
    return [MemberConfig(key="free/0", seed=0),
            MemberConfig(key="abs/1", seed=1, lever=Levers.of(clamp="absolute", target=9.0, t_int=10, tau=1.5)),
            MemberConfig(key="n0/0", seed=0, lever=Levers.of(clamp="n0", rho=1.15, t_int=30)),
            MemberConfig(key="alloc/2", seed=2, lever=Levers.of(clamp="alloc", gamma=0.3, t_int=5))]


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_snapshot_restore_continue_equals_uninterrupted_bit_for_bit(tmp_path):
    cfg = CohortConfig(**TINY)
    whole = Cohort(cfg, mixed_members())
    whole.run(until=90)
    part = Cohort(cfg, mixed_members())
    part.run(until=37)
    snapshot.save(tmp_path / "c.pt", part.state_dict())
    part.run(until=60)  # the saved state must not follow later training
    resumed = Cohort.from_state(snapshot.load(tmp_path / "c.pt"))
    assert resumed.step == 37
    resumed.run(until=90)
    for d in ("P", "m1", "m2"):
        assert same_tensors(getattr(resumed, d), getattr(whole, d)), d
    assert resumed.records == whole.records
    assert resumed.results() == whole.results()


def test_same_configs_and_seeds_give_identical_results():
    runs = []
    for _ in range(2):
        c = Cohort(CohortConfig(**TINY), mixed_members())
        c.run(until=50)
        runs.append(c)
    assert same_tensors(runs[0].P, runs[1].P) and runs[0].records == runs[1].records


def test_retirement_shrinks_the_work_and_keeps_final_states():
    cfg = CohortConfig(**TINY, grok_threshold=0.0)  # every member "groks" at its first eval (step 25)
    c = Cohort(cfg, [MemberConfig(key="now", seed=0), MemberConfig(key="margin", seed=1, margin=50),
                     MemberConfig(key="budget", seed=2, budget=10), MemberConfig(key="long", seed=3, margin=500)])
    assert c.P["W1"].shape[0] == 4
    c.run(until=30)
    assert c.active == ["margin", "long"]
    assert all(t.shape[0] == 2 for t in (*c.P.values(), *c.m1.values(), c.train_idx))
    c.run(until=80)
    assert c.active == ["long"] and c.P["E"].shape[0] == 1
    res = {r["key"]: r for r in c.results()}
    assert (res["now"]["retired_at"], res["now"]["retire_reason"]) == (25, "grokked")
    assert (res["margin"]["retired_at"], res["budget"]["retired_at"]) == (75, 10)
    assert res["budget"]["retire_reason"] == "budget" and res["long"]["retired_at"] is None
    st = c.member_state("now")  # a retired member's final state, e.g. to fork from
    assert st.step == 25 and st.params["E"].shape == (11, 16)
    assert c.curves("budget")["norm/total"][-1][0] == 10  # last curve row at retirement


def test_a_diverged_member_does_not_disturb_the_others():
    cfg = CohortConfig(**TINY)
    healthy = [MemberConfig(key="a", seed=0, lever=Levers.of(clamp="n0", rho=1.1, t_int=5)), MemberConfig(key="b", seed=1)]
    blowup = MemberConfig(key="bad", seed=2, lever=Levers.of(clamp="absolute", target=1e30, t_int=3))  # logits overflow
    with_bad = Cohort(cfg, [healthy[0], blowup, healthy[1]])
    without = Cohort(cfg, healthy)
    with_bad.run(until=60)
    without.run(until=60)
    bad = with_bad.results()[1]
    assert bad["diverged"] and bad["retire_reason"] == "diverged" and bad["retired_at"] <= 5
    assert with_bad.active == ["a", "b"]
    assert same_tensors(with_bad.P, without.P) and same_tensors(with_bad.m2, without.m2)
    assert {k: with_bad.records[k] for k in ("a", "b")} == without.records


def test_t_mem_and_t_grok_on_constructed_curves():
    evals = [(25, 0.2, 0.0), (50, 0.989, 0.01), (75, 0.99, 0.02), (100, 1.0, 0.5), (125, 0.97, 0.9), (150, 1.0, 1.0)]
    assert detect_times(evals) == (75, 125)
    assert detect_times(evals, mem_threshold=1.0, grok_threshold=0.95) == (100, 150)
    assert detect_times(evals[:4]) == (75, None)
    assert detect_times([]) == (None, None)


def test_cohort_records_t_mem_t_grok_and_values_at_grok():
    c = Cohort(CohortConfig(**GROKS), [MemberConfig(key=f"m/{s}", seed=s, budget=1500) for s in range(2)])
    c.run()
    for r in c.results():
        evals = c.evals(r["key"])
        assert [t for t, _, _ in evals] == list(range(25, evals[-1][0] + 1, 25))
        assert (r["t_mem"], r["t_grok"]) == detect_times(evals) != (None, None)
        assert r["grokked"] and r["retired_at"] == r["t_grok"] and r["delay"] == r["t_grok"] - r["t_mem"]
        assert r["logit_scale_at_grok"] > 0 and r["weight_norm_at_grok"] > 0


def test_fork_restores_one_member_into_new_arms():
    cfg = CohortConfig(**TINY)
    trunk = Cohort(cfg, [MemberConfig(key="trunk/0", seed=0), MemberConfig(key="trunk/1", seed=1)])
    trunk.run(until=400, stop=lambda c: c.step >= 25 and all(r["t_mem"] for r in c.results()))
    assert trunk.step % 25 == 0 and trunk.step < 400 and all(r["t_mem"] for r in trunk.results())
    st = trunk.member_state("trunk/1")
    n0 = float(torch.cat([st.params[n].flatten() for n in ("E", "W1", "W2")]).double().norm())
    arms = Cohort(cfg, [MemberConfig(key="free/1", seed=1), MemberConfig(key="same/1", seed=1, lever=Levers.of(clamp="n0")),
                        MemberConfig(key="raised/1", seed=1, lever=Levers.of(clamp="n0", rho=1.15))], init=[st] * 3)
    assert arms.step == trunk.step
    trunk.run(until=trunk.step + 30)
    arms.run(until=arms.step + 30)
    i = trunk.active.index("trunk/1")
    assert all(torch.equal(arms.P[k][0], trunk.P[k][i]) for k in arms.P)  # free fork == continuing
    res = {r["key"]: r for r in arms.results()}
    assert res["same/1"]["N0"] == pytest.approx(n0, rel=1e-6)
    assert res["raised/1"]["target"] == pytest.approx(1.15 * n0, rel=1e-6)
    assert res["raised/1"]["fork_from"] == "trunk/1" and res["raised/1"]["fork_step"] == st.step
    assert res["raised/1"]["t_mem"] == trunk.results()[1]["t_mem"]  # inherited from before the fork


def test_run_until_in_pieces_equals_one_run_and_calls_back():
    cfg = CohortConfig(**TINY)
    one = Cohort(cfg, mixed_members())
    logged, saved = [], []
    one.run(until=60, on_log=lambda c, step, rows: logged.append((step, sorted(rows))),
            checkpoint_every=20, on_checkpoint=lambda c: saved.append(c.step))
    pieces = Cohort(cfg, mixed_members())
    for until in (1, 13, 25, 60):
        pieces.run(until=until)
    assert same_tensors(one.P, pieces.P) and one.records == pieces.records
    assert [s for s, _ in logged] == [1, 20, 40, 60] and saved == [20, 40, 60]
    assert logged[0][1] == sorted(m.key for m in mixed_members())


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="target"):
        MemberConfig(key="x", seed=0, lever=Levers.of(clamp="absolute"))
    with pytest.raises(ValueError, match=r"cohort\.loss"):
        CohortConfig(loss="hinge")
    with pytest.raises(ValueError, match="duplicate"):
        Cohort(CohortConfig(**TINY), [MemberConfig(key="x", seed=0), MemberConfig(key="x", seed=1)])
    st = Cohort(CohortConfig(**TINY), [MemberConfig(key="x", seed=0)]).member_state("x")
    with pytest.raises(ValueError, match="p=11"):
        Cohort(CohortConfig(**{**TINY, "p": 13}), [MemberConfig(key="y", seed=0)], init=[st])
    with pytest.raises(KeyError):
        Cohort(CohortConfig(**TINY), [MemberConfig(key="x", seed=0)]).member_state("nope")


def test_snapshot_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "snap.pt"
    snapshot.save(path, {"step": 1})

    def torn(obj, f):
        f.write(b"half a snapshot")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(KeyboardInterrupt):
        snapshot.save(path, {"step": 2})
    assert snapshot.load(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["snap.pt"]
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="snap.pt"):
        snapshot.load(path)


def test_a_retire_group_trains_on_until_its_last_member_has_grokked():
    """retire: arm. Members of one retire_group log at the same steps to the end, so a seed-mean curve
    point is always a mean over the whole group; a member alone retires at its own t_grok; the arithmetic
    of a member does not depend on when its cohort-mates retire."""
    cfg = CohortConfig(**GROKS)
    group = [MemberConfig(key=f"arm/{s}", seed=s, budget=3000, retire_group="arm") for s in (0, 1, 2)]
    alone = [MemberConfig(key=f"solo/{s}", seed=s, budget=3000) for s in (0, 1, 2)]
    c = Cohort(cfg, group + alone)
    c.run()
    res = {r["key"]: r for r in c.results()}
    grok = [res[f"arm/{s}"]["t_grok"] for s in (0, 1, 2)]
    assert None not in grok and len(set(grok)) > 1
    for s in (0, 1, 2):
        assert res[f"arm/{s}"]["final_step"] == max(grok) and res[f"arm/{s}"]["retire_reason"] == "grokked"
        assert res[f"solo/{s}"]["final_step"] == res[f"solo/{s}"]["t_grok"] == res[f"arm/{s}"]["t_grok"]
    steps = [[t for t, _ in c.curves(f"arm/{s}")["test/acc"]] for s in (0, 1, 2)]
    assert steps[0] == steps[1] == steps[2] and steps[0][-1] == max(grok)
    fourier = c.curves("arm/0")["repr/fourier_top5"]
    assert fourier[-1][1] > 0.8 > 0.6 > fourier[0][1]  # the Fourier circuit forms (p = 23: 11 frequencies)
