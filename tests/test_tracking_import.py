"""tracking.import_npz on the paper's published data, and tracking.query frames read back from it."""
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tracking.import_npz import PARAM_KEYS, main
from tracking.query import list_experiments, load_arms, load_curves, load_members, load_runs

FOLDERS = ("samestate", "transformer")   # small: 15 files, 180 members, with _weights.npz files


@pytest.fixture(scope="module")
def imported(paper_metrics, tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    for name in FOLDERS:
        (root / name).symlink_to(paper_metrics / name, target_is_directory=True)
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlruns' / 'mlflow.db'}"
    return root, uri


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _counts(uri):
    return {e: load_runs(e, uri)["role"].value_counts().to_dict() for e in list_experiments(uri)}


def test_import_builds_the_run_schema(imported, capsys):
    root, uri = imported
    rc, out, err = _run(capsys, root, "--tracking-uri", uri)
    assert rc == 0, err
    assert "2 experiments, 15 arms and 180 members imported" in out
    assert "ignored 7 file(s)" in out and "main file has per-seed times" in out
    assert _counts(uri) == {"paper/samestate": {"member": 96, "arm": 8, "study": 1},
                            "paper/transformer": {"member": 84, "arm": 7, "study": 1}}
    c = MlflowClient(uri)
    for exp in ("paper/samestate", "paper/transformer"):
        runs = c.search_runs([c.get_experiment_by_name(exp).experiment_id], max_results=1000)
        assert {r.info.status for r in runs} == {"FINISHED"}
        for r in runs:   # identical param keys on every arm and member run ("compare" lines them up)
            role = r.data.tags["role"]
            if role != "study":
                assert set(r.data.params) == set(PARAM_KEYS) | ({"seed"} if role == "member" else set())
    arms = load_arms("paper/transformer", uri)
    assert set(arms["model"]) == {"transformer_noln"} and set(arms["design"]) == {"transformer"}
    assert set(arms["tau_source"]) == {"given"}
    # the design roles the analyses find designs by, from the release's own fields
    assert arms.set_index("arm")["design_role"].to_dict() == {
        "tfnoln_add_ce_full_p59_ctrl": "control", "tfnoln_add_ce_full_p59_base_rho1.00_tau1.00": "baseline",
        "tfnoln_add_ce_full_p59_up_rho1.15_tau1.00": "norm_up",
        **{f"tfnoln_add_ce_full_p59_up_rho1.15_tau{t}": "tau_sweep" for t in ("1.15", "1.30", "1.50", "1.70")}}
    roles = load_arms("paper/samestate", uri).set_index("arm")["design_role"]
    assert roles["p59_clamp_raised"] == "fork_raised" and roles["p97_free"] == "fork_free"
    runs = c.search_runs([c.get_experiment_by_name("paper/samestate").experiment_id], "tags.role = 'member'")
    assert {r.data.tags["design_role"] for r in runs} == {"fork_free", "fork_same", "fork_raised", "fork_lowered"}


def test_imported_numbers_match_the_paper(imported):
    root, uri = imported
    m = load_members("paper/samestate", uri)
    m59 = m[m["p"] == 59]
    delays = (m59["t_grok"] - m59["fork_step"]).groupby(m59["clamp"]).median()
    # PAPER.md: same-state median delays from the fork at p = 59
    assert delays.to_dict() == {"clamp_lowered": 1525, "free": 4225, "clamp_same": 7200, "clamp_raised": 24162.5}
    arms = load_arms("paper/samestate", uri).set_index("arm")
    assert arms.loc["p59_clamp_raised", "t_grok"] == m59[m59["clamp"] == "clamp_raised"]["t_grok"].median()
    assert arms.loc["p59_free", "n_seeds"] == 12 and arms.loc["p59_free", "n_grokked"] == 12
    assert set(arms["loss"]) == {"ce"} and set(arms["tau"]) == {1.0}
    assert set(arms["tau_source"]) == {"default:samestate design"}


def test_query_frames_are_typed(imported):
    root, uri = imported
    m = load_members("paper/samestate", uri)
    assert len(m) == 96 and set(m["role"]) == {"member"}
    assert list(m.columns[:8]) == ["run_id", "parent_run_id", "run_name", "role", "study", "arm", "seed", "status"]
    for col in ("p", "seed", "rho", "tau", "fork_step", "t_grok", "delay", "N0", "grokked"):
        assert m[col].dtype == float, col
    assert set(m["w_c"]) == {"none"} and set(m["t_int"]) == {"none"}   # not in the files: stays a string
    assert set(m["loss"]) == {"ce"} and sorted(m["seed"].unique()) == list(map(float, range(12)))
    arms = load_arms("paper/samestate", uri)
    curves = load_curves(list(arms["run_id"]), ["test/acc", "logit/scale"], uri)
    assert list(curves.columns) == ["run_id", "key", "step", "value"]
    assert curves["step"].dtype == np.int64 and curves["value"].dtype == float
    assert set(curves["key"]) == {"test/acc", "logit/scale"} and set(curves["run_id"]) == set(arms["run_id"])
    assert curves["step"].min() == 801 and not curves.duplicated(["run_id", "key", "step"]).any()
    everything = load_curves(list(arms["run_id"][:1]), uri=uri)
    assert {"train/acc", "norm/total", "t_grok"} <= set(everything["key"])
    with pytest.raises(LookupError, match=r"'paper/nope' not found.*paper/samestate"):
        load_runs("paper/nope", uri)


def test_import_twice_creates_nothing_and_completes_a_half_import(imported, capsys):
    root, uri = imported
    before = _counts(uri)
    rc, out, _ = _run(capsys, root, "--tracking-uri", uri)
    assert rc == 0 and "0 arms and 0 members imported, 15 arms already there" in out
    assert _counts(uri) == before
    # an import killed half way: the arm still RUNNING, one member missing
    c = MlflowClient(uri)
    arms = load_arms("paper/samestate", uri).set_index("arm")
    arm_id = arms.loc["p97_free", "run_id"]
    members = load_members("paper/samestate", uri)
    c.update_run(arm_id, status="RUNNING")
    c.delete_run(members[members["parent_run_id"] == arm_id]["run_id"].iloc[0])
    n_points = len(c.get_metric_history(arm_id, "test/acc"))
    rc, out, _ = _run(capsys, root / "samestate", "--tracking-uri", uri)
    assert rc == 0 and "1 arms and 12 members imported" in out
    assert _counts(uri) == before
    assert c.get_run(arm_id).info.status == "FINISHED"
    assert len(c.get_metric_history(arm_id, "test/acc")) == n_points


def test_bad_files_are_reported_and_skipped(imported, paper_metrics, tmp_path, capsys):
    _, uri = imported
    bad = tmp_path / "bad"
    bad.mkdir()
    src = paper_metrics / "samestate" / "p59_free.npz"
    (bad / "good.npz").write_bytes(src.read_bytes())
    (bad / "corrupt.npz").write_bytes(src.read_bytes()[:2000])
    with np.load(src) as z:
        data = {k: z[k] for k in z.files}
    np.savez(bad / "no_times.npz", **{k: v for k, v in data.items() if k != "T_grok_per_seed"})
    np.savez(bad / "short_n0.npz", **{**data, "N0": data["N0"][:11]})
    # per-seed times only in the _weights.npz beside it: taken from there; a lone _weights.npz: skipped
    np.savez(bad / "split.npz", **{k: v for k, v in data.items() if not k.startswith("T_")})
    np.savez(bad / "split_weights.npz", **{k: v for k, v in data.items() if k.startswith("T_")})
    np.savez(bad / "lonely_weights.npz", **{k: v for k, v in data.items() if k.startswith("T_")})
    rc, out, err = _run(capsys, bad, "--tracking-uri", uri)
    assert rc == 1
    assert "corrupt.npz: bad archive" in err
    assert "no_times.npz: missing field 'T_grok_per_seed'" in err
    assert "short_n0.npz: field 'N0': expected shape (12,)" in err
    assert "lonely_weights.npz: no main file lonely.npz" in err
    assert "2 arms and 24 members imported" in out and "4 skipped" in out
    m = load_members("paper/bad", uri)
    assert set(m["arm"]) == {"good", "split"} and len(m) == 24
    split = m[m["arm"] == "split"].sort_values("seed")
    assert (split["t_grok"].to_numpy() == data["T_grok_per_seed"]).all()


def test_curves_fall_back_to_the_public_api_with_the_same_frame(imported, monkeypatch):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    _, uri = imported
    arms = list(load_arms("paper/samestate", uri)["run_id"])
    keys = ["test/acc", "logit/scale", "t_grok"]
    private = load_curves(arms, keys, uri)

    def broken(*_, **__):
        raise AttributeError("simulated: the private store method changed")

    monkeypatch.setattr(SqlAlchemyStore, "get_metric_history_bulk", broken)
    with pytest.warns(RuntimeWarning, match="bulk metric history failed.*public API"):
        public = load_curves(arms, keys, uri)
    pd.testing.assert_frame_equal(private, public)
    pd.testing.assert_frame_equal(private, load_curves(arms, keys, uri, private_sql=False))
    assert set(private["key"]) == set(keys) and set(private["run_id"]) == set(arms)
