"""Analyses on small synthetic frames and stores where the right answer is known by construction."""
import json

import numpy as np
import pandas as pd
import pytest

from analyses import markdown, report
from analyses.cells import prepare_members, summarize
from analyses.collapse import collapse_fit
from analyses.doselaw import dose_law
from analyses.forks import fork_contrast
from analyses.mediation import mediation_fit
from analyses.recovery import interpolate_T2, recovery

SEEDS = 6
JITTER = np.array([-60.0, -20.0, 0.0, 0.0, 20.0, 60.0])  # symmetric: every cell median is exactly its T


def cell(arm, T, L, *, rho=1.0, tau=1.0, clamp="w_c", fork_step=None, gamma=0.0, precision="float32",
         tau_source="given", design="custom", p=23, t_mem=100.0, grok=None, L_seed=None, jitter=JITTER, sc=None,
         role=None):
    """Members + arm curves of one cell: t_grok = T (+ jitter) per seed, logit/scale flat at L."""
    grok = np.ones(SEEDS, bool) if grok is None else np.asarray(grok)
    t = T + jitter if np.ndim(T) == 0 else np.asarray(T, float)
    rows = []
    for s in range(SEEDS):
        rows.append({"run_id": f"{arm}/{s}", "parent_run_id": arm, "arm": arm, "study": "syn", "seed": float(s),
                     "p": float(p), "loss": "ce", "model": "mlp", "precision": precision, "rho": rho, "tau": tau,
                     "gamma": gamma, "clamp": clamp, "design": design, "tau_source": tau_source,
                     "design_role": role or "none",
                     "fork_step": "none" if fork_step is None else float(fork_step), "t_mem": t_mem,
                     "t_grok": t[s] if grok[s] else np.nan, "grokked": float(grok[s]),
                     "delay": t[s] - t_mem if grok[s] else np.nan,
                     "logit_scale_at_grok": np.nan if L_seed is None else L_seed[s]})
    steps = np.arange(0, 40001, 200)
    curves = pd.DataFrame({"run_id": arm, "key": "logit/scale", "step": steps, "value": float(L)})
    if sc is not None:  # softmax collapse rising linearly to its peak `sc`
        curves = pd.concat([curves, pd.DataFrame({"run_id": arm, "key": "softmax/collapse", "step": steps,
                                                  "value": sc * steps / steps.max()})])
    return pd.DataFrame(rows), curves


def frames(*cells_):
    members = pd.concat([c[0] for c in cells_], ignore_index=True)
    curves = pd.concat([c[1] for c in cells_], ignore_index=True)
    m = prepare_members(members)
    return m, summarize(m, curves)


def test_interpolation_is_linear_in_L_and_refuses_extrapolation():
    assert interpolate_T2([30, 20], [3000, 1000], 25) == 2000
    assert interpolate_T2([20, 30, 40], [1000, 3000, 9000], 35) == 6000
    assert np.isnan(interpolate_T2([20, 30], [1000, 3000], 31))


def test_recovery_is_exactly_one_half_interpolated_and_realized():
    m, c = frames(cell("base", 1000, 25), cell("up", 3000, 30, rho=1.15),
                  cell("up_tau1.5", 1000, 20, rho=1.15, tau=1.5),
                  cell("logit_matched", 2000, 25, rho=1.15, tau=1.25, tau_source="derived:logit_matched(x)"))
    ids = c.set_index("arm")["cell"]
    r = recovery(m, c, ids["base"], ids["up"], [ids["up"], ids["up_tau1.5"]], ids["logit_matched"])
    assert (r["T0"], r["T1"], r["T2_interpolated"], r["T2_realized"]) == (1000, 3000, 2000, 2000)
    assert r["estimate"] == 0.5 and r["realized_estimate"] == 0.5
    assert r["ci_low"] <= 0.5 <= r["ci_high"] and r["n_seeds"] == SEEDS


