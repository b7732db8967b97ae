"""The layout holds: the import rules (import-linter's contracts in pyproject.toml: the floors, the layers of
interventions, no cycle) and modules a reader holds in their head."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 300


def test_the_import_rules_hold():
    r = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_no_module_of_the_packages_is_over_300_lines():
    long = {str(p.relative_to(ROOT)): n for pkg in ("interventions", "tracking", "analyses", "benchmarks")
            for p in (ROOT / pkg).rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
