"""The report reproduces every figure of PAPER.md's "Published figures at p = 59" from the raw data.

A fresh store gets the p = 59 files of the paper's folders through the importer (tracking.import_npz);
each paper experiment is then reported and its JSON and Markdown checked at the paper's printed precision.
"""
import json

import pytest

from analyses import report

# folder -> file-name filter (p = 59, CE: the published table; MSE and p = 97 come out of the same code)
FOLDERS = {"mediation": "mlp_ce_full_p59_", "collapse": "_p59_grid", "dose": "_p59_clamp",
           "alloc": "_p59_", "samestate": "p59_"}


@pytest.fixture(scope="session")
def p59(paper_metrics, tmp_path_factory):
    from tracking.import_npz import import_dir
    root = tmp_path_factory.mktemp("paper59")
    src = root / "paper-metrics"
    for folder, token in FOLDERS.items():
        (src / folder).mkdir(parents=True)
        for f in (paper_metrics / folder).glob("*.npz"):
            if token in f.name and not f.stem.endswith("_weights"):
                (src / folder / f.name).symlink_to(f)
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    import_dir(src, uri, log=lambda *_: None)
    out = {}
    for folder in FOLDERS:
        d = root / "reports" / folder
        made = report.make_report(f"paper/{folder}", uri, d, d / "report.json", log=folder == "samestate")
        out[folder] = (json.loads((d / "report.json").read_text()), (d / "report.md").read_text(), made)
    return uri, out


def only(rows):
    assert len(rows) == 1, rows
    return rows[0]


def test_recovery_and_tau_sweep(p59):
    res, md, _ = p59[1]["mediation"]
    assert set(res) - {"w_c"} == {"recovery", "memorization_control", "mediation"}
    r = only(res["recovery"])
    assert (r["T0"], r["T1"], round(r["T2_interpolated"])) == (3675, 12600, 5166)
    assert [round(x, 3) for x in (r["estimate"], r["ci_low"], r["ci_high"])] == [0.833, 0.818, 0.852]
    assert r["T2_realized"] is None and r["n_seeds"] == 12
    assert [round(x["T"]) for x in r["sweep"]] == [12600, 9100, 6825, 4700, 3450]
    assert [round(x["L"], 2) for x in r["sweep"]] == [34.31, 29.46, 26.50, 23.13, 20.89]
    assert round(r["L_baseline"], 2) == 23.87
    assert "| 3675 | 12600 | 5166 | 0.833 [0.818, 0.852] |" in md
    for tau, T, L in [("1", 12600, "34.31"), ("1.15", 9100, "29.46"), ("1.3", 6825, "26.50"),
                      ("1.5", 4700, "23.13"), ("1.7", 3450, "20.89")]:
        assert f"| {tau} | {T} | {L} |" in md
    assert "L at grok 23.87" in md


def test_memorization_control_and_mediation(p59):
    res, md, _ = p59[1]["mediation"]
    assert round(only(res["memorization_control"])["delay_share"], 3) == 1.003
    assert "| 1.003 |" in md
    m = only(res["mediation"])
    assert m["mediator"].startswith("arm-level") and m["n"] == 72
    assert 0 < m["acme"] < m["total"] and m["ci_low"] < m["prop_mediated"] < m["ci_high"]
    # the exclusion restriction is tested: ln tau in the outcome model, its coefficient and seed-clustered CI
    assert m["tau_ci"][0] < m["tau_coef"] < m["tau_ci"][1] and isinstance(m["exclusion_holds"], bool)
    assert "ln tau in the outcome" in md and "Assumes that neither the clamp" in md and "draws whole seeds" in md


def test_collapse(p59):
    res, md, _ = p59[1]["collapse"]
    assert set(res) - {"w_c"} == {"collapse"}
    c = only(res["collapse"])
    assert c["n_cells"] == 12
    assert [round(c[k], 3) for k in ("r2_logit", "r2_rho", "r2_both", "delta_r2_rho")] == [0.968, 0.407, 0.988, 0.020]
    assert "| 12 | 0.968 | 0.407 | 0.988 | 0.020 |" in md