def test_collapse_increment_of_rho_vanishes_when_delay_depends_on_L_alone():
    cells = []
    for rho in (1.0, 1.05, 1.1, 1.15):
        for tau in (1.0, 1.3, 1.7):
            L = 20 * rho ** 3 / tau            # L moves with rho, but not linearly: rho is not redundant
            cells.append(cell(f"g{rho}_{tau}", np.exp(5 + 0.1 * L), L, rho=rho, tau=tau, jitter=np.zeros(SEEDS)))
    _, c = frames(*cells)
    r = collapse_fit(c)
    assert r["n_cells"] == 12 and r["r2_logit"] == pytest.approx(1.0, abs=1e-9)
    assert abs(r["delta_r2_rho"]) < 1e-9 and r["r2_rho"] < 0.9


def test_every_cell_a_design_leaves_out_is_named_with_its_reason():
    """A grid whose last two cells are still RUNNING without summaries (a study that has not completed in
    the store) and one cell without a grokking majority: the fit runs on the rest and names all three."""
    cells = []
    for rho in (1.0, 1.05, 1.1, 1.15):
        for tau in (1.0, 1.3, 1.7):
            L = 20 * rho ** 3 / tau
            grok = [False] * 4 + [True] * 2 if (rho, tau) == (1.0, 1.7) else None
            members, curves = cell(f"g{rho}_{tau}", np.exp(5 + 0.1 * L), L, rho=rho, tau=tau, jitter=np.zeros(SEEDS),
                                   grok=grok, design="collapse")
            members["status"] = "FINISHED"
            if rho == 1.15 and tau > 1:
                members["status"] = "RUNNING"
                members[["t_grok", "grokked", "delay"]] = np.nan
            cells.append((members, curves))
    m, c = frames(*cells)
    results, notes = report.analyse(m, c)
    (r,) = results["collapse"]
    assert r["n_cells"] == 9
    why = {x["arm"]: x["reason"] for x in r["left_out"]}
    assert set(why) == {"g1.0_1.7", "g1.15_1.3", "g1.15_1.7"}
    assert why["g1.0_1.7"] == "no grokking majority (2/6 seeds grokked)"
    assert why["g1.15_1.3"].startswith("6 of 6 member runs not FINISHED (6 RUNNING) and 6 of 6 without summaries")
    assert sum("collapse (p=23 ce mlp float32): left out g1.15_1.7: 6 of 6 member runs" in n for n in notes) == 1


def test_fork_ratio_ordering_and_ci_are_known():
    same = np.array([1000, 1100, 1200, 1300, 1400, 1500.0])
    lowered, free = same * 0.4, same * 0.7
    free[0] = 2000                           # seed 0 breaks lowered < free < same
    arms = {r: cell(r, 800 + x, 30, clamp="n0", fork_step=800) for r, x in
            [("clamp_same", same), ("clamp_raised", 3 * same), ("clamp_lowered", lowered), ("free", free)]}
    m, c = frames(*arms.values())
    r = fork_contrast(m, dict(zip(c["arm"], c["cell"])))
    assert r["ratio_raised_same"] == pytest.approx(3.0) and r["ci_low"] == pytest.approx(3.0)
    assert r["ci_high"] == pytest.approx(3.0)        # median(3x) = 3 median(x) in every resample
    assert r["delays"]["clamp_same"] == 1250 and r["ordered_seeds"] == SEEDS - 1 and r["n_seeds"] == SEEDS


def test_dose_law_stops_at_the_collapse_jump_and_recovers_alpha():
    wiggle = np.array([0.02, -0.01, 0.0, 0.015, -0.02, 0.01])
    cells = []
    for i, rho in enumerate([0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2]):
        W = 50 * rho
        L = 20 * rho if rho < 1.1 else 80 * rho   # L jumps 4x at rho 1.1: collapse from there on
        cells.append(cell(f"rho{rho}", np.exp(1 + 0.12 * W + wiggle[min(i, 5)]), L, rho=rho,
                          jitter=np.zeros(SEEDS)))
    m, c = frames(*cells)
    c["W"] = 50 * c["rho"]
    r = dose_law(c)
    assert r["n"] == 5 and r["alpha"] == pytest.approx(0.12, abs=0.01) and r["r2"] > 0.98
    assert set(r["excluded"]) == {"rho1.1", "rho1.15", "rho1.2"}


