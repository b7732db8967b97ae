"""The report on fresh runs of the bundled fork study (smoke preset, tracking on): designs found by
design_role, one "L at grok" shared by the engine's derived tau and the report."""
import json
import re

import pytest
import yaml

from analyses import report
from interventions.study.graph import build_graph
from interventions.execution.studies import run_study
from interventions.study.spec import STUDIES_DIR, load_study

RENAMES = {"trunk": "stem", "free": "loose", "clamp_same": "held", "clamp_raised": "pushed",
           "clamp_lowered": "pulled", "logit_matched": "matched_tau"}


def run_and_report(study, tmp_path, name):
    uri = f"sqlite:///{tmp_path / name / 'mlflow.db'}"
    # smoke with budget 3000: every arm groks (the preset's 800 cuts clamp_raised); seconds
    arms = run_study(build_graph(load_study(study, "smoke", ["budget=3000"])), uri=uri, experiment=name,
                     progress=False, log=lambda *_: None)
    js = tmp_path / f"{name}.json"
    assert report.main([name, "--tracking-uri", uri, "--out", str(tmp_path / f"{name}-report"), "--json", str(js)]) == 0
    return arms, json.loads(js.read_text()), (tmp_path / f"{name}-report" / "report.md").read_text()


@pytest.fixture(scope="module")
def renamed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fresh")
    doc = yaml.safe_load((STUDIES_DIR / "fork_study.yaml").read_text())
    for arm in doc["arms"]:   # every arm renamed, references included (from, sweep, target)
        arm["name"] = RENAMES[arm["name"]]
        if "from" in arm:
            arm["from"]["arm"] = RENAMES[arm["from"]["arm"]]
        if isinstance(arm.get("tau"), dict):
            arm["tau"]["sweep"] = [RENAMES[a] for a in arm["tau"]["sweep"]]
            arm["tau"]["target"] = RENAMES[arm["tau"]["target"]]
    for preset in doc["presets"].values():   # and the presets' per-arm overrides
        preset["arms"] = {RENAMES[a]: v for a, v in preset.get("arms", {}).items()}
    (tmp / "renamed.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return run_and_report(str(tmp / "renamed.yaml"), tmp, "renamed")


@pytest.fixture(scope="module")
def named(fork_smoke):
    """The bundled names: the shared smoke run (conftest.fork_smoke, the same settings; what it keeps
    changes no number)."""
    md = (fork_smoke.folder / "report" / "report.md").read_text()
    return fork_smoke.arms, fork_smoke.report, md


def test_renaming_every_arm_of_the_fork_study_gives_the_same_report_numbers(named, renamed):
    (arms_a, res_a, _), (arms_b, res_b, md_b) = named, renamed
    assert set(arms_b) == {RENAMES.get(n.split("_tau")[0], n.split("_tau")[0]) + n[len(n.split("_tau")[0]):]
                           for n in arms_a}
    assert set(res_b) == set(res_a) and "fork" in res_b and "recovery" in res_b
    numbers = lambda rows: [{k: v for k, v in r.items() if isinstance(v, (int, float)) or k == "delays"}  # noqa
                            for r in rows]
    for design in res_a:
        assert numbers(res_b[design]) == numbers(res_a[design]), design
    assert "Retirement: retire: arm" in md_b


def test_the_logit_matched_tau_is_matched_on_the_L_the_report_prints(named):
    arms, res, md = named
    source = arms["logit_matched"]["params"]["tau_source"]
    L_target = float(re.search(r"target=clamp_same L=([0-9.]+),", source).group(1))
    (rec,) = res["recovery"]
    assert rec["L_baseline"] == pytest.approx(L_target, rel=5e-4)   # tau_source prints 4 significant digits
    assert rec["matched"]["tau"] == pytest.approx(arms["logit_matched"]["params"]["tau"])
