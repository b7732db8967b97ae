"""Suites: named lists of bundled studies run one after another as one command
(`python -m interventions.run paper`); each study keeps its own experiment, snapshots and resume."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError

from interventions.study.graph import Graph, build_graph
from interventions.study.schema import SpecError, Strict
from interventions.study.spec import default_experiment, load_yaml

SUITES_DIR = Path(__file__).parent / "suites"
PRESETS = ("paper", "default", "smoke")


class Entry(Strict):
    """One study of a suite."""
    study: str = Field(description="a bundled study's name or a study file's path")
    presets: dict[str, str] = Field({}, description="suite preset -> the study's preset, where the names differ")


class Suite(Strict):
    """A suite file (interventions/study/suites/<name>.yaml)."""
    suite: str = Field(description="the suite's name")
    studies: list[Entry] = Field(min_length=1, description="the studies, run in this order")


def find_suite(name: str) -> Path | None:
    path = SUITES_DIR / f"{name}.yaml"
    return path if path.is_file() else None


def load_suite(path: Path, preset: str | None, sets: list[str]) -> list[tuple[Graph, str]]:
    """Every study of the suite, validated before anything trains: [(graph, experiment)]."""
    from interventions.study.spec import load_study
    try:
        suite = Suite.model_validate(load_yaml(path))
    except ValidationError as e:
        err = e.errors()[0]
        raise SpecError(path, ".".join(map(str, err["loc"])), err["msg"]) from None
    preset = preset or "paper"
    if preset not in PRESETS:
        raise SpecError(path, "--preset", f"a suite runs at one of {', '.join(PRESETS)} (got {preset!r})")
    out = []
    for e in suite.studies:
        st = load_study(e.study, e.presets.get(preset, preset), sets)
        out.append((build_graph(st), default_experiment(st.study, st.preset)))
    names = [x for _, x in out]
    if len(set(names)) != len(names):
        raise SpecError(path, "studies", f"two entries share an experiment ({names})")
    return out
