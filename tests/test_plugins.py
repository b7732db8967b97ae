"""An open toolkit: a plug-in module outside the package (examples/my_plugins.py: a lever at each hook, a
loss, an optimizer wrapper, a task) named by a study file (examples/plugin_study.yaml) dry-runs, trains,
resumes after SIGKILL identically, logs its params and provenance, and reports; unknown names and a
plug-in that fails to import are one line and exit 2; the registries behave as a user expects."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.netns import store_contents
from conftest import CLI_ENV, ROOT

EXAMPLE = ROOT / "examples" / "plugin_study.yaml"
EXPERIMENT = "plugin_example"


def cli(db: Path, *extra: str, faults: str | None = None, wait: bool = True):
    env = {**CLI_ENV, **({"GROKKING_FAULTS": faults} if faults else {})}
    cmd = [sys.executable, "-m", "interventions.run", str(EXAMPLE), "--no-progress", "--tracking-uri",
           f"sqlite:///{db}", *extra]
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=db.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    return subprocess.run(cmd, env=env, cwd=db.parent, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The example plug-in study, uninterrupted; its mlflow.db."""
    db = tmp_path_factory.mktemp("plugin_reference") / "mlflow.db"
    r = cli(db)
    assert r.returncode == 0, r.stderr[-3000:]
    return db


def test_the_plugin_study_dry_runs_and_names_every_plugin_arm(tmp_path):
    r = cli(tmp_path / "mlflow.db", "--dry-run")
    assert r.returncode == 0, r.stderr
    for text in ("op=plus_one", "optimizer clip (base adamw, max_norm 10", "embed_gain gain 2", "logit_cap cap 8",
                 "grad_ema alpha 0.9, lamb 1", "shrink rate 0.001", "loss ce"):
        assert text in r.stdout, text
    assert not (tmp_path / "mlflow.db").exists()


def test_the_plugin_study_resumes_after_sigkill_identically_and_logs_params_and_provenance(reference, tmp_path):
    """SIGKILLed while the ATen cohort that holds the grads lever (grad_ema's state in the snapshot) is held
    at its second checkpoint by a failpoint; the rerun ends with the same store."""
    db = tmp_path / "mlflow.db"
    proc = cli(db, faults="cohort.checkpoint/ctrl=sleep:120@2", wait=False)
    cohorts = tmp_path / "snapshots" / EXPERIMENT / "cohorts"
    end = time.monotonic() + 300
    while not list(cohorts.glob("ctrl+*.pt")) and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
    try:
        assert proc.poll() is None and list(cohorts.glob("ctrl+*.pt")), "never reached the held checkpoint"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    r = cli(db)
    resumed = [ln for ln in r.stdout.splitlines() if "from the snapshot" in ln]
    assert r.returncode == 0 and len(resumed) == 1 and "ema" in resumed[0].split("resuming ")[1], r.stdout + r.stderr
    assert store_contents(f"sqlite:///{db}", EXPERIMENT) == store_contents(f"sqlite:///{reference}", EXPERIMENT)

    from mlflow import MlflowClient
    from tracking.query import load_runs
    runs = load_runs(EXPERIMENT, f"sqlite:///{reference}")
    ema = runs[(runs.role == "member") & (runs.arm == "ema")].iloc[0]
    assert ema["grad_ema.alpha"] == 0.9 and ema["grad_ema.lamb"] == 1.0 and ema["optimizer"] == "clip"
    assert runs[(runs.role == "member") & (runs.arm == "ctrl")].iloc[0]["grad_ema.lamb"] == 0.0   # same keys
    assert runs[(runs.role == "member") & (runs.arm == "smoothed")].iloc[0]["loss.eps"] == 0.1
    kernels = dict(zip(runs[runs.role == "study"].columns, runs[runs.role == "study"].iloc[0]))["kernels"]
    assert set(kernels.split(",")) == {"generic", "aten"}   # the optimizer wrapper takes the native kernels out
    client = MlflowClient(f"sqlite:///{reference}")
    assert client.get_run(ema.run_id).data.tags["kernels"] == "aten"      # each run says which path trained it
    capped = runs[(runs.role == "member") & (runs.arm == "capped")].run_id.iloc[0]
    assert client.get_run(capped).data.tags["kernels"] == "generic"      # a logits lever: the generic path
    ctrl = runs[(runs.role == "member") & (runs.arm == "ctrl")].run_id.iloc[0]
    assert client.get_run(ctrl).data.tags["kernels"] == "aten"
    tags = MlflowClient(f"sqlite:///{reference}").get_run(runs[runs.role == "study"].run_id.item()).data.tags
    assert tags["plugin.my_plugins.version"] == "1.0" and len(tags["plugin.my_plugins.digest"]) == 16
    assert tags["plugin.my_plugins.file"] == str((ROOT / "examples" / "my_plugins.py").resolve())

    from analyses import report
    js = tmp_path / "report.json"
    assert report.main([EXPERIMENT, "--tracking-uri", f"sqlite:///{db}", "--out", str(tmp_path / "r"),
                        "--json", str(js)]) == 0
    assert "recovery" in js.read_text()


