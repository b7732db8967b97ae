"""What the README and docs/ show runs as shown.

- Every ```python block of README.md and docs/*.md runs, a page's blocks in order in one fresh interpreter
  (they build on each other, as in a notebook), in an empty temporary folder with MLFLOW_TRACKING_URI in it.
  A block whose previous non-blank line is `<!-- not run: <reason> -->` is skipped.
- The tutorial's study, examples/annotated_study.yaml, runs as docs/tutorial.md says: --dry-run, then
  --preset smoke through the CLI into the default store under the working folder, then its report.
- The README's short study is the annotated file without its comments.
"""
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import CLI_ENV, ROOT

ANNOTATED = ROOT / "examples" / "annotated_study.yaml"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(\S.*?)\s*-->$")


def code_blocks(text: str, lang: str) -> list[tuple[int, str, str | None]]:
    """(first line number of the code, code, the not-run reason or None) of every ```lang block."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        j = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("```"))
        if m.group(1) == lang:
            before = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            why = NOT_RUN.match(before)
            out.append((i + 2, "\n".join(lines[i + 1:j]) + "\n", why.group(1) if why else None))
        i = j + 1
    return out


# Runs a page's blocks in order in one namespace; each compiled at its own line, so that a traceback names
# the page and the line of the snippet that failed.
DRIVER = """\
import json, sys
blocks = json.load(open(sys.argv[1]))
scope = {"__name__": "__main__"}
for page, line, code in blocks:
    exec(compile("\\n" * (line - 1) + code, page, "exec"), scope)
