"""Study files: YAML -> a validated Study (schema.models()), with the preset and `--set` overrides applied to
the raw document *before* validation, so every error names the file, the key path and the reason. The
plug-ins the file names are imported first (study.plugins): validation checks names against the
registries they fill."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from interventions.registry import LOSSES, MODELS, OPTIMIZERS
from interventions.study import plugins
from interventions.study.schema import StudyBase as Study
from interventions.study.schema import models
from interventions.study.types import UNION_TAGS, SpecError

__all__ = ["STUDIES_DIR", "SpecError", "Study", "find_study", "load_study", "parse_set"]

STUDIES_DIR = Path(__file__).parent / "studies"
DEFAULT_PRESET = "default"  # applied when the file has it and no --preset is given


# ---------------------------------------------------------------- loading
class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (PyYAML silently keeps the last)."""


def _construct_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            m = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {m.line + 1}, column {m.column + 1})", m)
        seen[key] = True
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def find_study(study: str | Path) -> Path:
    """A bundled study name (`fork_study`) or a path to a YAML file."""
    path = Path(study)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SpecError(path, "", "no such study file")
        return path
    bundled = STUDIES_DIR / f"{study}.yaml"
    if bundled.is_file():
        return bundled
    names = sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))
    raise SpecError(study, "", f"no such study file or bundled study (bundled: {', '.join(names)})")