def test_a_changed_plugin_is_noticed_on_resume(tmp_path):
    """The plug-in's source is part of the resume digest: edited after a run, the rerun is refused (exit 2)
    with the plug-in named; --fresh starts over."""
    for f in ("plugin_study.yaml", "my_plugins.py"):
        (tmp_path / f).write_text((ROOT / "examples" / f).read_text())
    cmd = [sys.executable, "-m", "interventions.run", str(tmp_path / "plugin_study.yaml"), "--no-progress",
           "--set", "budget=60", "--set", "seeds=1", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert subprocess.run(cmd, env=CLI_ENV, capture_output=True, text=True, timeout=300).returncode == 0
    with open(tmp_path / "my_plugins.py", "a") as f:
        f.write("\n# edited\n")
    r = subprocess.run(cmd, env=CLI_ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("error:") == 1, r.stderr
    assert "plug-in my_plugins changed (source digest" in r.stderr and "--fresh" in r.stderr, r.stderr
    assert subprocess.run([*cmd, "--fresh"], env=CLI_ENV, capture_output=True, text=True, timeout=300).returncode == 0


STUDY = """\
study: names
plugins: [{plugin}]
defaults:
  task: {{op: {op}, p: 11}}
  model: {{kind: {model}, d_embed: 8, d_hidden: 16}}
  optimizer: {{kind: {optimizer}}}
  loss: {loss}
  seeds: 1
  budget: 50
arms:
  - name: a
    {lever}: {{lamb: 1}}
"""
GOOD = dict(plugin="my_plugins", op="add", model="mlp", optimizer="adamw", loss="ce", lever="grad_ema")
BAD = [   # (what, its bad value, the key path named, a registered name the message lists)
    ("op", "pow", "defaults.task", "plus_one"),
    ("model", "rnn", "defaults.model.kind", "transformer_noln"),
    ("optimizer", "lion", "defaults.optimizer.kind", "clip"),
    ("loss", "hinge", "defaults.loss", "smoothed_ce"),
    ("lever", "grad_emma", "arms.a.grad_emma", "grad_ema"),
    ("plugin", "no_such_plugin", "plugins[0]", "ModuleNotFoundError"),
    ("plugin", "broken_plugin", "plugins[0]", "ZeroDivisionError"),
]


@pytest.mark.parametrize("case", BAD, ids=[f"{c[0]}={c[1]}" for c in BAD])
def test_an_unknown_name_or_a_failing_plugin_is_one_line_exit_2_naming_file_key_and_the_registered(
        case, tmp_path, capsys):
    from interventions.run import main
    what, value, key, listed = case
    (tmp_path / "my_plugins.py").write_text((ROOT / "examples" / "my_plugins.py").read_text())
    (tmp_path / "broken_plugin.py").write_text("x = 1 / 0\n")
    path = tmp_path / "bad_names.yaml"
    path.write_text(STUDY.format(**{**GOOD, what: value}))
    assert main([str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad_names.yaml" in err and key in err and listed in err, err
    assert not (tmp_path / "mlruns").exists()


def test_registries_list_the_bundled_entries_and_refuse_a_name_taken_by_another_class():
    from interventions.registry import LEVERS, LOSSES, MODELS, OPTIMIZERS, TASKS, Registry, UnknownName
    assert {"clamp", "tau"} <= set(LEVERS.names()) and {"ce", "mse"} <= set(LOSSES.names())
    assert "adamw" in OPTIMIZERS.names() and {"mlp", "transformer", "transformer_noln"} <= set(MODELS.names())
    assert {"add", "sub", "mul", "div", "x2xyy2", "s5"} <= set(TASKS.names())
    reg = Registry("thing")

    @reg.register("a")
    class A:
        pass
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(type("B", (), {}))
    with pytest.raises(UnknownName, match=r"unknown thing 'b' \(registered: a\)"):
        reg.get("b")


def test_bundled_tasks_are_what_they_say():
    """x^2 + xy + y^2 mod p; S5's table is a group (identity, inverses, associativity), not abelian."""
    from interventions.registry import TASKS
    x2 = TASKS.get("x2xyy2")
    assert x2.label(3, 4, 7) == (9 + 12 + 16) % 7 and x2.n_pairs(7) == 49
    s5 = TASKS.get("s5")
    labels, n = s5.labels(120), 120
    mul = lambda a, b: labels[a * n + b]  # noqa: E731
    e = next(i for i in range(n) if all(mul(i, b) == b for b in range(n)))
    assert all(mul(a, e) == a for a in range(n))
    assert all(any(mul(a, b) == e for b in range(n)) for a in range(n))
    assert all(mul(mul(a, b), c) == mul(a, mul(b, c)) for a in range(0, n, 7) for b in range(0, n, 5) for c in range(n))
    assert any(mul(a, b) != mul(b, a) for a in range(n) for b in range(n))


def test_a_fast_path_and_the_generic_path_agree_on_values_gradients_and_the_evaluation():
    """float64, from the same state: three steps of ATen (and native, where built) against three of the
    generic path; the MLPs and the transformers, CE and MSE, with the clamp and tau acting, and on the ATen
    path a Grokfast filter in one member (a grads lever, between its backward and the optimizer) and
    StableMax's closed-form gradient."""
    import torch
    from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig
    from interventions.vocab import Levers

    def members(fast):
        ema = {"grokfast_ema": {"alpha": 0.9, "lamb": 2.0}} if fast == "aten" else {}
        return [MemberConfig(key=f"m{i}", seed=i, lever=Levers.of(tau=(1.0, 1.7)[i], clamp="absolute", target=9.0,
                                                                   t_int=3, **(ema if i else {}))) for i in range(2)]
    for model, loss, fast in (("mlp", "ce", "aten"), ("mlp", "mse", "aten"), ("mlp", "ce", "native"),
                              ("mlp", "mse", "native"), ("transformer", "mse", "aten"),
                              ("transformer_noln", "ce", "aten"), ("deep_mlp", "ce", "aten"),
                              ("deep_mlp", "mse", "aten"), ("mlp", "stablemax", "aten"), ("deep_mlp", "stablemax", "aten")):
        cfg = dict(p=11, model=model, loss=loss, d_embed=16, d_hidden=32, d_model=16, n_heads=2, d_mlp=32,
                   hidden=[24, 16], precision="float64", lr=1e-2)
        try:
            a = Cohort(CohortConfig(**cfg, kernels=fast), members(fast))
        except ValueError:      # native kernels not built on this machine
            assert fast == "native"
            continue
        a.run(until=5)
        g = Cohort.from_state({**a.state_dict(), "cfg": {**a.state_dict()["cfg"], "kernels": "generic"}})
        assert (a.kernels, g.kernels) == (fast, "generic")
        a.run(until=8)
        g.run(until=8)
        for n in a.P:
            assert torch.allclose(a.P[n], g.P[n], rtol=1e-9, atol=1e-12), (model, loss, fast, n)
            assert torch.allclose(a.m2[n], g.m2[n], rtol=1e-9, atol=1e-18), (model, loss, fast, n)
        if fast == "aten":
            ha, hg = a.levers["grokfast_ema"].mem, g.levers["grokfast_ema"].mem
            assert all(torch.allclose(ha[n], hg[n], rtol=1e-9, atol=1e-15) for n in ha), (model, loss)
        ea, eg = a.evaluate(full=True), g.evaluate(full=True)
        for k in ea:
            assert torch.allclose(ea[k], eg[k], rtol=1e-9, atol=1e-12), (model, loss, fast, k)


def test_the_plugin_study_on_the_local_ray_executor_equals_the_local_executor(reference, tmp_path):
    """The plug-in reaches the Ray workers with each task (Ray's py_modules, from the study's own folder),
    and the store ends as the local executor's, bit for bit."""
    pytest.importorskip("ray")
    from benchmarks import netns
    db = tmp_path / "mlflow.db"
    env = {**netns.ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "interventions.run", str(EXAMPLE), "--no-progress", "--executor", "ray",
                        "--tracking-uri", f"sqlite:///{db}"], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=900, start_new_session=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert store_contents(f"sqlite:///{db}", EXPERIMENT) == store_contents(f"sqlite:///{reference}", EXPERIMENT)


def test_a_snapshot_names_the_plugin_it_needs_and_loading_without_it_says_so(tmp_path, monkeypatch):
    import shutil

    import torch
    from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig
    from interventions.registry import PluginError
    from interventions.study.spec import load_study
    from interventions.vocab import Levers
    for f in ("plugin_study.yaml", "my_plugins.py"):
        shutil.copy(ROOT / "examples" / f, tmp_path / f)
    load_study(tmp_path / "plugin_study.yaml")     # imports my_plugins from tmp_path
    c = Cohort(CohortConfig(p=11, op="plus_one", d_embed=8, d_hidden=16),
               [MemberConfig(key="m", seed=0, lever=Levers.of(grad_ema={"lamb": 1.0}))])
    c.run(until=3)
    state = c.state_dict()
    assert state["plugins"] == {"my_plugins": "1.0"} and bool(state["levers"]["grad_ema"]["started"].all())
    assert torch.equal(Cohort.from_state(state).P["E"], c.P["E"])
    monkeypatch.delitem(sys.modules, "my_plugins")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (Path(p) / "my_plugins.py").exists()])
    with pytest.raises(PluginError, match=r"this cohort snapshot needs plug-in my_plugins \(version 1.0\)"):
        Cohort.from_state(state)
