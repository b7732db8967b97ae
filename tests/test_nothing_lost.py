"""Nothing lost: a study exits 0 only when the store holds everything it reports, a tracking fault is one
line and a non-zero exit, the rerun completes the store from state.json, and a new SQLite store is created
whole whatever moment a kill lands on. Faults are injected where they matter (tracking.faults), not timed."""
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.netns import store_contents
from conftest import CLI_ENV, run_smoke, smoke_command

EXPERIMENT = "fork_study-smoke"


def contents(db: Path, experiment: str = EXPERIMENT) -> dict:
    """{run name: [status, params, {key: every stored point}]} (a point stored twice shows twice)."""
    return store_contents(f"sqlite:///{db}", experiment)


def state(db: Path, experiment: str = EXPERIMENT) -> dict:
    return json.loads((db.parent / "snapshots" / experiment / "state.json").read_text())


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


FAULTS = {   # GROKKING_FAULTS at the study's end, and what the rerun says
    "a call the tracking process loses": ("tracker.finish_arm=skip@3", "repairing arm clamp_same in the store"),
    "a write that fails": ("tracker.finish_study=raise", None),
    "a tracking process that dies": ("tracker.finish_arm=exit@5", None),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_tracking_fault_at_the_study_end_is_one_line_and_exit_1_and_the_rerun_completes_the_store(
        fault, smoke_db, tmp_path):
    spec, repaired = FAULTS[fault]
    db = tmp_path / "mlflow.db"
    r = run_smoke(db, faults=spec, check=False)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "run the same command again" in one_error_line(r.stderr)
    assert not state(db)["finished"]
    out = run_smoke(db).stdout
    assert repaired is None or repaired in out, out
    assert contents(db) == contents(smoke_db)   # every run FINISHED, its params, summaries and curve points


def test_a_slow_tracking_process_delays_the_end_and_loses_nothing(smoke_db, tmp_path):
    db = tmp_path / "mlflow.db"
    run_smoke(db, faults="tracker.finish_arm=sleep:0.2;tracker.finish_study=sleep:1")
    assert state(db)["finished"] and contents(db) == contents(smoke_db)


def test_a_reader_of_the_store_while_a_study_writes_loses_nothing(smoke_db, tmp_path):
    """Another process reads the store mid-study (the MLflow UI, a report, a query) and closes its
    connection. The study's tracking process must still hold its SQLite locks then (it once dropped them
    by reading the file's header with open/close, so the reader's close deleted the WAL and every later
    commit was lost): the study ends with the store of an uninterrupted run."""
    db = tmp_path / "mlflow.db"
    proc = subprocess.Popen(smoke_command(db), env=CLI_ENV, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    fork = tmp_path / "snapshots" / EXPERIMENT / "forks" / "trunk@100m.pt"

    def runs_stored() -> int:   # opened read-write (a read-only connection never cleans up the WAL)
        if not db.exists():
            return 0
        reader = sqlite3.connect(f"file:{db}?mode=rw", uri=True)
        try:
            return reader.execute("SELECT count(*) FROM runs").fetchone()[0]
        finally:
            reader.close()
    end = time.monotonic() + 240
    while not (fork.exists() and runs_stored()) and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.02)
    assert proc.poll() is None, "the study ended before the fork point"
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert contents(db) == contents(smoke_db)


def test_a_trunk_that_stops_between_log_steps_checks_out_complete(tmp_path):
    """The store check expects each member's curve up to its last logged row: a trunk stops at its fork
    point, which need not be a log step (here fork 100, log every 75), and the study still ends with 0."""
    db = tmp_path / "mlflow.db"
    r = run_smoke(db, "--set", "log_every=75")
    assert "fork point trunk@100: step 100" in r.stdout and state(db)["finished"], r.stdout


def test_a_finished_study_whose_store_lost_records_is_repaired_from_state_json(smoke_db, tmp_path):
    """Runs set back to RUNNING and a summary deleted behind the study's back: the rerun of the finished
    study notices, says what it repairs, and ends with the store of an uninterrupted run."""
    db = tmp_path / "mlflow.db"
    run_smoke(db)
    con = sqlite3.connect(db)
    with con:
        ids = [r for (r,) in con.execute("SELECT run_uuid FROM runs WHERE name LIKE 'clamp_same%'")]
        con.execute(f"UPDATE runs SET status = 'RUNNING', end_time = NULL WHERE run_uuid IN ({','.join('?' * len(ids))})",
                    ids)
        for table in ("metrics", "latest_metrics"):
            con.execute(f"DELETE FROM {table} WHERE key = 't_grok' AND run_uuid = ?", (ids[0],))
    con.close()
    out = run_smoke(db).stdout
    assert "the store lacks 3 of its runs' records" in out and "repairing arm clamp_same" in out, out
    assert contents(db) == contents(smoke_db)
    assert "already finished" in run_smoke(db).stdout


def statements_to_create_a_store(folder: Path) -> int:
    """SQL statements MLflow runs to build a new store's schema (the failpoint store.create counts them)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from tracking.schema import _create
    n = [0]

    def count(*_):
        n[0] += 1
    event.listen(Engine, "after_cursor_execute", count)
    try:
        _create(folder / "count.db")
    finally:
        event.remove(Engine, "after_cursor_execute", count)
    return n[0]


def test_a_kill_anywhere_in_a_new_stores_creation_leaves_no_store_and_the_rerun_ends_identical(smoke_db, tmp_path):
    total = statements_to_create_a_store(tmp_path)
    assert total > 100
    for n in (1, total // 2, total):   # the first statement, one in the middle, the last before the rename
        db = tmp_path / f"killed_at_{n}" / "mlflow.db"
        r = run_smoke(db, faults=f"store.create=kill-parent@{n}", check=False)
        assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
        assert not db.exists() and [p.name for p in db.parent.glob("mlflow.db.creating-*")]
        r = run_smoke(db)
        assert "the leftover of an interrupted store creation" in r.stderr
        assert not list(db.parent.glob("mlflow.db.creating-*"))
        assert contents(db) == contents(smoke_db), n


def waiting_for(lock: Path) -> int:
    """How many processes wait for the flock on `lock` (/proc/locks: '-> FLOCK ...' lines on its inode)."""
    inode = f":{os.stat(lock).st_ino} "
    return sum(1 for ln in Path("/proc/locks").read_text().splitlines() if "->" in ln and inode in ln)


def test_three_studies_started_at_once_on_a_new_store_with_one_killed_during_creation(smoke_db, tmp_path):
    """A creates the store (held inside its creation by a failpoint) while B and C wait for the store's lock;
    A is killed there. B and C go on; A's rerun too: all three experiments end as an uninterrupted run."""
    db = tmp_path / "mlflow.db"

    def start(x: str, faults: str | None = None) -> subprocess.Popen:
        env = {**CLI_ENV, **({"GROKKING_FAULTS": faults} if faults else {})}
        return subprocess.Popen(smoke_command(db, "--experiment", x), env=env, cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    procs = [start("a", "store.create=sleep:120@1")]
    a = procs[0]
    try:
        end = time.monotonic() + 120
        while not list(tmp_path.glob("mlflow.db.creating-*")) and a.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        assert a.poll() is None and list(tmp_path.glob("mlflow.db.creating-*")), "A never began to create the store"
        procs += [start("b"), start("c")]
        while waiting_for(tmp_path / "mlflow.db.lock") < 2 and time.monotonic() < end:
            time.sleep(0.05)
        assert waiting_for(tmp_path / "mlflow.db.lock") == 2, "B and C never waited for the store's lock"
        os.killpg(a.pid, signal.SIGKILL)   # the study and its tracking process, inside the creation
        assert a.wait(timeout=60) == -signal.SIGKILL
        errs = []
        for p in procs[1:]:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
            errs.append(err)
        assert sum("the leftover of an interrupted store creation" in e for e in errs) == 1, errs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert run_smoke(db, "--experiment", "a").returncode == 0
    ref = contents(smoke_db)
    for x in "abc":
        assert contents(db, x) == ref, x


def dump(db: Path) -> list[str]:
    """Every table and row of a SQLite file, as SQL text."""
    con = sqlite3.connect(db)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def test_a_damaged_store_is_one_line_and_exit_2_naming_the_file_and_nothing_is_written(tmp_path):
    """A store half-way through an interrupted schema migration, holding runs: refused before anything
    runs, with what to do; a half-made store holding no runs is built anew, said in one line."""
    from mlflow import MlflowClient

    from tracking.store import client
    db = tmp_path / "mlflow.db"
    MlflowClient(client(f"sqlite:///{db}").tracking_uri).create_run("0")
    con = sqlite3.connect(db)
    with con:
        con.execute("CREATE TABLE _alembic_tmp_experiments (experiment_id INTEGER)")
        con.execute("UPDATE alembic_version SET version_num = '0584bdc529eb'")
    con.close()
    before = dump(db)
    r = run_smoke(db, check=False)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert str(db) in line and "interrupted" in line and "_alembic_tmp_experiments" in line and "backup" in line
    assert "Traceback" not in r.stderr and dump(db) == before and not (tmp_path / "snapshots").exists()

    empty = tmp_path / "half" / "mlflow.db"
    empty.parent.mkdir()
    con = sqlite3.connect(empty)
    with con:
        con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
        con.execute("INSERT INTO alembic_version VALUES ('0584bdc529eb')")
        con.execute("CREATE TABLE _alembic_tmp_experiments (experiment_id INTEGER)")
    con.close()
    said = []
    client(f"sqlite:///{empty}", log=said.append)
    assert len(said) == 1 and "building it anew" in said[0]
    con = sqlite3.connect(empty)
    assert not con.execute("SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp%'").fetchall()
    con.close()


def test_a_store_that_mlflow_would_migrate_in_place_is_refused_with_the_commands_that_upgrade_it(tmp_path):
    from mlflow import MlflowClient

    from tracking.store import StoreError, check_uri, client
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(client(uri).tracking_uri).create_run("0")
    con = sqlite3.connect(tmp_path / "mlflow.db")
    with con:
        con.execute("UPDATE alembic_version SET version_num = '0584bdc529eb'")   # an older MLflow's
    con.close()
    with pytest.raises(StoreError, match=r"older than this MLflow's .*mlflow db upgrade sqlite:///"):
        check_uri(uri)
    con = sqlite3.connect(tmp_path / "mlflow.db")
    with con:
        con.execute("UPDATE alembic_version SET version_num = 'f00dfeedbeef'")   # a newer MLflow's
    con.close()
    with pytest.raises(StoreError, match="written by a newer MLflow"):
        client(uri)
