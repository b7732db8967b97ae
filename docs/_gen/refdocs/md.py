"""Markdown pieces the reference pages share: a pydantic field's type, default and description as table cells,
and a docstring made safe for Markdown."""
from __future__ import annotations

import inspect
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from interventions.study.types import DERIVED

BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def unwrap(t: Any) -> tuple[Any, list]:
    """(type, metadata) with every Annotated layer peeled off."""
    meta: list = []
    while get_origin(t) is Annotated:
        t, *more = get_args(t)
        meta += more
    return t, meta


def alternatives(t: Any, meta: tuple | list = ()) -> list[tuple[Any, list]]:
    """[(type, metadata)] of the members of a union, nested unions flattened and None left out; [(t, meta)]
    for anything else."""
    t, more = unwrap(t)
    meta = [*meta, *more]
    if get_origin(t) in (Union, types.UnionType):
        return [x for a in get_args(t) if a is not type(None) for x in alternatives(a, meta)]
    return [(t, meta)]


def options(t: Any) -> list:
    """The types of a union's members (see alternatives)."""
    return [a for a, _ in alternatives(t)]


def metadata(t: Any) -> list:
    """Every metadata item anywhere in t's Annotated and union layers."""
    return [m for _, meta in alternatives(t) for m in meta]


def bounds(base: Any, meta: list) -> list[str]:
    out = []
    for m in meta:
        if isinstance(m, FieldInfo):   # Annotated[float, Field(gt=0)]
            out += bounds(base, m.metadata)
            continue
        out += [f"{sym} {getattr(m, a)}" for a, sym in BOUNDS if getattr(m, a, None) is not None]
        unit = "characters" if base is str else "items"
        if getattr(m, "min_length", None) == 1:
            out.append("non-empty")
        elif getattr(m, "min_length", None) is not None:
            out.append(f"at least {m.min_length} {unit}")
        if getattr(m, "max_length", None) is not None:
            out.append(f"at most {m.max_length} {unit}")
        if getattr(m, "pattern", None):
            out.append(f"matching `{m.pattern}`")
    return out


def type_str(t: Any, meta: tuple | list = ()) -> str:
    """A type as a reader says it: `int > 0`, `int or list of int`, `` `a` or `b` ``."""
    alts = alternatives(t, meta)
    if len(alts) > 1:
        plain = [type_str(a, m) for a, m in alts if a not in DERIVED]
        derived = ["a [derived value](study-file.md#derived-values)"] if len(plain) < len(alts) else []
        return " or ".join([*plain, *derived])
    (t, meta), = alts
    if t in DERIVED:
        return "a [derived value](study-file.md#derived-values)"
    if get_origin(t) is Literal:
        return " or ".join(f"`{v}`" for v in get_args(t))
    if get_origin(t) is list:
        return "list of " + type_str(get_args(t)[0]) + "".join(f", {b}" for b in bounds(list, meta))
    if get_origin(t) is dict:
        k, v = get_args(t)
        return f"mapping of {type_str(k)} to {type_str(v)}"
    if t is Any:
        return "any"
    if isinstance(t, type) and issubclass(t, BaseModel) or t is dict:
        return "mapping"
    name = getattr(t, "__name__", str(t))
    return " ".join([name, ", ".join(bounds(t, meta))]).strip()


def flow(value: Any) -> str:
    """A value as YAML flow text (`{kind: mlp}`, `null`, `[200, 200]`)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def default_str(f: FieldInfo) -> str:
    if f.default_factory is not None:
        return f"`{flow(f.default_factory())}`"
    if f.default is PydanticUndefined:
        return "required"
    if isinstance(f.default, BaseModel):
        return "(below)"
    return f"`{flow(f.default)}`"


def plain(text: str, escape: dict[str, str]) -> str:
    """text with `escape` applied outside its code spans (inside them Markdown shows characters as they are)."""
    parts = text.split("`")
    for old, new in escape.items():
        parts = [p if i % 2 else p.replace(old, new) for i, p in enumerate(parts)]
    return "`".join(parts)


def cell(text: str) -> str:
    """Text for one table cell: one line, `<` not read as a tag, `*` not as emphasis, `|` not as a column break."""
    return plain(" ".join(str(text).split()), {"<": "&lt;", "*": "\\*", "|": "\\|"})


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])


def doc(obj: Any) -> str:
    """obj's own docstring (not an inherited one) as Markdown: `<` and `*` escaped outside code (`<name>` is no
    HTML tag, `L*` no emphasis); indented blocks (formulas) stay code blocks. Empty when it has none."""
    raw = obj.__doc__ if isinstance(obj, types.ModuleType) else vars(obj).get("__doc__")
    if not raw:
        return ""
    lines = inspect.cleandoc(raw).splitlines()
    return "\n".join(line if line.startswith("    ") else plain(line, {"<": "&lt;", "*": "\\*"}) for line in lines)
