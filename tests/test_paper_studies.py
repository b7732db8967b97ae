"""The paper's other experiments as bundled studies (dose law, layer allocation, float64 audit,
no-LayerNorm transformer): each prints its paper-scale graph, runs its smoke preset in seconds, and the
report computes its section from those fresh runs."""
import json

import pytest

from analyses import report
from interventions.study.graph import build_graph
from interventions.execution.persist import snapshot_dir
from interventions.run import main
from interventions.execution.studies import run_study
from interventions.study.spec import load_study
from tracking import conventions

SECTION = {"dose_law": "dose_law", "allocation": "allocation", "precision_audit": "precision",
           "transformer": "recovery"}


@pytest.mark.parametrize("study", SECTION)
def test_the_paper_preset_prints_its_graph(study, capsys):
    assert main([study, "--preset", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"study {study}" in out and "wave 2" in out and "nothing trained" in out


@pytest.fixture(scope="module", params=list(SECTION))
def smoke(request, tmp_path_factory):
    study, tmp = request.param, tmp_path_factory.mktemp(request.param)
    uri, name = f"sqlite:///{tmp / 'mlflow.db'}", f"{request.param}-smoke"
    arms = run_study(build_graph(load_study(study, "smoke")), uri=uri, experiment=name, progress=False,
                     log=lambda *_: None)
    js = tmp / "report.json"
    assert report.main([name, "--tracking-uri", uri, "--out", str(tmp / "report"), "--json", str(js)]) == 0
    state = json.loads((snapshot_dir(uri, name) / "state.json").read_text())
    return study, arms, json.loads(js.read_text()), state


def test_the_smoke_preset_trains_and_the_report_computes_its_section(smoke):
    study, arms, res, _ = smoke
    assert arms["ctrl"]["status"] == "done"
    (row,) = res[SECTION[study]] if study != "precision_audit" else res[SECTION[study]][-1:]
    if study == "dose_law":
        assert row["n"] >= 4 and row["alpha"] > 0 and row["delta_aic"] is not None
    elif study == "allocation":
        assert len(row["gamma"]) >= 2 and row["swing"] >= 1 and len(row["L"]) == len(row["gamma"])
    elif study == "precision_audit":     # identical held norms: both precisions hold rho x the float32 w_c
        assert {row["arm_float32"], row["arm_float64"]} == {"f32_rho1.15", "f64_rho1.15"}
        assert arms["f64_rho1.15"]["params"]["w_c"] == arms["f32_rho1.15"]["params"]["w_c"]
        assert arms["f64_rho1.15"]["params"]["precision"] == "float64"
        assert row["t_grok_float32"] is not None and row["t_grok_float64"] is not None
    else:
        assert row["T0"] is not None and row["T1"] is not None


@pytest.mark.parametrize("smoke", ["allocation"], indirect=True)
def test_allocation_cells_move_norm_from_the_controls_own_shares(smoke):
    _, arms, _, state = smoke
    base = conventions.alloc_base(arms["ctrl"]["results"])
    assert set(base) == {"E", "W1", "W2"}
    for name in ("alloc_gamma-0.3", "alloc_gamma0.3"):
        assert state["levers"][name]["alloc_base"] == base      # the control's shares, not the member's own


def test_the_paper_suite_names_every_study_and_refuses_what_it_cannot_run(capsys):
    assert main(["paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for study in ("mediation", "collapse_grid", "fork_study", *SECTION):
        assert f"study {study} (" in out
    assert "preset paper_mse" in out and "experiment 'mediation-paper_mse'" in out
    assert main(["paper", "--preset", "default", "--dry-run"]) == 0
    assert "experiment 'fork_study';" in capsys.readouterr().out
    assert main(["paper", "--preset", "smoke", "--dry-run"]) == 0      # every study at its own experiment
    assert "experiment 'mediation-smoke_mse'" in capsys.readouterr().out
    assert main(["paper", "--preset", "huge"]) == 2
    assert main(["paper", "--experiment", "mine"]) == 2
    assert "a suite gives each study its own experiment" in capsys.readouterr().err
