"""Composition in the symmetric group S5 (Power et al. 2022): 120 permutations, label a o b. Non-abelian:
no cyclic Fourier structure."""
from __future__ import annotations

from functools import cache
from itertools import permutations

from interventions.registry import register_task
from interventions.kinds import PairTask


@cache
def elements() -> tuple[tuple[int, ...], ...]:
    """The 120 permutations of 0..4 in lexicographic order; token i is elements()[i]."""
    return tuple(permutations(range(5)))


@cache
def _index() -> dict[tuple[int, ...], int]:
    return {g: i for i, g in enumerate(elements())}


@register_task("s5")
class S5(PairTask):
    """a o b: the permutation x -> a(b(x)); p is the group's order, 120."""

    fixed_p = 120

    @classmethod
    def label(cls, a, b, p):
        g, h = elements()[a], elements()[b]
        return _index()[tuple(g[h[x]] for x in range(5))]
