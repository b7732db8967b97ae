"""Study files: validation, presets, --set, sweeps, the graph, --dry-run, and bad input (exit 2, one
message naming file + key path + reason, nothing written to the store)."""
import textwrap
from pathlib import Path

import pytest

from interventions.study.derive import derive
from interventions.study.graph import build_graph
from interventions.run import main
from interventions.study.spec import SpecError, load_study
from interventions.study.views import describe

MINI = """\
study: mini
design: fork
defaults:
  task: {p: 11, train_fraction: 0.4}
  model: {d_embed: 8, d_hidden: 16}
  seeds: 2
  budget: 500
  fork: {at: 100, when: all_memorized}
arms:
  - name: trunk
    trunk: true
  - name: free
    from: {arm: trunk}
  - name: clamp_same
    from: {arm: trunk}
    clamp: n0
  - name: clamp_raised
    from: {arm: trunk}
    clamp: n0
    rho: 1.15
    sweep: {tau: [1.3, 1.7]}
  - name: logit_matched
    from: {arm: trunk}
    clamp: n0
    rho: 1.15
    tau: {derive: logit_matched, sweep: [clamp_raised], target: clamp_same}
presets:
  small:
    defaults: {seeds: 3}
    arms: {clamp_raised: {rho: 1.3}}
"""


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_bundled_studies_validate_with_every_preset():
    for name in ("fork_study", "mediation", "collapse_grid"):
        for preset in ("smoke", "default", "paper"):
            g = build_graph(load_study(name, preset))
            assert g.order and all(a.seeds for a in g.arms.values())
    g = build_graph(load_study("fork_study", "paper"))
    assert {a.p for a in g.arms.values()} == {59, 97}
    assert len(g.study.defaults.seed_list()) == 12
    assert "clamp_raised_tau1.3_p97" in g.arms


def test_sweep_expands_and_logit_matched_depends_on_the_sweep(tmp_path):
    g = build_graph(load_study(write(tmp_path, MINI)))
    assert list(g.arms) == ["trunk", "free", "clamp_same", "clamp_raised", "clamp_raised_tau1.3",
                            "clamp_raised_tau1.7", "logit_matched"]
    assert g.arms["clamp_raised_tau1.7"].tau == 1.7 and g.arms["clamp_raised_tau1.7"].rho == 1.15
    lm = g.arms["logit_matched"]
    assert set(lm.deps) == {"clamp_raised", "clamp_raised_tau1.3", "clamp_raised_tau1.7", "clamp_same"}
    assert g.order.index("logit_matched") > max(g.order.index(d) for d in lm.deps)
    waves = g.waves()
    assert waves[0] == [["trunk"]] and waves[-1] == [["logit_matched"]]
    assert len(waves[1]) == 1 and len(waves[1][0]) == 5   # five arms from one snapshot: one cohort
    assert describe(g, "clamp_raised", fork_step=100) == "clamp at 1.15 x N0 from step 100, tau 1; forks trunk@100"


def test_preset_and_set_overlay(tmp_path):
    path = write(tmp_path, MINI)
    st = load_study(path, "small", ["arms.free.tau=1.5", "task.p=13", "defaults.budget=700"])
    g = build_graph(st)
    assert st.defaults.seed_list() == [0, 1, 2]
    assert g.arms["clamp_raised"].rho == 1.3 and g.arms["clamp_raised_tau1.3"].rho == 1.3
    assert g.arms["free"].tau == 1.5 and g.arms["free"].p == 13 and g.arms["free"].budget == 700
    assert "small" in st.resolved_yaml() and st.digest() != load_study(path).digest()


def test_logit_matched_tau_interpolates_at_target_L(tmp_path):
    """Over the sweep arms' "L at grok" (summary.arm_summary: the seed-mean curve at the median t_grok)."""
    g = build_graph(load_study(write(tmp_path, MINI)))

    def arm(L, grokked=True):
        return {"results": [], "summary": {"logit_scale_at_grok": L, "majority": int(grokked)}}
    done = {"clamp_raised": arm(30.0), "clamp_raised_tau1.3": arm(24.0), "clamp_raised_tau1.7": arm(18.0),
            "clamp_same": arm(21.0)}
    out = derive(g, "logit_matched", done)
    assert out["tau"] == pytest.approx(1.5)          # halfway between tau 1.3 (L 24) and 1.7 (L 18)
    assert out["tau_source"].startswith("derived:logit_matched(target=clamp_same")
    done["clamp_raised_tau1.7"] = arm(17.0, grokked=False)   # an arm without a grokking majority drops out
    assert derive(g, "logit_matched", done)["tau"] == pytest.approx(1.0 + 0.3 * (21 - 30) / (24 - 30))


def test_dry_run_prints_graph_and_writes_nothing(tmp_path, tracking_uri, capsys):
    rc = main(["fork_study", "--preset", "smoke", "--dry-run", "--tracking-uri", tracking_uri])
    out = capsys.readouterr().out
    assert rc == 0
    for text in ("trunk", "clamp_raised_tau1.3", "logit_matched", "derives from", "wave 3", "budget 800"):
        assert text in out
    assert not (tmp_path / "mlruns").exists()