def load_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(path, "", f"cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:   # a binary file passed by mistake
        raise SpecError(path, "", f"not a text (UTF-8) file: byte 0x{e.object[e.start]:02x} at offset "
                                  f"{e.start}") from None
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
        reason = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
        raise SpecError(path, where, f"malformed YAML: {reason or e}") from None
    if not isinstance(doc, dict):
        raise SpecError(path, "", f"expected a mapping at the top level, got {type(doc).__name__}")
    return doc


def _merge(base: Any, over: Any, file: str, path: str) -> Any:
    """Deep merge; a list of named mappings (arms) is merged by name from a mapping keyed by name."""
    if isinstance(over, dict) and isinstance(base, list):
        out = copy.deepcopy(base)
        for name, sub in over.items():
            idx = _named_index(out, name)
            if idx is None:
                raise SpecError(file, f"{path}.{name}", f"no arm named {name!r} to override "
                                f"(arms: {', '.join(str(a.get('name')) for a in out if isinstance(a, dict))})")
            out[idx] = _merge(out[idx], sub, file, f"{path}.{name}")
        return out
    if isinstance(over, dict) and isinstance(base, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v, file, f"{path}.{k}" if path else str(k)) if k in base else v
        return out
    return copy.deepcopy(over)


def _named_index(items: list, name: str) -> int | None:
    for i, a in enumerate(items):
        if isinstance(a, dict) and a.get("name") == name:
            return i
    return None


def parse_set(item: str) -> tuple[str, Any]:
    """`key.path=value`; the value is read as YAML (numbers, lists, booleans)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise SpecError("--set", item, "expected KEY=VALUE with a dotted KEY (e.g. defaults.task.p=31)")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else value
    except yaml.YAMLError:
        return key.strip(), value


def apply_set(doc: dict, key: str, value: Any, file: str) -> dict:
    """Set one dotted key. `arms.<name>.<field>` addresses an arm by name; a key whose first part is not a
    top-level key but a `defaults` key is taken under `defaults` (`task.p=31` == `defaults.task.p=31`)."""
    parts = key.split(".")
    schema = models()
    if parts[0] not in doc and parts[0] not in schema.Study.model_fields and parts[0] in schema.Defaults.model_fields:
        parts = ["defaults"] + parts
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return _merge(doc, nested, file, "")


def load_study(study: str | Path | dict, preset: str | None = None, sets: list[str] | tuple = ()) -> Study:
    """Read (a bundled name, a YAML path, or the document itself as a dict), overlay the preset (default:
    `default` if the file has one) and the --set items, validate."""
    if isinstance(study, dict):
        doc, file, folder = copy.deepcopy(study), "<study dict>", Path.cwd()
    else:
        path = find_study(study)
        doc, file, folder = load_yaml(path), str(path), path.parent.resolve()
    presets = doc.get("presets") or {}
    if not isinstance(presets, dict):
        raise SpecError(file, "presets", "expected a mapping of preset name -> overrides")
    name = preset if preset is not None else (DEFAULT_PRESET if DEFAULT_PRESET in presets else None)
    if name is not None:
        if name not in presets:
            raise SpecError(file, f"presets.{name}",
                            f"no such preset (presets: {', '.join(presets) or 'none'})")
        over = presets[name] or {}
        if not isinstance(over, dict) or "presets" in over:
            raise SpecError(file, f"presets.{name}", "a preset is a mapping of overrides (not presets)")
        doc = _merge(doc, over, file, "")
    info = plugins.load(doc.get("plugins") or [], folder, file)
    for item in sets:
        key, value = parse_set(item)
        doc = apply_set(doc, key, value, file + f" (--set {item})")
    try:
        st = models().Study.model_validate(doc)
    except ValidationError as e:
        raise _spec_error(file, doc, e, sets) from None
    st.source, st.preset, st.sets, st.plugin_info = file, name, list(sets), info
    return st


def _spec_error(file: str, doc: dict, err: ValidationError, sets) -> SpecError:
    e = err.errors()[0]
    loc = _plain_loc(e["loc"])
    path = key_path(doc, loc)
    reason = e["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    if e["type"] == "union_tag_invalid":   # an unknown model, optimizer or loss: say which are registered
        what = next((str(x) for x in reversed(loc) if isinstance(x, str)), "kind")
        reason = f"unknown {what} {e['ctx']['tag']!r} (registered: {e['ctx']['expected_tags']})"
        path = key_path(doc, [*loc, "kind"]) if isinstance(_at(doc, loc), dict) else path
    elif e["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        reason = "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    elif e["type"] not in ("missing", "value_error") and "input" in e and not isinstance(e["input"], (dict, list)):
        reason += f" (got {e['input']!r})"
    if sets:
        file += " with --set " + " ".join(sets)
    return SpecError(file, path, reason)


def _plain_loc(loc) -> list:
    """pydantic's error location without the union tags it adds (`number`, `derived`, the registered name
    after `model`, `optimizer`, `loss`)."""
    out, kinds = [], {"model": MODELS, "optimizer": OPTIMIZERS, "loss": LOSSES}
    for x in loc:
        if x in UNION_TAGS or str(x).startswith("function-"):
            continue
        if out and out[-1] in kinds and x in kinds[out[-1]]:
            continue
        out.append(x)
    return out


def key_path(doc: dict, loc: list) -> str:
    """('arms', 2, 'tau') -> 'arms.clamp_raised.tau' (arms named where the name is known)."""
    out, node = [], doc
    for x in loc:
        if isinstance(x, int):
            name = node[x].get("name") if isinstance(node, list) and x < len(node) and \
                isinstance(node[x], dict) else None
            out.append(str(name) if isinstance(name, str) else f"[{x}]")
        else:
            out.append(str(x))
        try:
            node = node[x]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(out).replace(".[", "[")


def _at(doc: Any, loc: list) -> Any:
    for x in loc:
        try:
            doc = doc[x]
        except (KeyError, IndexError, TypeError):
            return None
    return doc


def _allowed_keys(loc: list) -> list[str]:
    model: Any = models().Study
    for x in loc:
        if isinstance(x, int):
            continue
        field = model.model_fields.get(x) or next(
            (f for f in model.model_fields.values() if f.alias == x), None)
        if field is None:
            return []
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type)]
        cands = [a for a in [ann, *args] if isinstance(a, type) and issubclass(a, BaseModel)]
        if not cands:
            inner = [a for a in getattr(ann, "__args__", ())
                     for a in getattr(a, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
            cands = inner
        if not cands:
            return []
        model = cands[0]
    return [f.alias or k for k, f in model.model_fields.items()
            if k not in ("source", "preset", "sets", "plugin_info")]


def default_experiment(study_name: str, preset: str | None) -> str:
    """The MLflow experiment of a study run: its name, or <name>-<preset> for presets other than 'default'."""
    return study_name if preset in (None, "default") else f"{study_name}-{preset}"
