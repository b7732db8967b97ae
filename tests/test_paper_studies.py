"""The paper's other experiments as bundled studies (dose law, layer allocation, float64 audit,
no-LayerNorm transformer): each prints its paper-scale graph, runs its smoke preset in seconds, and the
report computes its section from those fresh runs."""
import json
import math
import statistics

import numpy as np

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
    return study, arms, json.loads(js.read_text()), state, uri


def test_the_smoke_preset_trains_and_the_report_computes_its_section(smoke):
    study, arms, res, *_ = smoke
    assert arms["ctrl"]["status"] == "done"
    (row,) = res[SECTION[study]] if study != "precision_audit" else res[SECTION[study]][-1:]
    if study == "dose_law":
        assert row["n"] >= 4 and row["alpha"] > 0 and row["delta_aic"] is not None
    elif study == "allocation":      # its value: test_the_allocation_swing_is_...
        assert len(row["gamma"]) >= 2 and len(row["L"]) == len(row["gamma"])
    elif study == "precision_audit":     # identical held norms: both precisions hold rho x the float32 w_c
        assert {row["arm_float32"], row["arm_float64"]} == {"f32_rho1.15", "f64_rho1.15"}
        assert arms["f64_rho1.15"]["params"]["w_c"] == arms["f32_rho1.15"]["params"]["w_c"]
        assert arms["f64_rho1.15"]["params"]["precision"] == "float64"
        assert row["t_grok_float32"] is not None and row["t_grok_float64"] is not None
    else:                            # its values: test_the_transformer_smoke_recovery_...
        assert row["T0"] is not None and row["T1"] is not None


def grokked_median(arm: dict) -> float | None:
    """The cell's median t_grok over its grokked seeds when a majority grokked (PAPER.md), from the
    engine's own member results (not the store or the report's code)."""
    t = [r["t_grok"] for r in arm["results"] if r["grokked"] and not r["diverged"]]
    return statistics.median(t) if 2 * len(t) > len(arm["results"]) else None


@pytest.mark.parametrize("smoke", ["allocation"], indirect=True)
def test_the_allocation_swing_is_max_over_min_median_t_grok_and_readout_heavy_cells_grok_late(smoke):
    """The swing (analyses/allocation.py) is max / min, over the gamma cells that grok in a majority of
    seeds, of their median t_grok: recomputed here from the members' results, cell by cell in gamma order.
    The smoke run's sign: norm moved into the readout (gamma > 0) slows grokking; the gamma 0.6 cell does
    not grok in a majority within the budget, while every cell at gamma <= 0 does."""
    _, arms, res, *_ = smoke
    (row,) = res["allocation"]
    cells = {a: v for a, v in arms.items() if v["params"]["design_role"] == "alloc_cell"}
    assert sorted(v["params"]["gamma"] for v in cells.values()) == [-0.6, -0.3, 0.0, 0.3, 0.6]
    t = {v["params"]["gamma"]: grokked_median(v) for v in cells.values()}
    counted = sorted(g for g, m in t.items() if m is not None)
    assert row["gamma"] == counted and row["t_grok"] == [t[g] for g in counted]
    assert sorted(row["excluded"]) == sorted(a for a, v in cells.items() if t[v["params"]["gamma"]] is None)
    assert row["swing"] == pytest.approx(max(row["t_grok"]) / min(row["t_grok"]), rel=1e-12)
    assert row["swing"] > 1                    # the cells differ: moving norm between layers moves t_grok
    assert {-0.6, -0.3, 0.0} <= set(counted) and 0.6 not in counted


@pytest.mark.parametrize("smoke", ["transformer"], indirect=True)
def test_the_transformer_smoke_recovery_is_computed_from_its_cells_and_lies_in_0_1(smoke):
    """The recovery design on the no-LayerNorm transformer (analyses/recovery.py), checked against the
    engine's member results: T0 and T1 are base's and up's median t_grok, and the norm raised by 1.15
    delays grokking (T1 > T0); T2 is linear in L at grok between the two sweep cells whose L bracket the
    baseline's, and recovery = (T1 - T2) / (T1 - T0) lies in [0, 1] because those cells' T lie between
    T0 and T1 (a temperature takes back part of the norm's delay, here not all of it), inside its CI.
    The logit-matched arm's derived tau lies strictly between the bracketing sweep taus."""
    _, arms, res, *_ = smoke
    (row,) = res["recovery"]
    T0, T1 = grokked_median(arms["base"]), grokked_median(arms["up"])
    assert (row["T0"], row["T1"]) == (T0, T1) and T1 > T0
    sweep = sorted(row["sweep"], key=lambda c: c["L"])
    lo, hi = next((a, b) for a, b in zip(sweep, sweep[1:]) if a["L"] <= row["L_baseline"] <= b["L"])
    assert row["bracket_tau"] == sorted([lo["tau"], hi["tau"]])
    for cell in (lo, hi):
        assert cell["T"] == grokked_median(arms[cell["arm"]]) and T0 <= cell["T"] <= T1, cell
    T2 = lo["T"] + (row["L_baseline"] - lo["L"]) / (hi["L"] - lo["L"]) * (hi["T"] - lo["T"])
    assert row["T2_interpolated"] == pytest.approx(T2, rel=1e-9)
    assert row["estimate"] == pytest.approx((T1 - T2) / (T1 - T0), rel=1e-9)
    assert 0 <= row["estimate"] <= 1
    assert row["ci_low"] - 1e-9 <= row["estimate"] <= row["ci_high"] + 1e-9
    tau = arms["logit_matched"]["params"]["tau"]
    assert row["bracket_tau"][0] < tau < row["bracket_tau"][1]
    assert (row["realized_estimate"] is None) == (grokked_median(arms["logit_matched"]) is None)