def test_mediation_is_complete_when_the_norm_acts_only_through_L():
    rng = np.random.default_rng(1)
    cells = []
    for arm, rho, tau, L0 in [("base", 1.0, 1.0, 20), ("up", 1.15, 1.0, 30), ("up_tau1.5", 1.15, 1.5, 22)]:
        L = L0 * np.exp(rng.normal(0, 0.05, SEEDS))
        cells.append(cell(arm, np.exp(3 + 2 * np.log(L) + rng.normal(0, 0.02, SEEDS)), L0, rho=rho, tau=tau,
                          L_seed=L))
    m, c = frames(*cells)
    ids = c.set_index("arm")["cell"]
    r = mediation_fit(m, c, ids["base"], [ids["up"], ids["up_tau1.5"]], n_rep=200)
    assert r["mediator"].startswith("per-seed")
    assert r["prop_mediated"] == pytest.approx(1.0, abs=0.1) and abs(r["ade"]) < 0.1
    assert r["ci_low"] < 1.0 < r["ci_high"] or r["ci_low"] == pytest.approx(1.0, abs=0.1)


# ------------------------------------------------------------------ through a store and the CLI
def write_store(uri, experiment, cells_):
    """Write synthetic cells as the engine does: study run -> arm runs (params, curves) -> member runs."""
    from tracking.recorder import Recorder
    rec = Recorder(uri, experiment)
    study = rec.run("study", experiment, tags={"study": experiment})
    keys = ["arm", "p", "loss", "model", "precision", "rho", "tau", "gamma", "clamp", "design", "tau_source",
            "fork_step", "design_role"]
    for members, curves in cells_:
        first = members.iloc[0]
        arm = first["arm"]
        params = {k: first[k] for k in keys}
        arm_id = rec.run("arm", arm, parent_id=study, params=params, tags={"study": experiment, "arm": arm})
        rec.log_curves(arm_id, {"logit/scale": list(zip(curves["step"], curves["value"])),
                                "test/acc": [(0, 0.0), (int(members["t_grok"].median()), 0.95)]})
        metrics = ["t_mem", "t_grok", "delay", "grokked", "logit_scale_at_grok"]
        rec.add_runs("member", arm_id, [
            {"name": f"{arm} seed={int(r.seed)}", "params": {**params, "seed": int(r.seed)},
             "tags": {"study": experiment, "arm": arm, "seed": int(r.seed)},
             "metrics": {k: (None if pd.isna(getattr(r, k)) else float(getattr(r, k))) for k in metrics}}
            for r in members.itertuples()], status="FINISHED")
        rec.finish(arm_id)
    rec.finish(study)
    rec.close()


def fork_study_cells(with_lowered=True, names=None):
    """The engine's fork_study shape: fork arms by design_role, a tau sweep on the raised arm, a
    logit-matched arm. `names` renames arms (role -> name)."""
    same = np.array([1000, 1100, 1200, 1300, 1400, 1500.0])
    L_seed = lambda L: L * np.linspace(0.97, 1.03, SEEDS)  # noqa: E731
    kw = dict(clamp="n0", fork_step=800, design="fork", p=23)
    n = {"fork_trunk": "trunk", "fork_free": "free", "fork_same": "clamp_same", "fork_raised": "clamp_raised",
         "tau1.3": "clamp_raised_tau1.3", "tau1.7": "clamp_raised_tau1.7", "logit_matched": "logit_matched",
         "fork_lowered": "clamp_lowered", **(names or {})}
    out = [cell(n["fork_trunk"], 700, 30, clamp="none", design="fork", p=23, role="fork_trunk"),
           cell(n["fork_free"], 800 + 0.7 * same, 30, clamp="none", fork_step=800, design="fork", p=23,
                role="fork_free"),
           cell(n["fork_same"], 800 + same, 25, L_seed=L_seed(25), role="fork_same", **kw),
           cell(n["fork_raised"], 800 + 3 * same, 35, rho=1.15, L_seed=L_seed(35), role="fork_raised", **kw),
           cell(n["tau1.3"], 800 + 2 * same, 30, rho=1.15, tau=1.3, L_seed=L_seed(30), role="tau_sweep", **kw),
           cell(n["tau1.7"], 800 + same, 20, rho=1.15, tau=1.7, L_seed=L_seed(20), role="tau_sweep", **kw),
           cell(n["logit_matched"], 800 + 1.5 * same, 25, rho=1.15, tau=1.5, L_seed=L_seed(25),
                tau_source="derived:logit_matched(target=clamp_same)", role="logit_matched", **kw)]
    if with_lowered:
        out.append(cell(n["fork_lowered"], 800 + 0.4 * same, 20, rho=1 / 1.15, role="fork_lowered", **kw))
    return out


