"""The modular-arithmetic task: labels, splits, and a cohort on a division task."""
import pytest
import torch

from interventions.engine import task as tasks
from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig


@pytest.mark.parametrize("op,f", [("add", lambda a, b, p: (a + b) % p), ("sub", lambda a, b, p: (a - b) % p),
                                  ("mul", lambda a, b, p: (a * b) % p)])
def test_labels(op, f):
    t = tasks.make_task(7, op)
    for a in range(7):
        for b in range(7):
            assert t.labels[a * 7 + b] == f(a, b, 7)
    assert t.n_pairs == 49


def test_division_is_multiplication_by_the_inverse_and_skips_zero():
    t = tasks.make_task(11, "div")
    for a in range(11):
        assert not t.valid[a * 11]
        for b in range(1, 11):
            assert (int(t.labels[a * 11 + b]) * b) % 11 == a
    assert t.n_pairs == 110
    with pytest.raises(ValueError, match="prime"):
        tasks.make_task(12, "div")


def test_split_is_seeded_sized_and_within_valid_pairs():
    t = tasks.make_task(11, "div")
    s = tasks.split(t, 0.4, torch.Generator().manual_seed(3))
    assert len(s) == round(0.4 * 110) and len(set(s.tolist())) == len(s)
    assert t.valid[s].all() and torch.equal(s, s.sort().values)
    assert torch.equal(s, tasks.split(t, 0.4, torch.Generator().manual_seed(3)))
    assert not torch.equal(s, tasks.split(t, 0.4, torch.Generator().manual_seed(4)))


def test_cohort_on_division_never_uses_undefined_pairs():
    c = Cohort(CohortConfig(p=11, op="div", d_embed=16, d_hidden=32, lr=1e-2, log_every=25),
               [MemberConfig(key="m", seed=0)])
    assert not c.train_mask[:, ::11].any() and not c.test_mask[:, ::11].any()
    assert int(c.train_mask.sum() + c.test_mask.sum()) == 110
    c.run(until=25)
    assert 0.0 <= c.evals("m")[0][2] <= 1.0
