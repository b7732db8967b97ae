"""The benchmarks' stated FLOP counts are the matrix products the engine runs, and the commands run end to end
(a few steps each: figures are for docs/performance.md, never asserted here)."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import engine, flops, late
from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig

SMALL = dict(d_embed=16, d_hidden=32, d_model=16, n_heads=2, d_mlp=32, hidden=[24, 16], kernels="aten")


@pytest.mark.parametrize("model", ["mlp", "deep_mlp", "transformer_noln"])
def test_the_stated_flop_counts_are_the_products_of_a_training_step_and_an_evaluation(model):
    c = Cohort(CohortConfig(p=13, model=model, **SMALL), [MemberConfig(key=0, seed=0)])
    N, V, C = c.train_idx.shape[1], c.task.vocab, c.task.n_classes
    stated = flops.COUNTS[model](c, N, V, C)
    with FlopCounterMode(display=False) as train:
        c.backend.train(c, 1)
    with FlopCounterMode(display=False) as evaluation:
        c.evaluate()
    counted = {"engine": train.get_total_flops(), "engine_eval": evaluation.get_total_flops()}
    if model == "mlp":   # the counter also sees the readout's padded classes and the sparse scatter as dense
        H, pad = c.model.H, c.model.p_pad - C
        counted["engine"] -= 3 * 2 * N * H * pad + 2 * (2 * V) * N * H
        counted["engine_eval"] -= 2 * V * V * H * pad
    assert {k: stated[k] for k in counted} == counted
    assert stated["textbook"] > stated["engine"]


def test_the_engine_benchmark_prints_efficiency_for_every_path_and_the_textbook_loop(capsys):
    out = engine.main(["--steps", "4", "--reference-steps", "2", "--blocks", "1", "--members", "2", "--p", "11",
                       "--kernels", "all", "--lever", "grokfast_ema", "--loss", "ce"])
    text = capsys.readouterr().out
    assert "efficiency" in text and "torch.mm" in text and "reference" in text
    assert out["matmul_gflops"] > 0 and out["levers"] == {"grokfast_ema": {"alpha": 0.98, "lamb": 2.0}}
    assert {"aten", "generic"} <= set(out["paths"])   # the filter: on the ATen path, not the plain cell
    for path in out["paths"].values():
        assert path["efficiency"] == pytest.approx(path["gflops"] / out["matmul_gflops"])


def test_a_late_snapshot_is_made_timed_with_subnormals_both_ways_and_its_census_taken(tmp_path, capsys):
    snap = tmp_path / "late.pt"
    late.main(["make", str(snap), "--members", "2", "--steps", "3"])
    out = engine.main(["--late", str(snap), "--steps", "2", "--blocks", "1", "--kernels", "aten",
                       "--subnormals", "both"])
    assert set(out["paths"]) == {"aten (late) flush", "aten (late) keep"} and out["start_step"] == 3
    late.main(["census", str(snap), "--steps", "1"])
    text = capsys.readouterr().out
    assert "operations see subnormals" in text and "optimizer exp_avg:" in text
    assert torch.load(snap, weights_only=False)["cfg"]["model"] == "mlp"
