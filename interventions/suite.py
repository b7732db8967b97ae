"""Suites: named lists of bundled studies run one after another as one command
(`python -m interventions.run paper`); each study keeps its own experiment, snapshots and resume."""
from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field, ValidationError

from .graph import Graph, build_graph
from .schema import SpecError, Strict
from .spec import load_yaml

SUITES_DIR = Path(__file__).parent / "suites"
PRESETS = ("paper", "default", "smoke")


class Entry(Strict):
    study: str
    presets: dict[str, str] = {}     # suite preset -> the study's preset, where the names differ


class Suite(Strict):
    suite: str
    studies: list[Entry] = Field(min_length=1)


def find_suite(name: str) -> Path | None:
    path = SUITES_DIR / f"{name}.yaml"
    return path if path.is_file() else None


def load_suite(path: Path, preset: str | None, sets: list[str]) -> list[tuple[Graph, str]]:
    """Every study of the suite, validated before anything trains: [(graph, experiment)]."""
    from .run import default_experiment
    from .spec import load_study
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


def run_suite(studies: list[tuple[Graph, str]], *, uri: str, device: str, fresh: bool, progress: bool,
              summary: bool = True, executor=None, snapshots: str | None = None,
              log=print) -> list[tuple[str, str, float]]:
    """Run (or resume, or just report) each study in turn; [(study, experiment, seconds)]."""
    from .runner import run_study
    done = []
    for graph, experiment in studies:
        if summary:
            log(f"== {graph.study.study} (preset {graph.study.preset}) -> experiment {experiment!r}")
        t0 = time.perf_counter()
        run_study(graph, uri=uri, experiment=experiment, device=device, fresh=fresh, progress=progress, log=log,
                  executor=executor, snapshots=snapshots)
        done.append((graph.study.study, experiment, time.perf_counter() - t0))
    if summary:
        log("suite: " + "; ".join(f"{x} {s:.0f} s" for _, x, s in done) + f"; total {sum(s for *_, s in done):.0f} s")
    return done
