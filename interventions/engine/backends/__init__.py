"""Backends: the interface (base.Backend), the generic path and the compiled fast paths, and which one
trains a cohort (`choose`): the kernels the config asks for (auto | native | aten | generic; or the
environment's INTERVENTIONS_KERNELS under auto), the first that covers the cohort's plug-ins."""
from __future__ import annotations

import os
import warnings

from interventions.engine.backends.aten import ATen
from interventions.engine.backends.base import SUMS, Backend, Workers, flushes_subnormals, softmax_collapse
from interventions.engine.backends.generic import Generic
from interventions.engine.backends.native import Native
from interventions.engine import native
from interventions.engine.config import KERNELS
from interventions.registry import LEVERS

__all__ = ["ATen", "Backend", "Generic", "Native", "SUMS", "Workers", "choose", "flushes_subnormals", "select",
           "softmax_collapse"]


def choose(cfg, levers: list[str]) -> tuple[type[Backend], str | None]:
    """(the backend class, why a faster one was passed over or None) for a cohort of config `cfg` whose
    members have these levers active; ValueError where the kernels asked for cannot train it."""
    choice = cfg.kernels
    if choice == "auto":
        choice = os.environ.get("INTERVENTIONS_KERNELS", "auto") or "auto"
        if choice not in KERNELS:
            raise ValueError(f"INTERVENTIONS_KERNELS: {choice!r} (expected {' | '.join(KERNELS)})")
    classes = [LEVERS.get(n) for n in levers]
    if choice == "generic":
        return Generic, None
    why = None
    for backend in (Native, ATen):
        if choice not in ("auto", backend.kernels):
            continue
        why = backend.covers(cfg, classes)
        if why is None and backend is Native:
            try:
                native.module()
            except native.NativeUnavailable as e:
                why = f"unavailable: {e}"
                if not native._state.get("warned") and choice == "auto":
                    native._state["warned"] = True
                    warnings.warn(f"interventions: native CPU kernels {why}; using the ATen path (slower, "
                                  "same mathematics)", RuntimeWarning, stacklevel=3)
        if why is None:
            return backend, None
        if choice == backend.kernels:
            raise ValueError(f"cohort.kernels: {backend.kernels} kernels "
                             + (why if why.startswith("unavailable") else f"cannot run {why}"))
    return Generic, why


def select(c) -> Backend:
    """The backend instance of cohort c (its config and its members' active levers)."""
    backend, _ = choose(c.cfg, list(c.levers))
    return Native(c.cfg, native.module()) if backend is Native else backend(c.cfg)
