"""Checkpoints users load (README, "Load a trained model"): with `save: {at_grok: true, final: true}` every
member run holds its parameters at t_grok and at its end, every study run its fork snapshots, and
`interventions.load` turns any of them into a PyTorch module that reproduces what the run logged."""
import mlflow
import pytest
import torch

import interventions


@pytest.fixture(scope="module")
def saved(fork_smoke):
    """The shared smoke fork study (conftest.fork_smoke: checkpoints kept), its member runs by name."""
    client = mlflow.MlflowClient(fork_smoke.uri)
    exp = client.get_experiment_by_name(fork_smoke.experiment).experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([exp], "tags.role = 'member'")}
    return fork_smoke.uri, client, runs


def test_a_checkpoint_at_grok_reproduces_the_logged_test_accuracy(saved):
    uri, client, runs = saved
    grokked = [r for r in runs.values() if r.data.metrics.get("grokked") == 1 and "t_grok" in r.data.metrics]
    assert len(grokked) >= 4
    for r in grokked:
        model = interventions.load(r.info.run_id, at="grok", tracking_uri=uri)
        assert isinstance(model, torch.nn.Module) and model.step == r.data.metrics["t_grok"]
        n_test = int((~torch.isin(torch.arange(model.cfg.p ** 2), model.train_idx)).sum())
        assert model.accuracy("test") == pytest.approx(r.data.metrics["test_acc_at_grok"], abs=1.01 / n_test)
        assert model.accuracy("test") >= model.cfg.grok_threshold - 1.01 / n_test
        logits = model(torch.tensor([1, 2]), torch.tensor([3, 4]))
        assert logits.shape == (2, model.cfg.p)


def test_a_final_checkpoint_reproduces_the_last_logged_test_accuracy(saved):
    uri, client, runs = saved
    r = runs["free seed=0"]
    model = interventions.load(r.info.run_id, at="final", tracking_uri=uri)
    last = client.get_metric_history(r.info.run_id, "test/acc")[-1]
    assert model.step == r.data.metrics["final_step"] == last.step
    assert model.accuracy("test") == pytest.approx(last.value, abs=1e-6)


def test_the_fork_state_is_the_trunk_state_every_arm_started_from(saved):
    uri, client, runs = saved
    a = interventions.load(runs["free seed=1"].info.run_id, at="fork", tracking_uri=uri)
    b = interventions.load(runs["clamp_same seed=1"].info.run_id, at="fork", tracking_uri=uri)
    assert a.step == b.step == int(runs["free seed=1"].data.params["fork_step"])
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert a.accuracy("train") >= a.cfg.mem_threshold    # the fork point is after every seed memorized
    with pytest.raises(ValueError, match="does not fork"):
        interventions.load(runs["trunk seed=1"].info.run_id, at="fork", tracking_uri=uri)


def test_a_local_fork_snapshot_loaded_with_seed_is_that_seeds_member(saved, fork_smoke):
    """README: `interventions.load("mlruns/snapshots/<experiment>/forks/trunk@...pt", seed=3)`. The file holds
    every seed's state at the fork point; seed= picks one: the trunk member of that seed as it ended (its
    own final checkpoint, written from the cohort), not another seed's."""
    from interventions.execution.persist import snapshot_dir
    uri, client, runs = saved
    (path,) = (snapshot_dir(uri, fork_smoke.experiment) / "forks").glob("trunk@*.pt")
    step = int(runs["free seed=1"].data.params["fork_step"])
    m0, m1 = interventions.load(path, seed=0), interventions.load(path, seed=1)
    assert (m1.arm, m1.seed, m1.step) == ("trunk", 1, step) and (m0.seed, m0.step) == (0, step)
    own = interventions.load(runs["trunk seed=1"].info.run_id, at="final", tracking_uri=uri)
    assert own.step == step and torch.equal(m1.train_idx, own.train_idx)
    assert m1.weights.keys() == own.weights.keys()
    assert all(torch.equal(m1.weights[k], own.weights[k]) for k in own.weights)
    assert not any(torch.equal(m0.weights[k], m1.weights[k]) for k in m1.weights)
    assert not torch.equal(m0.train_idx, m1.train_idx)    # each seed draws its own split
    with pytest.raises(ValueError, match=r"fork snapshot of seeds \[0, 1\]; pass seed= one of them"):
        interventions.load(path, seed=2)


def test_a_checkpoint_that_was_not_kept_is_one_clear_error(saved):
    uri, client, runs = saved
    trunk = runs["trunk seed=0"]                          # stops at the fork point, before grokking
    assert trunk.data.metrics["grokked"] == 0
    with pytest.raises(FileNotFoundError, match="no checkpoints/grok.pt"):
        interventions.load(trunk.info.run_id, at="grok", tracking_uri=uri)


def test_the_report_draws_the_kept_embeddings_and_embeds_every_figure_in_report_html(fork_smoke):
    out = fork_smoke.folder / "report"
    assert sorted(p.name for p in out.glob("embedding_*.png")) == ["embedding_p_23_ce_mlp_float32.png"]
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    figures = [ln for ln in md.splitlines() if ln.startswith("![")]
    assert "![embedding](embedding_p_23_ce_mlp_float32.png)" in figures and len(figures) >= 4
    assert page.count('<img alt="') == page.count('src="data:image/png;base64,') == len(figures)
    assert "missing" not in page
    assert page.count("<table>") == sum(1 for a, b in zip(md.splitlines(), md.splitlines()[1:])
                                        if a.startswith("|") and b.startswith("|---"))


@pytest.mark.parametrize("model", ["mlp", "transformer_noln"])
def test_a_loaded_member_measures_what_its_cohort_measured(model, tmp_path):
    """Without MLflow: a member's checkpoint written to a file, loaded, gives the cohort's own train and
    test accuracy (the module's textbook forward against the engine's batched evaluation)."""
    from interventions.engine.checkpoints import member_checkpoint
    from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig
    from interventions.engine import snapshot
    cfg = CohortConfig(p=11, model=model, d_embed=16, d_hidden=32, d_model=16, n_heads=2, d_mlp=32, lr=1e-2,
                       log_every=25)
    c = Cohort(cfg, [MemberConfig(key="free/3", seed=3)])
    c.run(until=50)
    ev, s = c.evaluate(), c.member_state("free/3")
    snapshot.save(tmp_path / "m.pt", member_checkpoint(cfg, 3, "free", c.step, s.params, s.train_idx))
    m = interventions.load(tmp_path / "m.pt")
    assert (m.arm, m.seed, m.step) == ("free", 3, 50)
    assert m.accuracy("train") == pytest.approx(float(ev["train/acc"][0]), abs=1e-9)
    assert m.accuracy("test") == pytest.approx(float(ev["test/acc"][0]), abs=1e-9)
