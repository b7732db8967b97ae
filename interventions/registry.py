"""Registries: one per kind of plug-in (lever, loss, optimizer, task, model), filled by a decorator.

    @register_loss("ce")
    class CrossEntropy(Loss): ...

The bundled entries register themselves exactly so (interventions/levers, losses, optim, tasks, models);
a user's module does the same, and is named in a study file (`plugins: [my_module]`, interventions.plugins)
or installed under the entry-point group `grokking_interventions.plugins`. Every name check (the study
file's schema, the engine, the CLI) reads a registry: an unknown name is one error naming the registered
ones. The registries discover the bundled packages and the installed entry points on first use, so that
this module (and the study definition that reads it) imports nothing heavy itself.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

BUNDLED = ("interventions.levers.clamp", "interventions.levers.tau",
           "interventions.levers.logit_norm", "interventions.losses.ce",
           "interventions.losses.mse", "interventions.optim.adamw", "interventions.tasks.modular",
           "interventions.tasks.s5", "interventions.models.mlp", "interventions.models.transformer",
           "interventions.levers.grokfast", "interventions.levers.init_scale", "interventions.losses.stablemax",
           "interventions.losses.softmax_precision", "interventions.optim.sgd", "interventions.optim.orthograd",
           "interventions.models.deep_mlp")
ENTRY_POINTS = "grokking_interventions.plugins"


class UnknownName(LookupError):
    """A name no plug-in registered; the message lists the registered names."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        super().__init__(f"unknown {kind} {name!r} (registered: {', '.join(known) or 'none'})")


class Registry:
    """Names -> entries (classes) of one kind. An entry gets its name as the attribute `name`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, type] = {}

    def register(self, name: str):
        def add(entry: type) -> type:
            old = self._entries.get(name)
            if old is not None and (old.__module__, old.__qualname__) != (entry.__module__, entry.__qualname__):
                raise ValueError(f"{self.kind} {name!r} is registered twice: by {old.__module__}.{old.__qualname__} "
                                 f"and by {entry.__module__}.{entry.__qualname__}")
            entry.name = name
            self._entries[name] = entry   # the same class again (a module imported twice): the newer one
            return entry
        return add

    def get(self, name: str) -> type:
        discover()
        if name not in self._entries:
            raise UnknownName(self.kind, name, self.names())
        return self._entries[name]

    def names(self) -> list[str]:
        discover()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        discover()
        return name in self._entries

    def items(self) -> list[tuple[str, type]]:
        discover()
        return sorted(self._entries.items())

    def in_order(self, names) -> list[str]:
        """`names` in registration order (the bundled entries first): the order their hooks run in."""
        discover()
        names = set(names)
        return [n for n in self._entries if n in names]


LEVERS, LOSSES, OPTIMIZERS = Registry("lever"), Registry("loss"), Registry("optimizer")
TASKS, MODELS = Registry("task"), Registry("model")
register_lever, register_loss, register_optimizer = LEVERS.register, LOSSES.register, OPTIMIZERS.register
register_task, register_model = TASKS.register, MODELS.register

_state = {"discovered": False, "busy": False, "entry_points": []}


def loaded_entry_points() -> list[str]:
    """Modules of the installed plug-ins (entry points) discovery imported."""
    return list(_state["entry_points"])


class PluginError(ImportError):
    """A plug-in module that cannot be imported; the message names it and why."""


def discover() -> None:
    """Import the bundled plug-in packages and the installed entry points, once (a failed import raises
    PluginError, and is tried again by the next lookup)."""
    if _state["discovered"] or _state["busy"]:
        return
    _state["busy"] = True
    try:
        for module in BUNDLED:
            importlib.import_module(module)
        for ep in entry_points(group=ENTRY_POINTS):
            name = ep.value.partition(":")[0]
            try:
                importlib.import_module(name)
                _state["entry_points"].append(name)
            except Exception as e:
                raise PluginError(f"plug-in {ep.name!r} (entry point of {ENTRY_POINTS}, module {name}) cannot be "
                                  f"imported: {type(e).__name__}: {e}") from None
        _state["discovered"] = True
    finally:
        _state["busy"] = False


def origins(used: list[tuple["Registry", str]]) -> dict[str, str]:
    """{module: version} of the plug-in modules (not the bundled ones) that registered these entries: what
    a snapshot or checkpoint of them needs when it is loaded (`require`)."""
    out = {}
    for reg, name in used:
        module = reg.get(name).__module__
        if module not in BUNDLED:
            out[module] = str(getattr(importlib.import_module(module), "__version__", "none"))
    return out


def require(plugins: dict[str, str], what: str) -> None:
    """Import the plug-in modules a saved state names ({module: version}); PluginError saying which one
    `what` needs (and the version it was made with) where one cannot be imported."""
    for module, version in (plugins or {}).items():
        try:
            importlib.import_module(module)
        except Exception as e:
            raise PluginError(f"{what} needs plug-in {module} (version {version}), which cannot be imported "
                              f"({type(e).__name__}: {e}): install it or put it on sys.path") from None
