"""reference/study-file.md: every key a study file (and a suite file) takes, walked from the schema the loader
validates with (interventions.study.schema.models(), made from the registries), so the page cannot drift."""
from __future__ import annotations

from typing import Any, Iterator, get_args, get_origin

from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo

from interventions import kinds
from interventions.registry import (BUNDLED, LEVERS, LOSSES, MODELS, OPTIMIZERS, TASKS, discover,
                                    loaded_entry_points)
from interventions.study import schema
from interventions.study.suite import Entry, Suite
from interventions.study.types import DERIVED

from .md import default_str, doc, metadata, options, table, type_str

REGISTRIES = {"model": MODELS, "optimizer": OPTIMIZERS, "loss": LOSSES, "lever": LEVERS, "task": TASKS}


def anchor(path: str) -> str:
    return path.replace("[]", "").replace(".", "-").replace("_", "-") or "top-level"


def plugin_link(kind: str, name: str) -> str:
    return f"[`{name}`](plugins.md#{kind}-{name})"


def shipped(entry: type) -> bool:
    """Bundled, or from an installed plug-in: what the site documents (not a module a study imported into this
    process, as the tests do)."""
    module = entry.__module__
    return any(module == m or module.startswith(m + ".") for m in (*BUNDLED, *loaded_entry_points()))


def registered(kind: str) -> list[tuple[str, type]]:
    return [(name, entry) for name, entry in REGISTRIES[kind].items() if shipped(entry)]


def names(kind: str) -> str:
    return ", ".join(plugin_link(kind, n) for n, _ in registered(kind))


def foreign_keys() -> set[str]:
    """The study-file keys of levers that are not shipped (left out, as those levers are)."""
    return {k for name, lever in LEVERS.items() if not shipped(lever)
            for k in (kinds.user_fields(lever.Settings) if lever.flat else [name])}


def entry_kind(t: Any) -> str | None:
    """'model', 'optimizer' or 'loss' where t is the union of a registry's entries (`{kind: <name>, ...}`)."""
    variants = options(t)
    for kind, reg in REGISTRIES.items():
        if variants and all(isinstance(v, type) and "kind" in getattr(v, "model_fields", {}) and
                            v.__name__ == f"{reg.kind}_{v.model_fields['kind'].default}" for v in variants):
            return kind
    return None


def nested(t: Any) -> tuple[type[BaseModel] | None, str]:
    """The one study-side model a field holds (its keys get a section of their own) and the path suffix ('[]'
    for a list of them); plug-in settings are not walked here (reference/plugins.md lists them)."""
    opts, suffix = options(t), ""
    if len(opts) == 1 and get_origin(opts[0]) is list:
        opts, suffix = options(get_args(opts[0])[0]), "[]"
    if len(opts) == 1 and isinstance(opts[0], type) and issubclass(opts[0], BaseModel) \
            and not issubclass(opts[0], kinds.Settings) and opts[0] not in DERIVED:
        return opts[0], suffix
    return None, ""


def sections(model: type[BaseModel] | None = None, path: str = "") -> Iterator[tuple[str, type, list]]:
    """(path, model, [(key, field)]) of every section of a study file, parents first; the fields the loader
    fills (`exclude`d) left out, and a lever's settings (on the plug-ins page)."""
    model, foreign = model or schema.models().Study, foreign_keys()
    fields = [(f.alias or name, f) for name, f in model.model_fields.items() if not f.exclude and name not in foreign]
    yield path, model, fields
    for key, f in fields:
        sub, suffix = nested(f.annotation)
        if sub is not None and not (key in LEVERS and not LEVERS.get(key).flat):
            yield from sections(sub, f"{path}.{key}{suffix}".lstrip("."))


def study_fields() -> Iterator[tuple[str, str, FieldInfo]]:
    """(section path, key, field) of every key a study file takes."""
    for path, _, fields in sections():
        for key, f in fields:
            yield path, key, f


