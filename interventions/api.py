"""The Python API, for notebooks: load or build a study, run it into a store, read it back as DataFrames.

    import interventions as iv
    study = iv.load_study("fork_study", preset="smoke", set={"budget": 3000})   # a name, a YAML path or a dict
    result = iv.run_study(study)           # into a new temporary store unless tracking_uri= is given
    result.members()                       # one row per member run: params and summaries
    result.arms()                          # one row per arm run: seed-median summaries
    result.curves("test/acc")              # long form: arm, seed, step, value
    result.report()                        # the report (analyses.report): {design: rows}, files in result.folder

Everything here is what the CLI does (`python -m interventions.run`, `python -m analyses.report`), with
the same store, resume and checks; a study that is already in the store is read, not trained again.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from interventions.study.graph import build_graph
from interventions.study.spec import default_experiment
from interventions.study.spec import load_study as _load
from interventions.study.schema import StudyBase


def load_study(study: str | Path | dict, preset: str | None = None, set: dict | None = None) -> StudyBase:
    """A validated study: a bundled name (`fork_study`), a YAML path, or the study document as a dict;
    `preset` as the CLI's --preset; `set` as its --set items ({"defaults.task.p": 31, "budget": 3000})."""
    return _load(study, preset, [f"{k}={v}" for k, v in (set or {}).items()])


@dataclass
class Result:
    """A study's runs in a store: `uri` (the tracking URI), `experiment`, `folder` (where the store and
    the report's files are)."""
    uri: str
    experiment: str
    folder: Path

    def members(self) -> pd.DataFrame:
        from tracking.query import load_members
        return load_members(self.experiment, self.uri)

    def arms(self) -> pd.DataFrame:
        from tracking.query import load_arms
        return load_arms(self.experiment, self.uri)

    def curves(self, *keys: str) -> pd.DataFrame:
        """Member curves (all keys if none given) in long form: arm, seed, key, step, value."""
        from tracking.query import load_curves
        m = self.members()
        c = load_curves(list(m["run_id"]), list(keys) or None, self.uri)
        return c.merge(m[["run_id", "arm", "seed"]], on="run_id")[["arm", "seed", "key", "step", "value"]]

    def report(self, out: str | Path | None = None) -> dict:
        """analyses.report on this experiment: {"results": {design: rows}, "notes": [...], "files": [...]}."""
        from analyses.report import make_report   # the one place interventions reads analyses (docs/extending.md)
        out = Path(out) if out is not None else self.folder / "report"
        return make_report(self.experiment, self.uri, out, out / "report.json")


def run_study(study: StudyBase, tracking_uri: str | None = None, experiment: str | None = None, *, device: str = "cpu",
        fresh: bool = False, progress: bool = False, executor=None) -> Result:
    """Run (or resume, or just read) `study` into `tracking_uri`, by default a new temporary SQLite store
    (its folder is result.folder: delete it when done). Raises what the CLI reports with exit 2 or 1."""
    from interventions.execution.studies import run_study
    from tracking.store import check_uri, resolve_uri
    if tracking_uri is None:
        folder = Path(tempfile.mkdtemp(prefix="interventions-"))
        uri = f"sqlite:///{folder / 'mlflow.db'}"
    else:
        uri = resolve_uri(tracking_uri)
        folder = Path(uri.split("sqlite:///", 1)[1]).parent if uri.startswith("sqlite:///") else Path.cwd()
    check_uri(uri)
    experiment = experiment or default_experiment(study.study, study.preset)
    run_study(build_graph(study), uri=uri, experiment=experiment, device=device, fresh=fresh, progress=progress,
              log=lambda *_: None, executor=executor)
    return Result(uri, experiment, folder)