@pytest.mark.parametrize("smoke", ["allocation"], indirect=True)
def test_allocation_cells_move_norm_from_the_controls_own_shares(smoke):
    _, arms, _, state, _ = smoke
    base = conventions.alloc_base(arms["ctrl"]["results"])
    assert set(base) == {"E", "W1", "W2"}
    for name in ("alloc_gamma-0.3", "alloc_gamma0.3"):
        assert state["levers"][name]["alloc_base"] == base      # the control's shares, not the member's own


def release_npz(folder, p: int, w_c: float, rhos, t_grok) -> None:
    """A synthetic release in the paper's format: dose cells at rho x w_c with the given median t_grok."""
    folder.mkdir(parents=True, exist_ok=True)
    for rho, t in zip(rhos, t_grok):
        np.savez(folder / f"mlp_ce_full_p{p}_clamp_rho{rho:.2f}.npz", p=p, arm="clamp", rho=rho, t_int=50,
                 wc_used=w_c, max_steps=5000, loss="ce", arch="mlp", alpha=0.7, lam=3.0, lr=1e-2,
                 T_mem_per_seed=np.array([75, 75]), T_grok_per_seed=np.array([t, t]),
                 wn_at_grok=np.full(2, rho * w_c, np.float32))


@pytest.mark.parametrize("smoke", ["dose_law"], indirect=True)
def test_fresh_clamped_cells_are_compared_with_a_release_dose_law_at_their_held_norm(smoke, tmp_path):
    """The fresh dose cells held rho x their own w_c (derived from ctrl, with its interval); a synthetic
    release at the same modulus, clamped at another w_c, gives the t_grok expected at each fresh held norm by
    interpolation in ln t_grok. Both the study's report (`--release paper`) and the paper report show it."""
    from tracking.import_npz import import_dir
    _, arms, res, _, uri = smoke
    ctrl = arms["ctrl"]["summary"]
    (held,) = res["w_c"]["held"]
    assert (held["w_c"], held["source"], held["ci_low"], held["ci_high"]) == pytest.approx(
        (ctrl["w_c"], "derived:median_norm_at_grok(ctrl)", ctrl["w_c_ci_low"], ctrl["w_c_ci_high"]))
    (control,) = res["w_c"]["controls"]
    assert control["curves_from"] == "per-seed curves"          # the report recomputes the engine's interval
    assert (control["ci_low"], control["ci_high"]) == pytest.approx((ctrl["w_c_ci_low"], ctrl["w_c_ci_high"]))
    w_rel, rhos, T = 1.04 * ctrl["w_c"], [0.85, 0.95, 1.0, 1.1, 1.2], [300, 400, 500, 800, 1300]
    release_npz(tmp_path / "src" / "dose", 23, w_rel, rhos, T)
    import_dir(tmp_path / "src", uri, log=lambda *_: None)
    js = tmp_path / "study.json"
    assert report.main(["dose_law-smoke", "--release", "paper", "--tracking-uri", uri, "--out", str(tmp_path / "a"),
                        "--json", str(js)]) == 0
    rows = json.loads(js.read_text())["w_c"]["dose_law_comparison"]
    W = [float(np.float32(r * w_rel)) for r in rhos]
    fresh = {a: v for a, v in arms.items() if v["params"]["design_role"] == "dose_cell" and grokked_median(v)}
    assert {r["arm"] for r in rows} == set(fresh) and rows
    for r in rows:
        arm = arms[r["arm"]]
        held_norm = statistics.median(x["weight_norm_at_grok"] for x in arm["results"] if x["grokked"])
        assert r["held_norm"] == pytest.approx(held_norm)
        assert r["predicted"] == pytest.approx(math.exp(np.interp(held_norm, W, np.log(T))), rel=1e-9)
        twin = T[rhos.index(round(arm["params"]["rho"], 2))] if round(arm["params"]["rho"], 2) in rhos else None
        assert r["release"] == twin and r["fresh"] == grokked_median(arm)
        if twin is not None and r["fresh"] != twin:
            assert r["explained"] == pytest.approx((r["predicted"] - twin) / (r["fresh"] - twin))
    js = tmp_path / "paper.json"
    assert report.main(["paper", "--preset", "smoke", "--tracking-uri", uri, "--out", str(tmp_path / "b"),
                        "--json", str(js)]) == 0
    assert json.loads(js.read_text())["dose_law_comparison"] == rows
    assert "## Fresh clamped cells against the release's dose law" in (tmp_path / "b" / "report.md").read_text()


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
