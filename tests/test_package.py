"""The package as a user installs it: a wheel (not the checkout) carries every subpackage and data file,
and the CLI works from a folder outside the checkout with nothing but the installed copy importable."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_everything_and_runs_outside_the_checkout(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {str(p.relative_to(ROOT)) for pkg in ("interventions", "tracking", "analyses", "benchmarks")
              for p in (ROOT / pkg).rglob("*") if p.suffix in (".py", ".yaml", ".cpp") and "__pycache__" not in p.parts}
    assert source <= names, sorted(source - names)
    site = tmp_path / "site"
    got = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                         capture_output=True, text=True, timeout=600)
    assert got.returncode == 0, got.stderr[-3000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", "import interventions, sys; print(interventions.__file__)"], cwd=outside,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().startswith(str(site)), r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "interventions.run", "--version"], cwd=outside, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "0.1.0" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "interventions.run", "paper", "--preset", "smoke", "--dry-run"],
                       cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "study transformer" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert not (outside / "mlruns").exists()


def test_the_examples_ship_in_the_package_and_copy_out_without_overwriting_edits(tmp_path):
    from interventions.examples import FILES, copy_to
    mine = tmp_path / "examples" / "my_plugins.py"
    mine.parent.mkdir()
    mine.write_text("# my edits\n")
    copied = copy_to(tmp_path / "examples")
    assert sorted(p.name for p in copied) == sorted(set(FILES) - {"my_plugins.py"})
    assert mine.read_text() == "# my edits\n"
    assert (ROOT / "examples").resolve() == ROOT / "interventions" / "examples"   # the checkout's link
    for name in FILES:
        assert (tmp_path / "examples" / name).exists()
