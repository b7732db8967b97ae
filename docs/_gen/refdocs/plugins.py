"""reference/plugins.md: every registered lever, loss, optimizer, task and model with its module, its docstring
and its settings, read from the registries (the bundled plug-ins and the installed entry points)."""
from __future__ import annotations

import sys
from typing import Iterator

from pydantic.fields import FieldInfo

from interventions.kinds import user_fields
from interventions.registry import discover

from .md import default_str, doc, table, type_str
from .study_file import registered

TITLES = {"lever": "Levers", "loss": "Losses", "optimizer": "Optimizers", "task": "Tasks", "model": "Models"}
WHERE = {
    "lever": "A lever acts on a member's training at the hooks it declares. Its settings sit under its name "
             "(`defaults.levers.<name>` for every arm, `<name>:` in an arm), or, for a *flat* lever, as top-level "
             "keys of `defaults.levers` and of an arm.",
    "loss": "`defaults.loss` or an arm's `loss`: the name alone, or `{kind: <name>, <its settings>}`.",
    "optimizer": "`defaults.optimizer` or an arm's `optimizer`: `{kind: <name>, <its settings>}`.",
    "task": "`defaults.task.op`; its size is `defaults.task.p`, the split `defaults.task.train_fraction` (see "
            "[the task section](study-file.md#defaults-task)).",
    "model": "`defaults.model`: `{kind: <name>, <its settings>}`.",
}
HEADER = ("Setting", "Type", "Default", "Description")
INTRO = """\
# Plug-in reference

Generated from the registries (`interventions.registry`): every lever, loss, optimizer, task and model
registered where the site was built, the bundled ones and any installed plug-in, with the docstrings and
settings of the code itself. A plug-in of your own registers the same way ([Extending](../extending.md)),
and a study file names it by the name below ([study-file reference](study-file.md)).
"""


def entries() -> Iterator[tuple[str, str, type]]:
    """(kind, name, entry) of every shipped entry (bundled or installed), kind by kind."""
    discover()
    for kind in TITLES:
        for name, entry in registered(kind):
            yield kind, name, entry


def settings(entry: type) -> dict[str, FieldInfo]:
    """The settings a study file gives an entry (a task has none: its section's keys are common to all)."""
    model = getattr(entry, "Settings", None)
    return user_fields(model) if model is not None else {}


def facts(kind: str, entry: type) -> list[str]:
    out = [f"module `{entry.__module__}`, class `{entry.__qualname__}`"]
    if kind == "lever":
        out.append(f"acts at: {', '.join(entry.hooks) or 'no hook'}")
        out.append("flat: its settings are top-level keys" if entry.flat else f"settings under `{entry.name}:`")
        out.append("its state travels into a fork" if entry.fork_state else "starts anew in a forked arm")
    if kind == "task":
        out.append(f"p fixed at {entry.fixed_p}" if entry.fixed_p else "any p the task accepts")
        out.append("cyclic: the Fourier structure metric applies" if entry.cyclic else "not cyclic")
    if kind == "optimizer" and entry.Settings.model_config.get("extra") == "allow":
        out.append("a wrapper: the settings of its `base` optimizer are given beside its own")
    return out


def section(kind: str, name: str, entry: type, seen: dict[str, str]) -> str:
    out = [f"### `{name}` {{#{kind}-{name}}}\n", " · ".join(facts(kind, entry)) + "\n", doc(entry) + "\n"]
    fields = settings(entry)
    if fields:
        out.append(table(HEADER, [(f"`{k}`", type_str(f.annotation, f.metadata), default_str(f),
                                   f.description or "") for k, f in fields.items()]) + "\n")
    else:
        out.append("No settings of its own.\n")
    module = entry.__module__
    if module in seen:
        out.append(f"Module notes: see [`{seen[module]}`](#{kind}-{seen[module]}).\n")
    elif doc(sys.modules[module]):
        seen[module] = name
        body = "\n".join("    " + line if line else "" for line in doc(sys.modules[module]).splitlines())
        out.append(f'??? note "Module notes: `{module}`"\n{body}\n')
    return "\n".join(out)


def page() -> str:
    out, seen, last = [INTRO], {}, None
    for kind, name, entry in entries():
        if kind != last:
            out.append(f"## {TITLES[kind]} {{#{kind}s}}\n\n{WHERE[kind]}\n")
            last = kind
        out.append(section(kind, name, entry, seen))
    return "\n".join(out)
