"""The documentation site (`make docs`): the reference pages are generated from the code at build time
(docs/_gen/refdocs), so every study-file key and every registered plug-in must describe itself, the pages
must name all of them, and the site builds with warnings (a broken link or anchor, a page left out of the
nav) as errors."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_refdocs():
    """docs/_gen/refdocs as MkDocs' hook imports it, without putting docs/_gen on sys.path for every test."""
    init = ROOT / "docs" / "_gen" / "refdocs" / "__init__.py"
    spec = importlib.util.spec_from_file_location("refdocs", init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["refdocs"] = module
    spec.loader.exec_module(module)
    return module


refdocs = _load_refdocs()
study_file, plugins, cli = refdocs.study_file, refdocs.plugins, refdocs.cli


def _sections(page: str) -> dict[str, set[str]]:
    """Heading id -> the keys in the first column of its tables (`| `key` | ...`)."""
    out, current = {}, None
    for line in page.splitlines():
        if line.startswith("#") and "{#" in line:
            current = line.rsplit("{#", 1)[1].rstrip("}").strip()
            out[current] = set()
        elif line.startswith("| `") and current is not None:
            out[current].add(line[3:line.index("`", 3)])
    return out


def test_every_study_file_key_has_a_description():
    fields = [*study_file.study_fields(), *study_file.extra_fields()]
    missing = [f"{path or '(top level)'}: {key}" for path, key, f in fields if not (f.description or "").strip()]
    assert len(fields) > 50
    assert not missing, "study-file keys without a description (Field(description=...)): " + "; ".join(missing)


def test_every_registered_name_has_a_docstring_and_every_setting_a_description():
    missing = []
    for kind, name, entry in plugins.entries():
        if not (vars(entry).get("__doc__") or "").strip():
            missing.append(f"{kind} {name} ({entry.__module__}.{entry.__qualname__}): no docstring of its own")
        missing += [f"{kind} {name}: setting {k}" for k, f in plugins.settings(entry).items()
                    if not (f.description or "").strip()]
    assert not missing, "plug-ins that do not describe themselves: " + "; ".join(missing)


def test_the_study_file_page_lists_every_key_in_its_section_and_every_registered_name():
    page = study_file.page()
    sections = _sections(page)
    absent = [f"{path or '(top level)'}: {key}" for path, key, _ in study_file.study_fields()
              if key not in sections.get(study_file.anchor(path), set())]
    absent += [f"{model}: {key}" for model, key, _ in study_file.extra_fields() if f"| `{key}` |" not in page]
    absent += [f"{kind} {name}" for kind, name, _ in plugins.entries()
               if f"[`{name}`](plugins.md#{kind}-{name})" not in page]
    assert not absent, "missing from reference/study-file.md: " + "; ".join(absent)


def test_the_plugins_page_has_a_section_per_registered_name_with_its_settings():
    page = plugins.page()
    sections = _sections(page)
    absent = []
    for kind, name, entry in plugins.entries():
        if f"{kind}-{name}" not in sections:
            absent.append(f"{kind} {name}")
        listed = sections.get(f"{kind}-{name}", set())
        absent += [f"{kind} {name}: {k}" for k in plugins.settings(entry) if k not in listed]
    assert not absent, "missing from reference/plugins.md: " + "; ".join(absent)


def test_the_cli_page_holds_each_entry_points_help():
    page = cli.page()
    for module in ("interventions.run", "analyses.report", "tracking.import_npz", "tracking.server"):
        assert f"usage: python -m {module}" in page, module
    assert "--preset" in page and "--tracking-uri" in page


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(site)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for page in ("reference/study-file", "reference/plugins", "reference/cli"):
        assert (site / page / "index.html").is_file(), page
    assert not (ROOT / "docs" / "reference").exists(), "the reference pages are generated, not committed"
