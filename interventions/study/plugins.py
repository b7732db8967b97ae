"""Plug-ins a study names (`plugins: [module, ...]`): imported before the study file is validated, so its
names check against the registries they fill; found beside the study file first, then on sys.path.

Each is recorded (module, file, version, a digest of its source): the study run's provenance, and part of
the resume digest, so a changed plug-in is noticed on resume. Installed plug-ins (the entry-point group
`grokking_interventions.plugins`) are loaded by the registry itself and recorded the same way.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path
from types import ModuleType

from interventions import registry
from interventions.study.types import SpecError


def load(names: list, folder: Path, file: str) -> list[dict]:
    """Import each named module (SpecError naming the study file, `plugins[i]` and why, where one fails),
    then the installed ones; [{name, file, version, digest}] of every plug-in module loaded."""
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise SpecError(file, "plugins", f"expected a list of module names, got {names!r}")
    try:
        registry.discover()     # the bundled entries first: their hooks run first
    except registry.PluginError as e:
        raise SpecError(file, "plugins", str(e)) from None
    for i, name in enumerate(names):
        try:
            _import(name, folder)
        except Exception as e:
            raise SpecError(file, f"plugins[{i}]", f"cannot import plug-in {name!r}: {type(e).__name__}: {e} "
                            f"(looked beside the study file, in {folder}, then on sys.path)") from None
    return [{**describe(sys.modules[n]), "listed": n in names}
            for n in dict.fromkeys([*names, *registry.loaded_entry_points()])]


def _import(name: str, folder: Path) -> ModuleType:
    """A module beside the study file is executed afresh from there (an edited plug-in is the one used, and
    its entries replace the earlier ones); any other is imported from sys.path."""
    path = folder / f"{name}.py" if (folder / f"{name}.py").is_file() else folder / name / "__init__.py"
    if not path.is_file():
        return importlib.import_module(name)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))   # its own imports, and a package's submodules, resolve from there
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module            # a pickled job names its classes by this module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def source_files(module: ModuleType) -> list[Path]:
    """The module's source: its file, or every .py file of its package."""
    path = Path(module.__file__)
    return sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]


def describe(module: ModuleType) -> dict:
    """{name, file, source, version, digest} of a plug-in module (source: its file, or its package's folder:
    what Ray ships to the workers); version from `__version__` or its distribution."""
    h = hashlib.sha256()
    for f in source_files(module):
        h.update(f.read_bytes())
    ver = getattr(module, "__version__", None)
    if ver is None:
        dists = packages_distributions().get(module.__name__.partition(".")[0], [])
        try:
            ver = version(dists[0]) if dists else None
        except PackageNotFoundError:
            ver = None
    file = Path(module.__file__).resolve()
    return {"name": module.__name__, "file": str(file), "source": str(file.parent if file.name == "__init__.py" else file),
            "version": str(ver or "none"), "digest": h.hexdigest()[:16]}
