"""Modular arithmetic (docs/reproduction.md, the paper's setup): (a op b) mod p over all pairs of residues; x^2 + xy + y^2 (Nanda et al.)."""
from __future__ import annotations

from interventions.registry import register_task
from interventions.kinds import PairTask


class Modular(PairTask):
    cyclic = True


@register_task("add")
class Add(Modular):
    """(a + b) mod p."""

    @classmethod
    def label(cls, a, b, p):
        return (a + b) % p


@register_task("sub")
class Sub(Modular):
    """(a - b) mod p."""

    @classmethod
    def label(cls, a, b, p):
        return (a - b) % p


@register_task("mul")
class Mul(Modular):
    """(a * b) mod p."""

    @classmethod
    def label(cls, a, b, p):
        return (a * b) % p


@register_task("div")
class Div(Modular):
    """a / b mod p = a * b^(p - 2) mod p (Fermat), for b != 0; p must be prime."""

    @classmethod
    def check(cls, p):
        if p >= 2 and any(p % k == 0 for k in range(2, int(p ** 0.5) + 1)):
            return f"op 'div' needs a prime p (b has an inverse mod p), got {p}"
        return super().check(p)

    @classmethod
    def label(cls, a, b, p):
        return (a * pow(b, p - 2, p)) % p if b else None


@register_task("x2xyy2")
class X2XYY2(Modular):
    """(a^2 + a b + b^2) mod p."""

    @classmethod
    def label(cls, a, b, p):
        return (a * a + a * b + b * b) % p
