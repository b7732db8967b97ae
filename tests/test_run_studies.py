"""A from-init design end to end (tracking off): w_c derived from the free control, clamps at rho x w_c,
and the logit-matched tau derived from the sweep, trained for real."""
import statistics

import pytest

from interventions.graph import build_graph
from interventions.scheduler import run_study
from interventions.spec import load_study


def test_mediation_smoke_derives_w_c_and_the_logit_matched_tau(tmp_path):
    graph = build_graph(load_study("mediation", "smoke"))
    arms = run_study(graph, uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="mediation-smoke",
                     progress=False, tracking=False, log=lambda *_: None)
    assert {a["status"] for a in arms.values()} == {"done"}
    ctrl = [r for r in arms["ctrl"]["results"] if r["grokked"]]
    w_c = statistics.median(r["weight_norm_at_grok"] for r in ctrl)
    for name, rho in (("base", 1.0), ("up", 1.15), ("up_tau1.3", 1.15), ("logit_matched", 1.15)):
        prm = arms[name]["params"]
        assert prm["w_c"] == pytest.approx(w_c) and prm["clamp"] == "w_c" and prm["t_int"] == 50
        assert all(r["target"] == pytest.approx(rho * w_c) for r in arms[name]["results"])
    lm = arms["logit_matched"]["params"]
    assert lm["tau_source"].startswith("derived:logit_matched(target=base")
    sweep = sorted(arms[n]["params"]["tau"] for n in ("up", "up_tau1.15", "up_tau1.3", "up_tau1.5", "up_tau1.7"))
    assert sweep[0] < lm["tau"] < sweep[-1]
    # the derived tau does what it is for: logit_matched's logit scale at grok lands near base's
    L = {n: statistics.median(r["logit_scale_at_grok"] for r in arms[n]["results"] if r["grokked"])
         for n in ("base", "up", "logit_matched")}
    assert abs(L["logit_matched"] - L["base"]) < 0.25 * abs(L["up"] - L["base"])
    assert not (tmp_path / "mlflow.db").exists()                 # tracking off: no store
    assert (tmp_path / "snapshots" / "mediation-smoke" / "state.json").is_file()