"""


def run_blocks(page: str, blocks: list[tuple[int, str]], folder: Path) -> subprocess.CompletedProcess:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".driver.py").write_text(DRIVER)
    (folder / ".blocks.json").write_text(json.dumps([(page, line, code) for line, code in blocks]))
    env = {**CLI_ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}",
           "TMPDIR": str(folder)}   # iv.run_study's temporary store lands in the test's folder too
    return subprocess.run([sys.executable, ".driver.py", ".blocks.json"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)


def _snippet_pages() -> list[Path]:
    return [p for p in PAGES if any(why is None for _, _, why in code_blocks(p.read_text(), "python"))]


def test_the_pages_with_python_snippets_include_the_api_and_engine_and_the_readmes_is_the_apis():
    names = {p.relative_to(ROOT).as_posix() for p in _snippet_pages()}
    assert {"docs/api.md", "docs/engine.md", "docs/extending.md"} <= names, names
    (readme,) = code_blocks((ROOT / "README.md").read_text(), "python")   # run once, as docs/api.md's first
    api = code_blocks((ROOT / "docs" / "api.md").read_text(), "python")[0]
    assert readme[1] == api[1] and api[2] is None


@pytest.mark.parametrize("page", _snippet_pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_python_snippet_of_a_page_runs(page, tmp_path):
    name = page.relative_to(ROOT).as_posix()
    blocks = code_blocks(page.read_text(), "python")
    for line, _, why in blocks:
        assert why is None or len(why) > 10, f"{name}:{line}: say why the snippet is not run"
    out = run_blocks(name, [(line, code) for line, code, why in blocks if why is None], tmp_path)
    assert out.returncode == 0, f"{name}: a snippet failed\n{out.stderr[-4000:]}"


def test_a_broken_snippet_fails_and_a_not_run_one_is_skipped(tmp_path):
    page = textwrap.dedent("""\
        ```python
        x = 1
        ```

        <!-- not run: needs a GPU, which the test machine does not have -->
        ```python
        raise SystemExit("a not-run block ran")
        ```

        ```python
        assert x == 2, "the broken snippet"
        ```
        """)
    blocks = code_blocks(page, "python")
    assert [why is None for _, _, why in blocks] == [True, False, True]
    out = run_blocks("page.md", [(line, code) for line, code, why in blocks if why is None], tmp_path)
    assert out.returncode != 0 and "the broken snippet" in out.stderr and 'File "page.md", line 11' in out.stderr
    assert "a not-run block ran" not in out.stderr


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in CLI_ENV.items() if k != "MLFLOW_TRACKING_URI"}   # the default store, under cwd
    return subprocess.run([sys.executable, "-m", "interventions.run", str(ANNOTATED), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_annotated_study_dry_run_lists_its_arms_and_writes_nothing(tmp_path):
    out = _cli("--preset", "smoke", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for arm, role in (("ctrl", "control"), ("base", "baseline"), ("up", "norm_up"), ("up_tau1.3", "tau_sweep"),
                      ("up_tau1.7", "tau_sweep"), ("logit_matched", "logit_matched")):
        assert re.search(rf"^\s+{re.escape(arm)}\s+{role}\s", out.stdout, re.M), (arm, out.stdout)
    assert "wave 3: logit_matched" in out.stdout and "experiment 'annotated-smoke'" in out.stdout
    assert "dry run: nothing trained, nothing written" in out.stdout
    assert list(tmp_path.iterdir()) == []
    bad = _cli("--preset", "smoke", "--dry-run", "--set", "arms.up.rho=0", cwd=tmp_path)
    assert bad.returncode == 2 and "arms.up.rho: must be greater than 0 (got 0)" in bad.stderr   # docs/tutorial.md


def test_the_annotated_study_runs_at_its_smoke_preset_and_its_report_finds_the_mediation_design(tmp_path,
                                                                                                  monkeypatch):
    from analyses import report
    out = _cli("--preset", "smoke", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    rows = [line.split() for line in out.stdout.splitlines() if re.match(r"^\S+\s+\d+/\d+\s", line)]
    table = {row[0]: row for row in rows}                              # arm grokked t_mem t_grok ... tau
    assert set(table) == {"ctrl", "base", "up", "up_tau1.3", "up_tau1.7", "logit_matched"}, out.stdout
    assert all(row[1] == "2/2" for row in table.values()), out.stdout   # every arm groks in both seeds
    assert 1.0 < float(table["logit_matched"][-1]) < 1.7               # the derived tau, inside the sweep
    monkeypatch.chdir(tmp_path)
    assert report.main(["annotated-smoke"]) == 0
    made = json.loads((tmp_path / "reports" / "annotated-smoke" / "report.json").read_text())
    rec = made["recovery"][0]
    assert (rec["baseline_arm"], rec["norm_up_arm"], rec["matched"]["arm"]) == ("base", "up", "logit_matched")
    assert rec["T1"] > rec["T0"] and rec["T0"] <= rec["T2_realized"] < rec["T1"]
    assert made["memorization_control"] and made["mediation"]


def _without_descriptions(x):
    if isinstance(x, dict):
        return {k: _without_descriptions(v) for k, v in x.items() if k != "description"}
    if isinstance(x, list):
        return [_without_descriptions(v) for v in x]
    return x


def test_the_readme_study_is_the_annotated_example_without_its_comments():
    from interventions.study.spec import load_study
    readme = code_blocks((ROOT / "README.md").read_text(), "yaml")
    assert len(readme) == 1
    doc = yaml.safe_load(readme[0][1])
    for preset in (None, "smoke"):
        short, annotated = (_without_descriptions(load_study(s, preset).resolved()) for s in (doc, str(ANNOTATED)))
        assert short == annotated, preset


def test_every_command_in_the_readme_is_one_that_ci_runs():
    """The README's shell commands: `make run`, `make test` (CI's own command), `make docs` (the docs build is a
    test), `pip install` of the package (CI installs the built wheel), and the commands .ci/installed runs
    from a fresh environment outside the checkout, as written there."""
    ci = [x.replace('"', "") for x in (ROOT / ".ci" / "installed").read_text().splitlines()
          if x.strip() and not x.lstrip().startswith(("#", "step "))]
    commands = [c.split("#")[0].strip() for _, code, _ in code_blocks((ROOT / "README.md").read_text(), "bash")
                for c in code.splitlines()]
    assert "python -m interventions.run fork_study --preset smoke" in commands
    for cmd in filter(None, commands):
        if cmd in ("make run", "make test", "make docs") or cmd.startswith("pip install "):
            continue
        as_ci = cmd.replace("../shared/paper-metrics", "$PAPER_METRICS")
        whole = re.compile(rf"(^|\s){re.escape(as_ci)}($|\s)")     # the command, not a longer one
        assert any(whole.search(line) for line in ci), f"README command {cmd!r} is not run by .ci/installed"
