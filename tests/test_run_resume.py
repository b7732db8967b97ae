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

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def command(db: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "interventions.run", "fork_study", "--preset", "smoke", "--no-progress",
            "--tracking-uri", f"sqlite:///{db}", *extra]


def run_to_end(db: Path, *extra: str) -> str:
    out = subprocess.run(command(db, *extra), env=ENV, cwd=db.parent, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def kill_when(db: Path, ready, *extra: str, timeout: float = 240.0) -> None:
    """Start the command, SIGKILL it as soon as ready() is true (checked every 20 ms)."""
    proc = subprocess.Popen(command(db, *extra), env=ENV, cwd=db.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, f"finished before the kill point: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() - t0 < timeout, "kill point never reached"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


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


def test_sigkill_at_several_points_then_resume_matches_uninterrupted(tmp_path):
    ref = tmp_path / "ref" / "mlflow.db"
    ref.parent.mkdir()
    out = run_to_end(ref)
    assert "logit_matched" in out and "grokked" in out

    db = tmp_path / "killed" / "mlflow.db"
    db.parent.mkdir()
    snap = snapshots(db)
    cohorts = snap / "cohorts"
    kill_when(db, lambda: (snap / "forks" / "trunk@100m.pt").exists())                 # after the trunk
    kill_when(db, lambda: cohorts.is_dir() and any(p.name.startswith("free+")          # mid-arms
                                                    for p in cohorts.glob("*.pt")))
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
    kill_when(db, lambda: (snap / "state.json").exists() and (snap / "state.json").read_text() != old_state
              and (snap / "forks" / "trunk@100m.pt").exists(), "--fresh")
    con = sqlite3.connect(db)
    deleted = con.execute("SELECT COUNT(*) FROM runs WHERE lifecycle_stage = 'deleted'").fetchone()[0]
    con.close()
    assert deleted == 31
    assert not json.loads((snap / "state.json").read_text())["finished"]