def test_same_state_fork_and_its_report_run(p59):
    uri, out = p59
    res, md, made = out["samestate"]
    f = only(res["fork"])
    assert f["delays"] == {"clamp_lowered": 1525, "free": 4225, "clamp_same": 7200, "clamp_raised": 24162.5}
    assert [round(x, 2) for x in (f["ratio_raised_same"], f["ci_low"], f["ci_high"])] == [3.36, 3.27, 3.43]
    assert (f["ordered_seeds"], f["n_seeds"]) == (12, 12)
    assert "| 800 | 1525 | 4225 | 7200 | 24162 | 3.36 [3.27, 3.43] | 12/12 |" in md
    from mlflow import MlflowClient
    from tracking.query import load_runs
    run = only(load_runs("paper/samestate", uri, role="report").to_dict("records"))
    names = {a.path for a in MlflowClient(uri).list_artifacts(run["run_id"])}
    assert {"report.md", "report.json", "fork_p_59_ce_mlp_float32.png"} <= names


def test_dose_law(p59):
    res, md, _ = p59[1]["dose"]
    d = only(res["dose_law"])
    assert (round(d["alpha"], 3), round(d["r2"], 3), d["n"], round(d["delta_aic"], 2)) == (0.140, 0.991, 7, 6.40)
    assert "| 0.140 | 0.991 | 7 | 6.40 |" in md


def test_allocation_swing(p59):
    res, md, _ = p59[1]["alloc"]
    assert round(only(res["allocation"])["swing"], 1) == 2.2
    assert "| 2.2 |" in md


@pytest.fixture(scope="module")
def paper_report(paper_metrics, tmp_path_factory):
    """`analyses.report paper` over the release's p = 59 files (and the p = 43 dose cells, the p = 97 control),
    imported."""
    from tracking.import_npz import import_dir
    root = tmp_path_factory.mktemp("paper")
    for folder in ("mediation", "collapse", "dose", "alloc", "samestate", "transformer"):
        (root / "src" / folder).mkdir(parents=True)
        for f in (paper_metrics / folder).glob("*.npz"):
            if ("p59" in f.name or "_p43_" in f.name or "_p97_ctrl" in f.name) and not f.stem.endswith("_weights"):
                (root / "src" / folder / f.name).symlink_to(f)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    import_dir(root / "src", uri, log=lambda *_: None)
    js = root / "paper.json"
    assert report.main(["paper", "--tracking-uri", uri, "--out", str(root / "out"), "--json", str(js)]) == 0
    return json.loads(js.read_text()), (root / "out" / "report.md").read_text()


def test_the_paper_report_fills_the_published_column_with_the_printed_values(paper_report):
    res, md = paper_report
    rows = {r["quantity"]: r for r in res["figures"]}
    assert res["fresh"] == [] and len(res["published"]) == 6
    released = [r for r in rows.values() if r["published"] is not None]
    assert len(released) >= 45                      # everything but the float64 audit (not released)
    off = {q for q, r in rows.items() if r in released and r["paper"] is not None
           and abs(r["published"] - r["paper"]) > max(0.005 * abs(r["paper"]), 0.0015)}
    # the release holds 4 of the 6 collapse-free p = 43 dose cells (PAPER.md): n and delta AIC differ
    assert off == {"dose law p = 43: n", "dose law p = 43: delta AIC"}, off
    assert rows["float64 audit rho 1.15: T32"]["published"] is None
    assert "| T0, median t_grok (CE) | 3675 | 3675 (+0.0%) | - |" in md


def test_the_paper_report_reproduces_the_published_w_c_and_gives_its_interval(paper_report):
    """w_c = 54.49 (p = 59) and 65.85 (p = 97), PAPER.md, from the released controls; the interval reads each
    seed's curve as its end-of-run norm times the seed-mean curve's shape (the release has no per-seed
    curves), and holds the point value."""
    res, md = paper_report
    rows = {r["quantity"]: r for r in res["figures"]}
    for p, printed in ((59, 54.49), (97, 65.85)):
        row = rows[f"w_c (CE), p = {p}"]
        lo, hi = row["published_ci"]
        assert round(row["published"], 2) == printed and lo < row["published"] < hi and hi - lo < 3
        assert f"| w_c (CE), p = {p} | {printed} | {printed} [{lo:.2f}, {hi:.2f}]" in md
    (control,) = [c for c in res["w_c"]["published"] if c["arm"] == "mlp_ce_full_p97_ctrl"
                  and c["experiment"] == "paper/mediation"]
    assert control["curves_from"] == "seed-mean shape" and control["n_grokked"] == 12