def test_report_on_an_engine_shaped_fork_study(tracking_uri, tmp_path):
    from tracking.query import load_runs
    write_store(tracking_uri, "fork_study", fork_study_cells())
    out, js = tmp_path / "rep", tmp_path / "r.json"
    assert report.main(["fork_study", "--tracking-uri", tracking_uri, "--out", str(out), "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    # every fork arm inherits the trunk's t_mem: no memorization control in a fork design
    assert set(res) - {"w_c"} == {"recovery", "mediation", "fork"}
    (rec,), (fork,) = res["recovery"], res["fork"]
    # delays from the fork: T0 1250, T1 3750; sweep L 35/30/20 -> T2 at L 25 = (2500 + 1250) / 2 = 1875
    assert (rec["T0"], rec["T1"], rec["T2_interpolated"], rec["T2_realized"]) == (1250, 3750, 1875, 1875)
    assert rec["estimate"] == pytest.approx(0.75) and rec["realized_estimate"] == pytest.approx(0.75)
    assert fork["ratio_raised_same"] == pytest.approx(3.0) and fork["ordered_seeds"] == SEEDS
    assert res["mediation"][0]["mediator"].startswith("per-seed")
    md = (out / "report.md").read_text()
    assert "0.750 [" in md and "| 1875 |" in md and "logit-matched" in md
    assert {"recovery_p_23_ce_mlp_float32.png", "fork_p_23_ce_mlp_float32.png"} <= {p.name for p in out.iterdir()}
    reports = load_runs("fork_study", tracking_uri, role="report")
    assert len(reports) == 1 and reports["status"].iloc[0] == "FINISHED"
    report.log_report(tracking_uri, "fork_study", [out / "report.md"], "again")   # a second report ...
    assert list(load_runs("fork_study", tracking_uri, role="report")["run_id"]) == list(reports["run_id"])


def test_partial_design_reports_what_it_can_and_says_what_is_missing(tracking_uri, tmp_path):
    cells_ = fork_study_cells(with_lowered=False)
    cells_[5] = cell("clamp_raised_tau1.7", 800 + np.full(SEEDS, 1000.0), 20, rho=1.15, tau=1.7, clamp="n0",
                     fork_step=800, design="fork", p=23, grok=[True, True, False, False, False, False],
                     role="tau_sweep")
    write_store(tracking_uri, "partial", cells_)
    js = tmp_path / "r.json"
    assert report.main(["partial", "--tracking-uri", tracking_uri, "--out", str(tmp_path), "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    (rec,), (fork,) = res["recovery"], res["fork"]
    # the sweep keeps L 35 and 30: the baseline's L 25 is outside it, so only the realized T2 remains
    assert rec["estimate"] is None and rec["realized_estimate"] == pytest.approx(0.75)
    assert fork["ordered_seeds"] is None and fork["missing_arms"] == ["clamp_lowered"]
    md = (tmp_path / "report.md").read_text()
    assert "clamp_raised_tau1.7 left out: no grokking majority (2/6 seeds grokked)" in md
    assert "T2 not interpolated" in md and "needs clamp_lowered" in md
    assert "ordering needs the clamp_lowered arm" in md.split("## Not computed")[1]


def test_bad_input_exits_2_with_a_clear_message(tracking_uri, tmp_path, capsys):
    missing = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    assert report.main(["anything", "--tracking-uri", missing, "--out", str(tmp_path)]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    write_store(tracking_uri, "controls", [cell("ctrl", 3000, 25, clamp="none"), cell("ctrl2", 3100, 25, clamp="none")])
    assert report.main(["nope", "--tracking-uri", tracking_uri, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'nope' not found" in err and "controls" in err
    assert report.main(["controls", "--tracking-uri", tracking_uri, "--out", str(tmp_path / "c")]) == 2
    assert "no analysable design" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_analyses_imports_neither_torch_nor_interventions():
    import ast
    from pathlib import Path
    for path in (Path(__file__).resolve().parents[1] / "analyses").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad = [n for n in names if n.split(".")[0] in {"torch", "interventions"}]
            assert not bad, f"{path.name} imports {bad}"


def test_precision_audit_pairs_the_same_cell_across_precisions():
    m, c = frames(cell("hi32", 5000, 60, rho=1.25, sc=0.4), cell("hi64", 4000, 55, rho=1.25, precision="float64", sc=0.0),
                  cell("lo32", 2000, 30, sc=0.0, grok=[True] * 3 + [False] * 3))
    results, notes = report.analyse(m, c)
    (row,) = results["precision"]
    assert (row["t_grok_float32"], row["t_grok_float64"], row["sc_float32"], row["sc_float64"]) == (5000, 4000, 0.4, 0.0)
    assert row["rho"] == 1.25 and "| 5000 | 4000 | 0.400 | 0.000 |" in markdown._precision_md(results["precision"])[2]


def test_designs_are_found_by_role_so_renaming_every_arm_changes_nothing(tracking_uri, tmp_path):
    names = {"fork_trunk": "stem", "fork_free": "a", "fork_same": "b", "fork_raised": "c", "tau1.3": "d",
             "tau1.7": "e", "logit_matched": "f", "fork_lowered": "g"}
    write_store(tracking_uri, "named", fork_study_cells())
    write_store(tracking_uri, "renamed", fork_study_cells(names=names))
    got = {}
    for exp in ("named", "renamed"):
        js = tmp_path / f"{exp}.json"
        assert report.main([exp, "--tracking-uri", tracking_uri, "--out", str(tmp_path / exp), "--json", str(js)]) == 0
        got[exp] = json.loads(js.read_text())
    strip = lambda d: {k: v for k, v in d.items() if not k.endswith("_arm") and k not in ("sweep", "matched")}  # noqa
    for design in ("recovery", "mediation", "fork"):
        assert [strip(r) for r in got["renamed"][design]] == [strip(r) for r in got["named"][design]], design
    assert got["renamed"]["fork"][0]["delays"] == got["named"]["fork"][0]["delays"]


def test_the_exclusion_restriction_is_tested_and_a_direct_tau_effect_is_flagged():
    """ln tau in the outcome model: ~0 when tau acts only through L, clearly not when it also acts alone."""
    def family(direct):
        rng = np.random.default_rng(3)
        out = []
        for arm, rho, tau in (("base", 1.0, 1.0), ("up", 1.15, 1.0), ("up_tau1.3", 1.15, 1.3), ("up_tau1.7", 1.15, 1.7)):
            L = 25 * (1.4 if rho > 1 else 1.0) / tau * np.exp(rng.normal(0, 0.03, SEEDS))
            T = 1000 * (L / 25) ** 3 * tau ** direct * np.exp(rng.normal(0, 0.02, SEEDS))
            role = {"base": "baseline", "up": "norm_up"}.get(arm, "tau_sweep")
            out.append(cell(arm, T, float(np.median(L)), rho=rho, tau=tau, L_seed=L, role=role))
        return frames(*out)
    for direct, holds in ((0.0, True), (1.5, False)):
        m, c = family(direct)
        ids = c.set_index("arm")["cell"]
        r = mediation_fit(m, c, ids["base"], [ids["up"], ids["up_tau1.3"], ids["up_tau1.7"]], n_rep=100, n_boot=200)
        assert r["exclusion_holds"] is holds, (direct, r["tau_coef"], r["tau_ci"])
        assert r["tau_ci"][0] < r["tau_coef"] < r["tau_ci"][1]
        if not holds:
            assert r["tau_coef"] == pytest.approx(direct, abs=0.3)
