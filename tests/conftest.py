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
