"""Beyond the paper: the mediator clamp do(L) holds what it says it holds; the three bundled studies print
their paper-scale graphs, train their smoke presets and report their sections; an arm forks across a loss
or an optimizer and its runs say what it carried; a new study's smoke preset on the local Ray executor
equals the local run."""
import io
import json
import subprocess
import sys

import pytest
import torch

from analyses import accelerators, report
from benchmarks.netns import store_contents
from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig
from interventions.execution.studies import run_study
from interventions.run import main
from interventions.study.graph import build_graph
from interventions.study.spec import load_study
from interventions.vocab import Levers
from tracking.query import load_members, load_runs

TINY = dict(p=11, d_embed=16, d_hidden=32, lr=1e-2, log_every=5, eval_every=5, kernels="generic")
STUDIES = {"mediator_clamp": "mediator_clamp", "stablemax": "loss_contrast", "accelerators": "accelerators"}


def held_cohort(L_star=6.0, t_int=8):
    held = Levers.of(logit_norm={"target": L_star, "t_int": t_int})
    return Cohort(CohortConfig(**TINY), [MemberConfig(key="held", seed=0, lever=held),
                                         MemberConfig(key="free", seed=0)])


def test_logit_norm_holds_the_training_pairs_logit_scale_at_L_star_at_every_step_from_t_int():
    c = held_cohort()
    lever, seen = c.levers["logit_norm"], []
    plain = lever.logits

    def watch(z, rows):
        out = plain(z, rows)
        if rows.start == 0:     # the held member's group: the mean |z| over its training pairs, as stepped
            seen.append(float(torch.linalg.vector_norm(out.detach().double(), dim=-1).mean()))
        return out
    lever.logits = watch
    c.run(until=40)
    assert len(seen) == 40
    assert all(abs(x - 6.0) > 1e-3 for x in seen[:7])                        # steps 1-7: free
    assert all(abs(x - 6.0) <= 1e-5 * 6.0 for x in seen[7:])                 # step 8 on: held at L*
    curves = c.curves("held")
    held = dict(curves["logit/train_scale"])
    assert all(abs(v - 6.0) <= 1e-5 * 6.0 for s, v in held.items() if s >= 10)   # logged: the held quantity
    all_pairs = dict(curves["logit/scale"])                                  # ... and the all-pairs one beside it
    assert all(abs(all_pairs[s] - held[s]) > 1e-3 for s in held if s >= 10)


def test_a_member_without_logit_norm_trains_bit_for_bit_as_in_a_cohort_without_it():
    c = held_cohort()
    alone = Cohort(CohortConfig(**TINY), [MemberConfig(key="free", seed=0)])
    c.run(until=30)
    alone.run(until=30)
    i = c.active.index("free")
    assert all(torch.equal(c.P[n][i], alone.P[n][0]) for n in c.names)


