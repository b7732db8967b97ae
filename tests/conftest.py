"""Shared fixtures: the paper's published metrics and throwaway MLflow stores."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def paper_metrics() -> Path:
    """Folder of the paper's published metrics (env PAPER_METRICS, default ../shared/paper-metrics).

    Outside CI a missing folder skips the test; under CI=true it is a failure.
    """
    path = Path(os.environ.get("PAPER_METRICS", ROOT.parent / "shared" / "paper-metrics"))
    if not path.is_dir():
        msg = f"paper metrics not found at {path} (set PAPER_METRICS)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    """A fresh embedded SQLite store in the test's temporary folder."""
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


@pytest.fixture(scope="session")
def fork_smoke(tmp_path_factory):
    """One training run shared by the report, checkpoint and UI tests: the bundled fork study at its smoke
    preset with budget 3000 (every arm groks; the preset's 800 cuts clamp_raised) and member checkpoints
    kept, tracked into SQLite as experiment fork_study-smoke, then reported (report.md, report.html,
    report.json, the report run). Attributes: uri, experiment, arms (run_study's), folder, report (the JSON)."""
    import json
    from types import SimpleNamespace

    from analyses import report
    from interventions.graph import build_graph
    from interventions.runner import run_study
    from interventions.spec import load_study
    folder = tmp_path_factory.mktemp("fork_smoke")
    uri, name = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}", "fork_study-smoke"
    study = load_study("fork_study", "smoke", ["budget=3000", "defaults.save.at_grok=true", "defaults.save.final=true"])
    arms = run_study(build_graph(study), uri=uri, experiment=name, progress=False, log=lambda *_: None)
    js = folder / "report" / "report.json"
    assert report.main([name, "--tracking-uri", uri, "--out", str(folder / "report"), "--json", str(js)]) == 0
    return SimpleNamespace(uri=uri, experiment=name, arms=arms, folder=folder, report=json.loads(js.read_text()))
