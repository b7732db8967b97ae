"""Checkpoints users load (README, "Load a trained model"): with `save: {at_grok: true, final: true}` every
member run holds its parameters at t_grok and at its end, every study run its fork snapshots, and
`interventions.load` turns any of them into a PyTorch module that reproduces what the run logged."""
from pathlib import Path

import mlflow
import pytest
import torch

import interventions
from interventions.graph import build_graph
from interventions.runner import run_study
from interventions.spec import load_study


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('ckpt') / 'mlflow.db'}"
    # smoke with budget 3000: every arm groks (the preset's 800 cuts clamp_raised), so the report has designs
    study = load_study("fork_study", "smoke", sets=["budget=3000", "defaults.save.at_grok=true",
                                                     "defaults.save.final=true"])
    run_study(build_graph(study), uri=uri, experiment="ckpt", progress=False, log=lambda *_: None)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("ckpt").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([exp], "tags.role = 'member'")}
    return uri, client, runs


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


def test_a_checkpoint_that_was_not_kept_is_one_clear_error(saved):
    uri, client, runs = saved
    trunk = runs["trunk seed=0"]                          # stops at the fork point, before grokking
    assert trunk.data.metrics["grokked"] == 0
    with pytest.raises(FileNotFoundError, match="no checkpoints/grok.pt"):
        interventions.load(trunk.info.run_id, at="grok", tracking_uri=uri)


def test_the_report_draws_the_kept_embeddings_and_embeds_every_figure_in_report_html(saved, tmp_path):
    from analyses.report import make_report
    uri, client, runs = saved
    made = make_report("ckpt", uri, tmp_path, tmp_path / "report.json", log=False)
    pca = [Path(f).name for f in made["files"] if Path(f).name.startswith("embedding_")]
    assert pca == ["embedding_p_23_ce_mlp_float32.png"]     # one group: p 23, ce, mlp, float32
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    figures = [ln for ln in md.splitlines() if ln.startswith("![")]
    assert len(figures) >= 4 and page.count('<img alt="') == len(figures)
    assert page.count("src=\"data:image/png;base64,") == len(figures) and "missing" not in page
    assert page.count("<table>") == sum(1 for a, b in zip(md.splitlines(), md.splitlines()[1:])
                                        if a.startswith("|") and b.startswith("|---"))
