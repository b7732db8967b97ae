"""A cohort's configuration: everything its members share (the task, model, loss and optimizer with their
settings, the precision, the cadence, the device, the kernels), validated against the registries."""
from __future__ import annotations

import torch
from pydantic import ValidationError

from interventions.registry import LOSSES, MODELS, OPTIMIZERS, TASKS
from tracking.conventions import GROK_THRESHOLD, MEM_THRESHOLD

DTYPES = {"float32": torch.float32, "float64": torch.float64}
KERNELS = ("auto", "native", "aten", "generic")   # native, aten: fast paths where they apply; generic: always


class CohortConfig:
    """Everything the members of one cohort share: the task (`op`, a registered task, of size `p`), model,
    loss and optimizer (registered names) with their settings, the precision, the evaluation cadence and
    thresholds, the device, and which kernels may train it (auto | native | aten | generic).

    The entries' settings are given flat by name (`d_hidden=32, lr=1e-2`): each belongs to whichever chosen
    entry declares it; a name no registered entry declares is an error. `cfg.<setting>` reads one (its default where
    not given); `cfg.settings(kind)` is the validated settings object of the model, loss or optimizer.
    """

    CORE = {"p": 59, "op": "add", "train_fraction": 0.4, "model": "mlp", "loss": "ce", "optimizer": "adamw",
            "precision": "float32", "eval_every": 25, "log_every": 200, "mem_threshold": MEM_THRESHOLD,
            "grok_threshold": GROK_THRESHOLD, "device": "cpu", "kernels": "auto"}
    REGISTRIES = {"model": MODELS, "loss": LOSSES, "optimizer": OPTIMIZERS}

    def __init__(self, **given):
        def bad(key, why):
            raise ValueError(f"cohort.{key}: {why}")
        core = {k: given.pop(k, v) for k, v in self.CORE.items()}
        self.__dict__.update(core)
        for kind, reg in {"op": TASKS, **self.REGISTRIES}.items():
            if core[kind] not in reg:
                bad(kind, f"unknown {reg.kind} {core[kind]!r} (registered: {', '.join(reg.names())})")
        if self.precision not in DTYPES:
            bad("precision", f"unknown precision {self.precision!r} (expected {' | '.join(DTYPES)})")
        if self.kernels not in KERNELS:
            bad("kernels", f"unknown kernels {self.kernels!r} (expected {' | '.join(KERNELS)})")
        for key in ("p", "eval_every", "log_every"):
            if int(getattr(self, key)) < 1:
                bad(key, f"must be a positive integer, got {getattr(self, key)!r}")
        if not 0.0 < self.train_fraction < 1.0:
            bad("train_fraction", f"must be in (0, 1), got {self.train_fraction}")
        for key in ("mem_threshold", "grok_threshold"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                bad(key, f"must be in [0, 1], got {getattr(self, key)}")
        owners = {kind: reg.get(core[kind]).Settings for kind, reg in self.REGISTRIES.items()}
        # a setting of another registered entry of a kind (d_model beside an mlp) is accepted and unused
        others = {f for reg in self.REGISTRIES.values() for _, e in reg.items() for f in e.Settings.model_fields}
        unknown = [k for k in given if k not in others]
        if unknown:
            bad(unknown[0], "not a setting of " + "; ".join(
                f"{kind} {core[kind]} ({', '.join(S.model_fields) or '-'})" for kind, S in owners.items()))
        self._settings = {}
        for kind, S in owners.items():
            # an entry that takes extra settings (an optimizer wrapper: its base's) gets those no other claims
            elsewhere = {f for kk, reg in self.REGISTRIES.items() if kk != kind for _, e in reg.items()
                         for f in e.Settings.model_fields}   # another kind's (d_hidden, bits): never a base's
            mine = [k for k in given if k in S.model_fields or (S.model_config.get("extra") == "allow"
                                                                 and k not in elsewhere)]
            try:
                self._settings[kind] = S(**{k: given[k] for k in mine})
            except ValidationError as e:
                err = e.errors()[0]
                bad(".".join(map(str, err["loc"])) or kind, err["msg"])

    def settings(self, kind: str):
        """The validated settings of the cohort's model, loss or optimizer."""
        return self._settings[kind]

    def __getattr__(self, name: str):
        for s in self.__dict__.get("_settings", {}).values():
            if name in type(s).model_fields:
                return getattr(s, name)
        raise AttributeError(f"CohortConfig has no setting {name!r}")

    def to_dict(self) -> dict:
        """Plain data: CohortConfig(**cfg.to_dict()) == cfg."""
        return {**{k: getattr(self, k) for k in self.CORE},
                **{k: v for s in self._settings.values() for k, v in s.model_dump().items()}}

    def replace(self, **changes) -> "CohortConfig":
        return CohortConfig(**{**self.to_dict(), **changes})

    def shape(self) -> dict:
        """What a member's state depends on: the task and the model with its settings."""
        return {"p": self.p, "op": self.op, "train_fraction": self.train_fraction, "model": self.model,
                **self._settings["model"].model_dump()}

    def __eq__(self, other) -> bool:
        return isinstance(other, CohortConfig) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(sorted(self.to_dict().items())))

    def __repr__(self) -> str:
        return f"CohortConfig({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"