def test_fresh_runs_at_a_reduced_scale_fill_the_p59_figures_from_their_own_modulus():
    """`analyses.report paper --preset default`: the default presets run p = 31, which stands in for the
    paper's p = 59 in the fresh column; figures of another modulus (p = 43) stay empty, and so do the
    norm-up arm's figures (rho 1.15) of a design that raised the norm by another rho (the transformer's
    default: 1.05), while its baseline's still count."""
    from analyses import paper
    fresh = {"recovery": [{"p": 31, "loss": "ce", "model": "mlp", "time": "t_grok", "rho": 1.15, "T0": 538,
                           "T1": 3350, "sweep": [{"tau": 1.0, "T": 3350}]},
                          {"p": 31, "model": "transformer_noln", "time": "t_grok", "rho": 1.05, "T0": 925,
                           "T1": 2950, "estimate": 0.737, "sweep": [{"tau": 1.0, "T": 2950}],
                           "experiment": "transformer", "group": "p=31 ce transformer_noln float32"}],
             "dose_law": [{"p": 31, "model": "mlp", "alpha": 0.2}]}
    fresh_p = paper.scale_of(fresh, "default")
    rows = {r["quantity"]: r for r in paper.table({}, fresh, fresh_p)}
    assert fresh_p == 31 and paper.scale_of(fresh, "paper") is None
    assert rows["T0, median t_grok (CE)"]["fresh"] == 538 and rows["dose law p = 59: alpha"]["fresh"] == 0.2
    assert rows["dose law p = 43: alpha"]["fresh"] is None
    assert rows["T1, median t_grok (CE)"]["fresh"] == 3350
    assert rows["CE sweep at rho 1.15, tau 1.0: median t_grok"]["fresh"] == 3350
    assert rows["no-LN transformer: baseline t_grok"]["fresh"] == 925
    assert rows["no-LN transformer sweep at rho 1.15, tau 1.0: t_grok"]["fresh"] is None
    assert rows["T0, median t_grok (CE)"]["fresh_rel"] == pytest.approx((538 - 3675) / 3675)
    assert all(r["fresh"] is None for r in paper.table({}, fresh, None))   # at paper scale: p = 59 only
    md = paper.markdown(list(rows.values()), [], ["x"], [], fresh_p, fresh["recovery"])
    assert "p = 31 stands in for the paper's p = 59" in md
    # ... and the design at its own rho still has its recovery, in a table of its own
    assert "| transformer | p=31 ce transformer_noln float32 | 1.05 | 925 | 2950 | - | 0.737 [-, -] | - |" in md


def test_a_difference_near_zero_is_given_as_an_absolute_difference():
    """delta AIC and rho's R^2 increment can sit near zero: "-21.32 (-5430.3%)" said nothing; the absolute
    difference does. Every other figure keeps its relative difference."""
    from analyses import paper
    fresh = {"dose_law": [{"p": 43, "model": "mlp", "delta_aic": -21.32, "alpha": 0.2}]}
    rows = {r["quantity"]: r for r in paper.table({}, fresh)}
    aic = rows["dose law p = 43: delta AIC"]
    assert aic["fresh_rel"] is None and aic["fresh_diff"] == pytest.approx(-21.32 - 0.4)
    assert rows["dose law p = 43: alpha"]["fresh_rel"] == pytest.approx((0.2 - 0.173) / 0.173)
    assert rows["dose law p = 43: alpha"]["fresh_diff"] is None
    md = paper.markdown(list(rows.values()), [], ["x"], [])
    assert "| dose law p = 43: delta AIC | 0.4 | - | -21.32 (-21.7) |" in md
    assert "| dose law p = 43: alpha | 0.173 | - | 0.2 (+15.6%) |" in md