def extra_fields() -> Iterator[tuple[str, str, FieldInfo]]:
    """(model, key, field) of the derived values and of a suite file."""
    for model in (*DERIVED, Suite, Entry):
        for key, f in model.model_fields.items():
            yield model.__name__, key, f


def type_cell(path: str, key: str, f: FieldInfo) -> str:
    kind = entry_kind(f.annotation)
    if kind is not None:
        plain = any(isinstance(m, BeforeValidator) for m in [*f.metadata, *metadata(f.annotation)])
        return (("a name, or " if plain else "") + f"`{{kind: <name>, <its settings>}}`; kind one of {names(kind)}")
    if key in LEVERS and not LEVERS.get(key).flat:
        return f"mapping: lever {plugin_link('lever', key)}'s settings"
    if (path, key) == ("defaults.task", "op"):
        return f"one of {names('task')}"
    sub, suffix = nested(f.annotation)
    if sub is not None:
        where = f"{path}.{key}{suffix}".lstrip(".")
        return ("list of mappings" if suffix else "mapping") + f" ([`{where}`](#{anchor(where)}))"
    return type_str(f.annotation, f.metadata)


def rows(fields) -> list[tuple[str, ...]]:
    return [(f"`{key}`", type_cell(path, key, f), default_str(f), f.description or "") for path, key, f in fields]


HEADER = ("Key", "Type", "Default", "Description")

INTRO = """\
# Study-file reference

Generated from the schema `python -m interventions.run` validates study files with
(`interventions.study.schema`), and from the registries of plug-ins: every key below is checked, an unknown
key or value is refused with one line naming the file, the key path and the reason. For a walk through a
whole study file see [Study files](../study-files.md) and the [tutorial](../tutorial.md).

A preset (`--preset NAME`) overlays `presets.NAME` on the file before validation, then each `--set
dotted.key=value` applies (`--set defaults.task.p=31`, `--set arms.clamp_raised.rho=1.2`); the arms'
`from`, `sweep` and derived values form the study's graph.

## Registered names

The values a key naming a plug-in takes (what is installed here, the bundled plug-ins and any discovered
through the entry-point group `grokking_interventions.plugins`; a study's own `plugins:` add more).

| Key | Registered names |
|---|---|
| `defaults.task.op` | {task} |
| `defaults.model.kind` | {model} |
| `defaults.optimizer.kind`, an arm's `optimizer.kind` | {optimizer} |
| `defaults.loss`, an arm's `loss` (or their `kind`) | {loss} |
| lever settings (`defaults.levers`, an arm) | {lever} |
| an arm's `sweep` keys | {sweep} |
"""


def page() -> str:
    discover()
    sweep = ", ".join(f"`{k}`" for k, (lever, _) in schema.sweepable().items() if shipped(LEVERS.get(lever)))
    out = [INTRO.format(sweep=sweep, **{k: names(k) for k in REGISTRIES})]
    for path, model, fields in sections():
        out.append(f"## {f'`{path}`' if path else 'Top level'} {{#{anchor(path)}}}\n")
        if doc(model):
            out.append(doc(model) + "\n")
        out.append(table(HEADER, rows((path, k, f) for k, f in fields)) + "\n")
    out.append("## Derived values {#derived-values}\n\nA setting marked \"or a derived value\" may instead be "
               "computed from finished arms (the arm waits for them: a dashed edge of the study's graph).\n")
    for model in DERIVED:
        out += [f"### `derive: {model.model_fields['derive'].annotation.__args__[0]}`\n", doc(model) + "\n",
                table(HEADER, rows(("", k, f) for k, f in model.model_fields.items())) + "\n"]
    out.append("## Suite files {#suite-files}\n\nA suite (`python -m interventions.run paper`) runs bundled "
               "studies one after another, each into its own experiment.\n")
    for path, model in (("suite", Suite), ("suite.studies[]", Entry)):
        out += [f"### `{path}` {{#{anchor(path)}}}\n", doc(model) + "\n",
                table(HEADER, rows((path, k, f) for k, f in model.model_fields.items())) + "\n"]
    return "\n".join(out)
