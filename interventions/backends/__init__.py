"""Backends: the interface (base.Backend) and which implementation trains and evaluates a cohort (`select`)."""
from __future__ import annotations

from ..native import resolve
from .aten import ATen
from .base import SUMS, Backend, Workers, squared_norms
from .native import Native

__all__ = ["ATen", "Backend", "Native", "SUMS", "Workers", "select", "squared_norms"]


def select(cfg) -> Backend:
    """The backend of a CohortConfig: the native kernels where cfg.kernels and the machine allow them
    (interventions.native.resolve), else ATen."""
    kernels, module = resolve(cfg)
    return Native(cfg, module) if kernels == "native" else ATen(cfg)