@pytest.mark.parametrize("study", STUDIES)
def test_the_paper_preset_prints_its_graph(study, capsys):
    assert main([study, "--preset", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"study {study}" in out and "wave 2" in out and "nothing trained" in out


def test_the_beyond_suite_runs_the_three_studies(capsys):
    assert main(["beyond", "--preset", "smoke", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(f"study {s} (" in out for s in STUDIES)


@pytest.fixture(scope="module", params=list(STUDIES))
def smoke(request, tmp_path_factory):
    study, tmp = request.param, tmp_path_factory.mktemp(request.param)
    uri, name = f"sqlite:///{tmp / 'mlflow.db'}", f"{study}-smoke"
    arms = run_study(build_graph(load_study(study, "smoke")), uri=uri, experiment=name, progress=False,
                     log=lambda *_: None)
    js = tmp / "report.json"
    assert report.main([name, "--tracking-uri", uri, "--out", str(tmp / "report"), "--json", str(js)]) == 0
    md = (tmp / "report" / "report.md").read_text()
    return study, uri, name, arms, json.loads(js.read_text()), md


def test_the_smoke_preset_trains_and_the_report_computes_its_section(smoke):
    study, _, _, arms, res, md = smoke
    (row,) = res[STUDIES[study]]
    assert all(a["status"] == "done" for a in arms.values())
    if study == "mediator_clamp":
        assert row["free"]["slope"] is not None and row["held"]["slope"] is not None
        assert {c["arm"] for c in row["dose"]["cells"]} == {"held_rho1.15", "dose_logit_norm.rho0.8",
                                                            "dose_logit_norm.rho1.25"}
        assert "Held minus free slope" in md
    elif study == "stablemax":
        assert [r["loss"] for r in row["losses"]] == ["ce", "stablemax"]
        assert all(r["T0"] is not None and r["delay_ci"][0] is not None for r in row["losses"])
    else:
        parts = {p["start"]: p for p in row["parts"]}
        forked = {x["arm"]: x for x in parts["fork"]["levers"]}
        assert set(forked) == {"grokfast", "grokfast_wd0", "orthograd", "orthograd_wd0", "stablemax", "stablemax_wd0"}
        assert forked["stablemax"]["control"] == "free" and forked["stablemax_wd0"]["control"] == "free_wd0"
        assert forked["stablemax"]["changed"] == "loss stablemax (bits 64)"
        assert forked["orthograd"]["changed"].startswith("optimizer orthograd")
        assert forked["grokfast"]["changed"] == "grokfast_ema (alpha 0.98, lamb 2)"
        assert {x["control"] for x in parts["init"]["levers"]} == {"init_free"}
        assert all(x["route"] for p in row["parts"] for x in p["levers"])
        # StableMax's L is on its own scale: no part of its effect is put through the CE arms' slope
        assert forked["stablemax"]["through_L"] is None and not forked["stablemax"]["same_loss"]


@pytest.mark.parametrize("smoke", ["mediator_clamp"], indirect=True)
def test_logit_norm_takes_its_target_from_an_arms_L_at_grok_and_says_so(smoke):
    arms = smoke[3]
    L = arms["free"]["summary"]["logit_scale_at_grok"]
    for name, rho in (("held", 1.0), ("held_rho1.15", 1.0), ("dose_logit_norm.rho0.8", 0.8)):
        p = arms[name]["params"]
        assert p["logit_norm.target"] == pytest.approx(L) and p["logit_norm.rho"] == rho
        assert p["logit_norm.L_star"] == pytest.approx(rho * L)
        assert p["logit_norm.target_source"] == "derived:logit_scale_at_grok(free)"
        assert p["logit_norm.t_int"] == 50
    assert arms["free"]["params"]["logit_norm.target"] is None


@pytest.mark.parametrize("smoke", ["accelerators"], indirect=True)
def test_an_arm_forks_across_a_loss_or_an_optimizer_and_its_runs_say_what_it_carried(smoke):
    _, uri, name, arms, _, _ = smoke
    runs = load_runs(name, uri, role="arm").set_index("arm")
    from tracking.store import client
    tags = {a: client(uri).get_run(runs.at[a, "run_id"]).data.tags for a in ("stablemax", "orthograd", "grokfast")}
    assert tags["stablemax"]["fork.carried"] == "parameters, exp_avg, exp_avg_sq"
    assert tags["grokfast"]["fork.dropped"] == "nothing"
    assert arms["stablemax"]["params"]["loss"] == "stablemax" and arms["orthograd"]["params"]["optimizer"] == "orthograd"
    members = load_members(name, uri)
    assert (members.loc[members["arm"] == "stablemax", "fork_step"] == arms["free"]["params"]["fork_step"]).all()


@pytest.mark.parametrize("smoke", ["accelerators"], indirect=True)
def test_a_new_studys_smoke_preset_on_the_local_ray_executor_equals_the_local_run(smoke, tmp_path):
    """Grokfast state, an optimizer wrapper, a second loss and an init lever on the workers, as locally."""
    pytest.importorskip("ray")
    from benchmarks import netns
    _, uri, name, _, _, _ = smoke
    db = tmp_path / "mlflow.db"
    env = {**netns.ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "interventions.run", "accelerators", "--preset", "smoke",
                        "--no-progress", "--executor", "ray", "--experiment", name, "--tracking-uri", f"sqlite:///{db}"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900, start_new_session=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    local = {k: v for k, v in store_contents(uri, name).items() if k != "report"}   # the fixture reported
    assert store_contents(f"sqlite:///{db}", name) == local


def test_a_snapshot_of_a_forked_cohort_with_grokfast_state_resumes_bit_identically():
    """A trunk with Grokfast's filter forks into two arms (the filter carried: one keeps it, one changes
    lamb); a snapshot of that cohort mid-run, restored, continues exactly as the uninterrupted run."""
    cfg = CohortConfig(**{**TINY, "eval_every": 5, "log_every": 10})
    ema = Levers.of(grokfast_ema={"alpha": 0.9, "lamb": 1.0})
    trunk = Cohort(cfg, [MemberConfig(key=("trunk", s), seed=s, lever=ema) for s in (0, 1)])
    trunk.run(until=12)
    fork = [trunk.member_state(("trunk", s)) for s in (0, 1)]
    arms = {"same": ema, "more": Levers.of(grokfast_ema={"alpha": 0.9, "lamb": 3.0})}

    def child():
        return Cohort(cfg, [MemberConfig(key=(a, s), seed=s, lever=lv) for a, lv in arms.items() for s in (0, 1)],
                      [fork[s] for _ in arms for s in (0, 1)])
    whole, cut = child(), child()
    assert any(v.abs().sum() > 0 for v in fork[0].lever_state["grokfast_ema"].values()
               if v.is_floating_point())                                 # the fork carries the filter's memory
    whole.run(until=40)
    cut.run(until=23)
    state = cut.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    resumed = Cohort.from_state(torch.load(buf, weights_only=False))
    resumed.run(until=40)
    for n in whole.names:
        assert torch.equal(resumed.P[n], whole.P[n]), n
        assert all(torch.equal(resumed.S[b][n], whole.S[b][n]) for b in whole.S), n
    a, b = resumed.levers["grokfast_ema"].state_dict(), whole.levers["grokfast_ema"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.curves(("more", 1)) == whole.curves(("more", 1))
    assert not torch.equal(whole.P["E"][0], whole.P["E"][2])      # the two arms did train apart


def lever_row(total, through, prop, same_loss=True, majority=(True, True), grokked=("8/8", "8/8")):
    return {"total_ci": total, "through_L_ci": through, "prop_ci": prop, "prop_mediated": sum(prop) / 2
            if prop[0] is not None else None, "same_loss": same_loss, "majority": majority[0],
            "majority_control": majority[1], "grokked": grokked[0], "grokked_control": grokked[1]}


@pytest.mark.parametrize("row, said", [
    (lever_row([0.1, 0.3], [0.08, 0.2], [0.6, 0.9]), "acts mostly through L (proportion mediated"),
    (lever_row([-2.5, -2.1], [-0.12, -0.08], [0.03, 0.05]), "acts mostly outside L"),
    (lever_row([0.06, 0.1], [0.04, 0.06], [0.46, 0.78]), "acts partly through L"),
    (lever_row([0.5, 0.8], [1.3, 1.5], [1.9, 2.7]), "through L more than its whole effect"),
    (lever_row([0.5, 0.8], [-0.1, 0.2], [-0.2, 0.4]), "acts on the delay; no part through L"),
    (lever_row([-0.1, 0.3], [0.0, 0.1], [0.1, 0.9]), "no effect on the delay that the interval can tell"),
    (lever_row([0.5, 0.8], [None, None], [None, None], same_loss=False), "changes the loss"),
    (lever_row([None, None], [None, None], [None, None], majority=(True, False), grokked=("8/8", "0/8")),
     "groks where its control does not (8/8 against 0/8 seeds grokked)"),
    (lever_row([None, None], [None, None], [None, None], majority=(False, False), grokked=("1/8", "0/8")),
     "not estimable (1/8 against 0/8 seeds grokked)"),
])
def test_a_levers_route_to_the_delay_is_read_off_its_intervals(row, said):
    assert accelerators.route(row).startswith(said)
