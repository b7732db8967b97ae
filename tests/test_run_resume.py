"""Acceptance 2: SIGKILL at several points, rerun the same command, and end with the same runs, no
duplicate run or metric step, nothing left RUNNING, and results identical to an uninterrupted run."""
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks import netns
from conftest import CLI_ENV, run_smoke, smoke_command

ROOT = Path(__file__).resolve().parents[1]
ENV = CLI_ENV
command = smoke_command


def run_to_end(db: Path, *extra: str) -> str:
    return run_smoke(db, *extra).stdout


def ctrl_c_as_in_a_terminal() -> None:
    """A job started in the background (`cmd &`, as CI may start the suite) inherits SIGINT ignored, and
    Python keeps an inherited SIG_IGN; a user's terminal gives the study the default, as here."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kill_when(db: Path, ready, *extra: str, sig=signal.SIGKILL, timeout: float = 240.0) -> tuple[int, str]:
    """Start the command, send `sig` as soon as ready() is true (checked every 20 ms); (exit status, its
    stdout + stderr). After SIGKILL its tracking process must end too (README: no orphan writer)."""
    log = db.parent / "interrupted.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command(db, *extra), env=ENV, cwd=db.parent, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=ctrl_c_as_in_a_terminal)
        t0 = time.monotonic()
        while not ready():
            assert proc.poll() is None, f"finished before the kill point: {log.read_text()[-2000:]}"
            assert time.monotonic() - t0 < timeout, "kill point never reached"
            time.sleep(0.02)
        children = netns.descendants(proc.pid)
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
    if sig == signal.SIGKILL:
        end = time.monotonic() + 20
        while any(netns.alive(c) for c in children) and time.monotonic() < end:
            time.sleep(0.1)
        left = [c for c in children if netns.alive(c)]
        for c in left:
            os.kill(c, signal.SIGKILL)
        assert not left, f"processes {left} outlived their SIGKILLed parent"
    return rc, log.read_text()


def snapshots(db: Path) -> Path:
    return db.parent / "snapshots" / "fork_study-smoke"


def member_summaries(db: Path) -> dict:
    state = json.loads((snapshots(db) / "state.json").read_text())
    assert state["finished"]
    return {arm: a["results"] for arm, a in state["arms"].items()}


def store(db: Path) -> dict:
    """Runs (name -> status), metric rows per (run name, key, step) and any duplicated (run, key, step)."""
    con = sqlite3.connect(db)
    runs = con.execute("SELECT run_uuid, name, status FROM runs WHERE lifecycle_stage = 'active'").fetchall()
    names = {u: n for u, n, _ in runs}
    metrics = con.execute("SELECT run_uuid, key, step, value FROM metrics").fetchall()
    dup = con.execute("SELECT run_uuid, key, step, COUNT(*) FROM metrics GROUP BY run_uuid, key, step "
                      "HAVING COUNT(*) > 1").fetchall()
    con.close()
    return {"names": sorted(names.values()), "status": {n: s for _, n, s in runs},
            "metrics": {(names[u], k, s): v for u, k, s, v in metrics if u in names}, "dup": dup}


@pytest.fixture(scope="module")
def reference(smoke_db) -> Path:
    """An uninterrupted smoke run of fork_study; its mlflow.db (conftest)."""
    return smoke_db


def test_sigkill_at_several_points_then_resume_matches_uninterrupted(tmp_path, reference):
    ref = reference

    db = tmp_path / "killed" / "mlflow.db"
    db.parent.mkdir()
    snap = snapshots(db)
    cohorts = snap / "cohorts"
    kill_when(db, lambda: (snap / "forks" / "trunk@100m.pt").exists())                 # after the trunk
    kill_when(db, lambda: cohorts.is_dir() and any(p.name.startswith("free+")          # mid-arms
                                                    for p in cohorts.glob("*.pt")))
    # the same experiment with other settings is refused (exit 2, one line), store and snapshots untouched
    before, state = store(db), (snap / "state.json").read_text()
    other = subprocess.run(command(db, "--set", "seeds=3"), env=ENV, cwd=db.parent, capture_output=True, text=True,
                           timeout=300)
    assert other.returncode == 2 and other.stderr.count("error:") == 1, other.stderr[-2000:]
    assert store(db) == before and (snap / "state.json").read_text() == state
    # Ctrl-C: exit 130, the open runs marked KILLED (none left RUNNING); the rerun resumes
    resumed = db.parent / "interrupted.log"   # kill_when's output: SIGINT once training has resumed
    rc, out = kill_when(db, lambda: "resuming free" in resumed.read_text(), sig=signal.SIGINT)
    assert rc == 130 and "interrupted" in out, out[-2000:]
    status = set(store(db)["status"].values())
    assert "KILLED" in status and "RUNNING" not in status, status
    kill_when(db, lambda: cohorts.is_dir() and any(p.name.startswith("logit_matched")  # last wave
                                                    for p in cohorts.glob("*.pt")))
    out = run_to_end(db)
    assert "logit_matched" in out

    assert member_summaries(db) == member_summaries(ref)
    a, b = store(db), store(ref)
    assert a["names"] == b["names"] and len(a["names"]) == 31          # 1 study + 10 arms + 20 members
    assert set(a["status"].values()) == {"FINISHED"}
    assert a["dup"] == [] and b["dup"] == []
    assert a["metrics"].keys() == b["metrics"].keys()
    assert a["metrics"] == b["metrics"]                                # every curve point, bit for bit

    # a finished study is not retrained ...
    out = run_to_end(db)
    assert "already finished" in out and "--fresh" in out
    assert store(db)["metrics"] == a["metrics"]
    # ... unless --fresh, which deletes the study's old runs and snapshots, then trains again
    old_state = (snap / "state.json").read_text()
    _, out = kill_when(db, lambda: (snap / "state.json").exists() and (snap / "state.json").read_text() != old_state
                       and (snap / "forks" / "trunk@100m.pt").exists(), "--fresh")
    assert "--fresh: deleted 31 runs of study 'fork_study'" in out, out[-2000:]
    con = sqlite3.connect(db)
    deleted = con.execute("SELECT COUNT(*) FROM runs WHERE lifecycle_stage = 'deleted'").fetchone()[0]
    con.close()
    assert deleted == 31
    assert not json.loads((snap / "state.json").read_text())["finished"]
    # ... and the fresh run, resumed after that kill, ends identical to a first run
    run_to_end(db)
    assert member_summaries(db) == member_summaries(ref)
    assert store(db)["metrics"] == b["metrics"] and store(db)["dup"] == []


def test_runs_follow_the_mlflow_contract(reference):
    from tracking.query import load_runs
    uri = f"sqlite:///{reference}"
    runs = load_runs("fork_study-smoke", uri)
    assert sorted(runs.role.value_counts().items()) == [("arm", 10), ("member", 20), ("study", 1)]
    assert set(runs.status) == {"FINISHED"} and set(runs.study) == {"fork_study"}
    arms, members = runs[runs.role == "arm"].set_index("run_name"), runs[runs.role == "member"]
    study_id = runs[runs.role == "study"].run_id.item()
    assert set(arms.parent_run_id) == {study_id} and set(members.parent_run_id) <= set(arms.run_id)
    assert members.run_name.str.fullmatch(r"[\w.]+ seed=\d").all()
    # identical param keys on every arm and member run (members add seed)
    from mlflow import MlflowClient
    c = MlflowClient(uri)
    keys = {r: set(c.get_run(r).data.params) for r in runs.run_id[runs.role != "study"]}
    arm_keys = keys[arms.run_id.iloc[0]]
    assert {"arm", "p", "model", "loss", "precision", "rho", "tau", "clamp", "gamma", "train_fraction", "lr",
            "weight_decay", "t_int", "w_c", "budget", "eval_every", "fork_from", "fork_step", "tau_source",
            "design"} <= arm_keys
    assert all(k == arm_keys for r, k in keys.items() if r in set(arms.run_id))
    assert all(k == arm_keys | {"seed"} for r, k in keys.items() if r in set(members.run_id))
    # levers and the derived tau
    assert arms.loc["clamp_raised", "rho"] == 1.15 and arms.loc["clamp_raised_tau1.3", "tau"] == 1.3
    assert arms.loc["logit_matched", "tau_source"].startswith("derived:logit_matched(target=clamp_same")
    assert 1.0 < arms.loc["logit_matched", "tau"] < 1.7 and arms.loc["free", "fork_from"] == "trunk"
    note = c.get_run(arms.loc["clamp_raised", "run_id"]).data.tags["mlflow.note.content"]
    assert note.startswith("clamp at 1.15 x N0 from step 100, tau 1; forks trunk@100")
    # summaries: members per contract, arms as seed medians; curves on both
    same = members[members.arm == "clamp_same"]
    grokked = same[same.grokked == 1]
    assert len(grokked) >= 1 and set(same.diverged) == {0}
    assert grokked[["t_mem", "t_grok", "delay", "delay_from_fork", "logit_scale_at_grok", "weight_norm_at_grok",
                    "N0", "target"]].notna().all().all()
    assert (grokked.delay == grokked.t_grok - grokked.t_mem).all()
    assert arms.loc["clamp_same", "t_grok"] == grokked.t_grok.median()
    assert arms.loc["clamp_same", "n_seeds"] == 2
    hist = c.get_metric_history(arms.loc["clamp_same", "run_id"], "test/acc")
    assert len(hist) > 3 and hist[-1].value >= 0.9
    # artifacts: the study's yaml, graph and table; each arm's yaml and dense curves
    study_files = {f.path for f in c.list_artifacts(study_id)}
    assert {"study.yaml", "graph.png", "arm_table.txt"} <= study_files
    arm_files = {f.path for f in c.list_artifacts(arms.loc["free", "run_id"])}
    assert {"study.yaml", "curves.csv"} <= arm_files
    csv = Path(c.download_artifacts(arms.loc["free", "run_id"], "curves.csv")).read_text().splitlines()
    assert csv[0].startswith("arm,seed,step,") and "logit/scale" in csv[0] and len(csv) > 10


def test_the_study_run_records_its_provenance(reference):
    """git commit, branch and dirty flag of the project (MLflow's mlflow.source.* tags), package version,
    the kernels' file and the host, on the study run."""
    import socket
    import subprocess
    from mlflow import MlflowClient
    from tracking.query import load_runs
    uri = f"sqlite:///{reference}"
    runs = load_runs("fork_study-smoke", uri)
    tags = MlflowClient(uri).get_run(runs[runs.role == "study"].run_id.item()).data.tags
    assert tags["host"] == socket.gethostname() and tags["package_version"] and tags["mlflow.source.type"] == "LOCAL"
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:   # a git checkout, as in CI
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()
        assert tags["git_dirty"] in ("true", "false") and "mlflow.source.git.branch" in tags
    if tags.get("kernels_path"):
        assert Path(tags["kernels_path"]).is_file()


def test_every_arm_and_member_run_has_its_task_as_a_dataset_input(reference):
    """The UI's Dataset column: name like add_mod23_tf0.70, a digest of the task and split seed(s) (a
    member's split is drawn from its seed: the same seed in two arms is the same data), train/test sizes."""
    import json
    from mlflow import MlflowClient
    from tracking.query import load_runs
    uri = f"sqlite:///{reference}"
    runs = load_runs("fork_study-smoke", uri)
    c = MlflowClient(uri)
    seen = {}
    for r in runs[runs.role != "study"].itertuples():
        inputs = c.get_run(r.run_id).inputs.dataset_inputs
        assert len(inputs) == 1, r.run_name
        ds = inputs[0].dataset
        p, tf = int(r.p), float(r.train_fraction)
        assert ds.name == f"add_mod{p}_tf{tf:.2f}"
        assert json.loads(ds.profile) == {"train_pairs": round(tf * p * p), "test_pairs": p * p - round(tf * p * p)}
        if r.role == "member":
            seen.setdefault(int(r.seed), set()).add(ds.digest)
    assert all(len(d) == 1 for d in seen.values()) and len({next(iter(d)) for d in seen.values()}) == len(seen)


def test_every_arms_curves_load_as_one_frame_with_mlflow_load_table(reference):
    """README: mlflow.load_table("curves.json", extra_columns=["run_id"]) gives every arm's curves, one row
    per (arm, seed, step), the same values as the arm's curves.csv."""
    import mlflow
    import pandas as pd
    from tracking.query import load_runs
    uri = f"sqlite:///{reference}"
    runs = load_runs("fork_study-smoke", uri)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("fork_study-smoke")
        df = mlflow.load_table("curves.json", extra_columns=["run_id"])
        csv = pd.read_csv(mlflow.artifacts.download_artifacts(
            run_id=runs[(runs.role == "arm") & (runs.run_name == "free")].run_id.item(), artifact_path="curves.csv"))
    finally:
        mlflow.set_tracking_uri(before)
    arms = runs[runs.role == "arm"].set_index("run_id").run_name
    assert set(df.arm) == set(arms) and (df.run_id.map(arms) == df.arm).all()
    free = df[df.arm == "free"].drop(columns="run_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(free[csv.columns], csv, check_dtype=False)