# ---------------------------------------------------------------- bad input
BAD = [
    # (replace in MINI, by, expected key path, expected reason fragment)
    ("study: mini", "study: mini\nextra_top: 1", "extra_top", "unknown key"),
    ("train_fraction: 0.4}", "train_fraction: 0.4, q: 3}", "defaults.task.q", "unknown key"),
    ("    clamp: n0\n  - name: clamp_raised", "    clamp: n0\n    rhoo: 2\n  - name: clamp_raised",
     "arms.clamp_same.rhoo", "unknown key"),
    ("rho: 1.15\n    sweep", "rho: 1.15\n    tau: 0\n    sweep", "arms.clamp_raised.tau", "greater than 0"),
    ("sweep: {tau: [1.3, 1.7]}", "sweep: {tau: [1.3, -1]}", "arms.clamp_raised.sweep", "tau must be > 0"),
    ("rho: 1.15\n    sweep", "rho: -0.5\n    sweep", "arms.clamp_raised.rho", "greater than 0"),
    ("train_fraction: 0.4", "train_fraction: 1.0", "defaults.task.train_fraction", "less than 1"),
    ("train_fraction: 0.4", "train_fraction: 0", "defaults.task.train_fraction", "greater than 0"),
    ("p: 11", "p: 2", "defaults.task.p", "p must be >= 3"),
    ("  - name: free\n", "  - name: clamp_same\n", "arms[2]", "duplicate arm name 'clamp_same'"),
    ("  - name: free\n    from: {arm: trunk}", "  - name: free\n    from: {arm: trunkk}",
     "arms.free.from.arm", "unknown arm 'trunkk'"),
    ("  - name: free\n    from: {arm: trunk}", "  - name: free\n    from: {arm: clamp_same}\n"
     "  - name: x\n    from: {arm: free}", "arms.", "cycle"),  # completed below
    ("fork: {at: 100", "fork: {at: 600", "arms.free.from.at", "beyond the budget 500"),
    ("  task: {p: 11", "  task: {p: 11\n  [", "line ", "malformed YAML"),
    ("target: clamp_same}", "target: clamp_nope}", "arms.logit_matched.tau", "unknown arm 'clamp_nope'"),
]


def _cycle_text() -> str:
    return MINI.replace("  - name: free\n    from: {arm: trunk}",
                        "  - name: free\n    from: {arm: clamp_same}").replace(
        "  - name: clamp_same\n    from: {arm: trunk}", "  - name: clamp_same\n    from: {arm: free}")


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input_exits_2_with_one_clear_message(case, tmp_path, tracking_uri, capsys):
    old, new, key, reason = BAD[case]
    assert old in MINI
    text = _cycle_text() if "cycle" == reason else MINI.replace(old, new, 1)
    path = write(tmp_path, text, "bad_study.yaml")
    rc = main([str(path), "--tracking-uri", tracking_uri])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0, err                  # one message
    assert "bad_study.yaml" in err and key in err and reason in err, err
    assert not (tmp_path / "mlruns").exists()         # nothing written to the store


def test_a_binary_study_file_is_one_line_and_exit_2(tmp_path, tracking_uri, capsys):
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04\x80\x81\xfe\x00 not yaml")   # e.g. a checkpoint passed by mistake
    assert main([str(path), "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.pt" in err and "not a text (UTF-8) file" in err, err
    assert not (tmp_path / "mlruns").exists()


def test_bad_set_and_preset_and_study(tmp_path, tracking_uri, capsys):
    path = write(tmp_path, MINI)
    for argv, frag in ((["--set", "arms.free.tau=-1"], "arms.free.tau"),
                       (["--set", "arms.nope.tau=2"], "no arm named 'nope'"),
                       (["--set", "defaults.task.p=2"], "p must be >= 3"),
                       (["--set", "novalue"], "expected KEY=VALUE"),
                       (["--preset", "huge"], "no such preset")):
        assert main([str(path), "--tracking-uri", tracking_uri, *argv]) == 2
        err = capsys.readouterr().err
        assert frag in err, err
    assert main(["no_such_study", "--tracking-uri", tracking_uri]) == 2
    assert "no such study" in capsys.readouterr().err
    assert not (tmp_path / "mlruns").exists()


def test_unreachable_store_exits_2_and_creates_nothing(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    rc = main(["fork_study", "--preset", "smoke", "--tracking-uri", f"sqlite:///{blocker}/mlruns/mlflow.db"])
    err = capsys.readouterr().err
    assert rc == 2 and "fork_study.yaml" in err and "--tracking-uri" in err and "afile" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_spec_error_names_file_path_reason(tmp_path):
    with pytest.raises(SpecError) as e:
        load_study(write(tmp_path, MINI.replace("seeds: 2", "seeds: 0")))
    assert e.value.path == "defaults.seeds" and "at least one seed" in e.value.reason
