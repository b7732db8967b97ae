"""Acceptance 2: SIGKILL at several points, rerun the same command, and end with the same runs, no
duplicate run or metric step, nothing left RUNNING, and results identical to an uninterrupted run."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
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
    stdout + stderr). Its tracking process, seen running at that moment, must end with it whatever the
    signal (README: it dies with its parent; no orphan writer)."""
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
        assert tracking_processes(children), f"no tracking process under the study: {log.read_text()[-2000:]}"
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
    assert_ended(children, f"after {signal.Signals(sig).name} to the study")
    return rc, log.read_text()


def tracking_processes(pids: list[int]) -> list[int]:
    """Those of `pids` that are a study's tracking process (interventions/execution/tracking_process.py)."""
    out = []
    for pid in pids:
        try:
            if b"interventions.execution.tracking_process" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out


def assert_ended(pids: list[int], when: str, wait: float = 20.0) -> None:
    """Every one of `pids` (a study's descendants, seen while it ran) ends within `wait` s; any left is
    SIGKILLed by its id before the test fails."""
    end = time.monotonic() + wait
    while any(netns.alive(c) for c in pids) and time.monotonic() < end:
        time.sleep(0.05)
    left = [c for c in pids if netns.alive(c)]
    why = f"processes {left} (tracking: {tracking_processes(left)}) outlived the study {when}"
    for c in left:
        try:
            os.kill(c, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, why


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


# A study small enough that the CLI's own start dominates: a trunk forked at step 50 into two arms
# trained to 150 (snapshots every 50 steps), on p = 11; arms do not need to grok.
TINY = """\
study: tiny
defaults:
  task: {p: 11, train_fraction: 0.7}
  model: {kind: mlp, d_embed: 16, d_hidden: 32}
  optimizer: {lr: 1.0e-2, weight_decay: 1.0}
  seeds: 2
  budget: 150
  eval_every: 25
  log_every: 50
  checkpoint_every: 50
  fork: {at: 50, when: step}
arms:
  - {name: trunk, trunk: true}
  - {name: free, from: {arm: trunk}}
  - {name: clamp_same, from: {arm: trunk}, clamp: n0, rho: 1.0}
"""


def tiny(tmp_path: Path) -> tuple[Path, list[str]]:
    """The tiny study's file in tmp_path and its command into tmp_path/mlflow.db (minus --set items)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    db = tmp_path / "mlflow.db"
    return db, [sys.executable, "-m", "interventions.run", str(path), "--no-progress", "--tracking-uri",
                f"sqlite:///{db}"]


def watched(cmd: list[str], cwd: Path, *, hold: str | None = None, ctrl_c_when=None) -> tuple[int, str, list[int]]:
    """Run `cmd` in its own process group, watching its descendants every 20 ms; hold: GROKKING_FAULTS;
    ctrl_c_when(): once true, SIGINT to the group, as a terminal's Ctrl-C. (exit status, stdout + stderr,
    the tracking processes seen)."""
    env = {**ENV, **({"GROKKING_FAULTS": hold} if hold else {})}
    log, seen = cwd / "watched.log", set()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=ctrl_c_as_in_a_terminal, start_new_session=True)
        end = time.monotonic() + 240
        try:
            while proc.poll() is None and time.monotonic() < end:
                seen.update(tracking_processes(netns.descendants(proc.pid)))
                if ctrl_c_when is not None and seen and ctrl_c_when():
                    os.killpg(proc.pid, signal.SIGINT)
                    ctrl_c_when = None
                time.sleep(0.02)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:   # not its group otherwise: that would end what the test checks is ended
                netns.stop(proc)
    return rc, log.read_text(), sorted(seen)


def test_the_tracking_process_ends_with_the_study_after_ctrl_c_and_after_exit_2(tmp_path):
    """README ("Performance"): the tracking process dies with its parent. Ctrl-C while the study is held
    at its second cohort's first snapshot: exit 130, and the tracking process seen running is gone. Then
    the same experiment with another budget: refused with exit 2 after the tracking process has started
    (the snapshots are read after it is launched), and that process is gone too."""
    db, cmd = tiny(tmp_path)
    cohorts = tmp_path / "snapshots" / "tiny" / "cohorts"
    rc, out, seen = watched(cmd, tmp_path, hold="cohort.checkpoint/free=sleep:120",
                            ctrl_c_when=lambda: any(cohorts.glob("free+*.pt")))
    assert rc == 130 and "interrupted" in out, out[-2000:]
    assert len(seen) >= 1, out[-2000:]
    assert_ended(seen, "after Ctrl-C")
    rc, out, seen = watched([*cmd, "--set", "budget=200"], tmp_path)
    assert rc == 2 and "defaults.budget 150 -> 200" in out, out[-2000:]
    assert len(seen) >= 1, out[-2000:]
    assert_ended(seen, "after its exit 2")


def test_a_changed_save_is_accepted_on_resume_and_other_changed_settings_are_refused(tmp_path):
    """README ("Load a trained model", "Resume"): what is kept (`save:`) is not part of the settings a
    resume compares. Interrupted after the trunk, the study resumes with `save: {final: true}` added and
    keeps final checkpoints of the arms it trains from then on (not of the trunk, trained before). On the
    finished study another budget is refused, exit 2, in one line naming the key that changed (and not
    `save`, changed in the same command)."""
    from mlflow import MlflowClient
    db, cmd = tiny(tmp_path)
    cohorts = tmp_path / "snapshots" / "tiny" / "cohorts"
    rc, out, _ = watched(cmd, tmp_path, hold="cohort.checkpoint/free=sleep:120",
                         ctrl_c_when=lambda: any(cohorts.glob("free+*.pt")))
    assert rc == 130, out[-2000:]
    done = json.loads((tmp_path / "snapshots" / "tiny" / "state.json").read_text())["arms"]
    assert [a for a, r in done.items() if r["status"] == "done"] == ["trunk"]

    resumed = subprocess.run([*cmd, "--set", "defaults.save.final=true"], env=ENV, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    c = MlflowClient(f"sqlite:///{db}")
    members = c.search_runs([c.get_experiment_by_name("tiny").experiment_id], "tags.role = 'member'")
    kept = {r.info.run_name: [f.path for f in c.list_artifacts(r.info.run_id, "checkpoints")] for r in members}
    assert len(kept) == 6
    for name, files in kept.items():
        assert ("checkpoints/final.pt" in files) == (not name.startswith("trunk ")), (name, files)

    refused = subprocess.run([*cmd, "--set", "budget=200", "--set", "defaults.save.at_grok=true"], env=ENV,
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    errors = [ln for ln in refused.stderr.splitlines() if ln.strip()]
    assert refused.returncode == 2 and len(errors) == 1, refused.stderr[-3000:]
    assert "other settings (defaults.budget 150 -> 200);" in errors[0], errors[0]   # that key alone


def test_fresh_deletes_the_old_snapshots_and_the_new_run_makes_its_own(tmp_path):
    """README ("Resume"): `--fresh` deletes the study's snapshots (and its runs: see the SIGKILL test) and
    starts over. Each old file is hard-linked aside first, so a file of the old run can be told from a new
    one at the same path; a leftover the new run would not make (a fork point of an earlier design) must
    go too."""
    from interventions.execution.studies import run_study
    from interventions.study.graph import build_graph
    from interventions.study.spec import load_study
    db, _ = tiny(tmp_path)
    graph, said = build_graph(load_study(str(tmp_path / "tiny.yaml"))), []

    def run(fresh: bool) -> dict:
        return run_study(graph, uri=f"sqlite:///{db}", experiment="tiny", fresh=fresh, progress=False,
                         tracking=False, log=said.append)
    first = run(False)
    snap = tmp_path / "snapshots" / "tiny"
    leftover = snap / "forks" / "trunk@25.pt"
    leftover.write_bytes((snap / "forks" / "trunk@50.pt").read_bytes())
    old = sorted(p.relative_to(snap) for p in snap.rglob("*") if p.is_file())
    assert [str(p) for p in old] == ["forks/trunk@25.pt", "forks/trunk@50.pt", "state.json"]
    aside = tmp_path / "old"
    for p in old:
        (aside / p).parent.mkdir(parents=True, exist_ok=True)
        os.link(snap / p, aside / p)
    again = run(True)
    assert f"--fresh: deleted 0 runs of study 'tiny' in experiment 'tiny' and the snapshots in {snap}" in said
    assert not leftover.exists()
    for p in old[1:]:   # made again by the new run: new files
        assert (snap / p).is_file() and not (snap / p).samefile(aside / p), p
    assert json.loads((snap / "state.json").read_text())["finished"]
    assert {a: r["results"] for a, r in again.items()} == {a: r["results"] for a, r in first.items()}


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
