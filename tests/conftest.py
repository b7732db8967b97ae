"""Shared fixtures: the paper's published metrics, throwaway MLflow stores, and the smoke fork study run
uninterrupted through the CLI (the reference that interrupted runs must end identical to)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
CLI_ENV.pop("GROKKING_FAULTS", None)
# The tests' fork study: the smoke preset with clamp_raised cut at 800 steps like the other arms (the preset
# gives it 2000 so that its own report has the fork design; these tests check the store, not the report)
SMOKE = ["fork_study", "--preset", "smoke", "--set", "arms.clamp_raised.budget=800", "--no-progress"]


def smoke_command(db: Path, *extra: str) -> list[str]:
    """`python -m interventions.run fork_study --preset smoke` into the SQLite store `db`."""
    return [sys.executable, "-m", "interventions.run", *SMOKE, "--tracking-uri", f"sqlite:///{db}", *extra]


def run_smoke(db: Path, *extra: str, faults: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """The smoke fork study into `db` (its folder is the working directory); `faults`: GROKKING_FAULTS
    (tracking.faults); check: exit 0 expected."""
    env = {**CLI_ENV, **({"GROKKING_FAULTS": faults} if faults else {})}
    db.parent.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(smoke_command(db, *extra), env=env, cwd=db.parent, capture_output=True, text=True,
                         timeout=300)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def smoke_db(tmp_path_factory) -> Path:
    """An uninterrupted smoke run of fork_study through the CLI; its mlflow.db."""
    db = tmp_path_factory.mktemp("smoke_reference") / "mlflow.db"
    out = run_smoke(db).stdout
    assert "logit_matched" in out and "grokked" in out
    return db


@pytest.fixture(scope="session")
def paper_metrics() -> Path:
    """Folder of the paper's published metrics (env PAPER_METRICS, default ../shared/paper-metrics).

    Outside CI a missing folder skips the test; under CI=true it is a failure.
    """
    path = Path(os.environ.get("PAPER_METRICS", ROOT.parent / "shared" / "paper-metrics"))
    if not path.is_dir():
        missing(f"paper metrics not found at {path} (set PAPER_METRICS)")
    return path


def missing(why: str) -> None:
    """A prerequisite of the test is missing (`why`): outside CI it skips with the reason; under CI=true,
    where every part must be there, it fails."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    """A fresh embedded SQLite store in the test's temporary folder."""
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


@pytest.fixture(scope="session")
def fork_smoke(tmp_path_factory):
    """One training run shared by the report, checkpoint and UI tests: the bundled fork study at its smoke
    preset with budget 3000 (every arm groks; the preset's 800 cuts clamp_raised) and member checkpoints
    kept, tracked into SQLite as experiment fork_study-smoke, then reported (report.md, report.html,
    report.json, the report run). Attributes: uri, experiment, arms (run_study's), folder, report (the JSON),
    said (the lines the study printed)."""
    import json
    from types import SimpleNamespace

    from analyses import report
    from interventions.study.graph import build_graph
    from interventions.execution.studies import run_study
    from interventions.study.spec import load_study
    folder = tmp_path_factory.mktemp("fork_smoke")
    uri, name = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}", "fork_study-smoke"
    study = load_study("fork_study", "smoke", ["budget=3000", "defaults.save.at_grok=true", "defaults.save.final=true"])
    said = []
    arms = run_study(build_graph(study), uri=uri, experiment=name, progress=False, log=said.append)
    js = folder / "report" / "report.json"
    assert report.main([name, "--tracking-uri", uri, "--out", str(folder / "report"), "--json", str(js)]) == 0
    return SimpleNamespace(uri=uri, experiment=name, arms=arms, folder=folder, report=json.loads(js.read_text()),
                           said=said)
