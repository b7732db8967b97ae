"""A from-init design end to end (tracking off): w_c derived from the free control, clamps at rho x w_c,
and the logit-matched tau derived from the sweep, trained for real; retirement by arm."""
import statistics

import pytest

from interventions.execution import plan
from interventions.study.derive import levers as resolve_levers
from interventions.study.graph import build_graph
from interventions.execution.studies import run_study
from interventions.study.spec import load_study
from tracking import conventions


@pytest.fixture(scope="module")
def mediation_smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mediation")
    graph = build_graph(load_study("mediation", "smoke"))
    arms = run_study(graph, uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="mediation-smoke",
                     progress=False, tracking=False, log=lambda *_: None)
    return tmp, arms


def test_mediation_smoke_derives_w_c_and_the_logit_matched_tau(mediation_smoke):
    tmp, arms = mediation_smoke
    assert {a["status"] for a in arms.values()} == {"done"}
    # w_c (PAPER.md): median over the control's grokked seeds of the norm at the end of its run
    ctrl = [r for r in arms["ctrl"]["results"] if r["grokked"]]
    w_c = statistics.median(r["weight_norm_final"] for r in ctrl)
    assert arms["base"]["params"]["w_c_at_grok"] == pytest.approx(statistics.median(r["weight_norm_at_grok"]
                                                                                    for r in ctrl))
    # w_c's interval (tracking.conventions.w_c_interval): on the control's arm run, and beside w_c on its users
    s = arms["ctrl"]["summary"]
    assert s["w_c"] == pytest.approx(w_c) and s["w_c_ci_low"] <= w_c <= s["w_c_ci_high"]
    assert s["w_c_ci_low"] < s["w_c_ci_high"]
    base = arms["base"]["params"]
    assert (base["w_c_source"], base["w_c_ci_low"], base["w_c_ci_high"]) == (
        "derived:median_norm_at_grok(ctrl)", s["w_c_ci_low"], s["w_c_ci_high"])
    assert arms["ctrl"]["params"]["w_c_source"] is None   # a free arm holds no w_c
    for name, rho in (("base", 1.0), ("up", 1.15), ("up_tau1.3", 1.15), ("logit_matched", 1.15)):
        prm = arms[name]["params"]
        assert prm["w_c"] == pytest.approx(w_c) and prm["clamp"] == "w_c" and prm["t_int"] == 50
        assert all(r["target"] == pytest.approx(rho * w_c) for r in arms[name]["results"])
    lm = arms["logit_matched"]["params"]
    assert lm["tau_source"].startswith("derived:logit_matched(target=base")
    sweep = sorted(arms[n]["params"]["tau"] for n in ("up", "up_tau1.15", "up_tau1.3", "up_tau1.5", "up_tau1.7"))
    assert sweep[0] < lm["tau"] < sweep[-1]
    # the derived tau does what it is for: logit_matched's L at grok lands near base's
    L = {n: arms[n]["summary"]["logit_scale_at_grok"] for n in ("base", "up", "logit_matched")}
    assert abs(L["logit_matched"] - L["base"]) < 0.25 * abs(L["up"] - L["base"])
    assert not (tmp / "mlflow.db").exists()                 # tracking off: no store
    assert (tmp / "snapshots" / "mediation-smoke" / "state.json").is_file()


def test_a_w_c_given_in_the_study_file_or_by_set_is_marked_given():
    """`--set defaults.levers.w_c=65.85` (the paper's p = 97 value) holds the paper's absolute norms: the clamp
    arms say w_c was given, with no interval."""
    graph = build_graph(load_study("mediation", "smoke", ["defaults.levers.w_c=65.85"]))
    prm = plan.params(graph, "up", resolve_levers(graph, "up", {}, None), None, {})
    assert (prm["w_c"], prm["w_c_source"], prm["w_c_ci_low"], prm["w_c_ci_high"]) == (65.85, "given", None, None)
    assert resolve_levers(graph, "up", {}, None).settings("clamp").target == pytest.approx(1.15 * 65.85)


def test_the_logit_matched_tau_is_derived_from_the_L_the_report_prints(mediation_smoke):
    """One "L at grok": the target's value in tau_source is the arm summary's (seed-mean curve at the
    logged step nearest the median t_grok), which is what the arm run logs and the report reads."""
    _, arms = mediation_smoke
    L = arms["base"]["summary"]["logit_scale_at_grok"]
    assert f"target=base L={L:.4g}," in arms["logit_matched"]["params"]["tau_source"]


def test_retire_arm_keeps_every_seed_training_until_the_last_has_grokked(mediation_smoke):
    """Every member of an arm that grokked in full stops at the same step, its last seed's t_grok, so every
    point of the arm's seed-mean curves is a mean over all of its seeds."""
    _, arms = mediation_smoke
    full = [n for n, a in arms.items() if all(r["grokked"] for r in a["results"])]
    assert {"ctrl", "base"} <= set(full)  # the smoke preset's quick arms grok in full
    for name, arm in arms.items():
        assert arm["params"]["retire"] == "arm"
        res = arm["results"]
        if name in full:
            last = max(r["t_grok"] for r in res)
            assert {r["final_step"] for r in res} == {last}, name
            assert {r["retire_reason"] for r in res} == {"grokked"}, name


def test_retire_member_stops_each_seed_at_its_own_t_grok(tmp_path):
    graph = build_graph(load_study("mediation", "smoke", ["retire=member", "arms.up.sweep.tau=[1.7]"]))
    arms = run_study(graph, uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="m", progress=False,
                     tracking=False, log=lambda *_: None)
    ctrl = arms["ctrl"]["results"]
    assert all(r["final_step"] == r["t_grok"] for r in ctrl if r["grokked"])
    assert len({r["t_grok"] for r in ctrl}) > 1  # seeds grok at different steps: they stop apart
    assert arms["ctrl"]["params"]["retire"] == "member"
    assert arms["base"]["params"]["w_c"] == pytest.approx(conventions.median(r["weight_norm_final"] for r in ctrl))
