"""tracking.recorder: idempotent run hierarchy, resume without duplicates, buffered batched logging."""
import math
import sqlite3

import pandas as pd
import pytest
from mlflow import MlflowClient

from tracking.recorder import ParamConflict, Recorder
from tracking.store import ensure_experiment, sqlite_path

ARM_PARAMS = {"arm": "clamp_raised", "rho": 1.15, "tau": 1.0, "fork_from": None}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A migrated empty store made once (a fresh MLflow schema takes seconds); tests copy it."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('template') / 'mlflow.db'}"
    ensure_experiment(uri, "warmup")
    return sqlite_path(uri)


@pytest.fixture
def uri(template, tmp_path):
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    with sqlite3.connect(template) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    return f"sqlite:///{db}"


def _fail_inserts_into(table_name, monkeypatch):
    """tracking.bulk's inserts into `table_name` raise, as another MLflow's schema would."""
    import sqlalchemy
    real = sqlalchemy.insert

    def insert(table):
        if table.name == table_name:
            raise RuntimeError("simulated: another MLflow's schema")
        return real(table)
    monkeypatch.setattr(sqlalchemy, "insert", insert)


def _hierarchy(rec, seed=3):
    study = rec.run("study", "fork_study", tags={"study": "fork_study"}, description="a fork study")
    arm = rec.run("arm", "clamp_raised", parent_id=study, params=ARM_PARAMS,
                  tags={"study": "fork_study", "arm": "clamp_raised"}, description="clamp at 1.15 N0")
    member = rec.run("member", f"clamp_raised seed={seed}", parent_id=arm, params={**ARM_PARAMS, "seed": seed},
                     tags={"study": "fork_study", "arm": "clamp_raised", "seed": seed})
    return study, arm, member


def _curve(steps):
    return {"train/acc": [(s, s / 1000) for s in steps], "logit/scale": [(s, 30 + s / 100) for s in steps]}


def test_resumed_recorder_reuses_runs_and_never_logs_a_step_twice(uri):
    rec = Recorder(uri, "fork_study")
    ids = _hierarchy(rec)
    rec.log_curves(ids[2], _curve(range(0, 2000, 200)))
    rec.log_summary(ids[2], {"t_mem": 175, "t_grok": None, "delay": math.nan})
    rec.flush()   # what the engine does before a snapshot; then the process "dies": nothing finished
    del rec

    rec = Recorder(uri, "fork_study")
    assert _hierarchy(rec) == ids
    assert rec.status(ids[2]) == "RUNNING"
    rec.log_curves(ids[2], _curve(range(1000, 3000, 200)))   # overlaps steps 1000..1800
    rec.log_summary(ids[2], {"t_mem": 175, "t_grok": 2400})
    for run_id in reversed(ids):
        rec.finish(run_id)
    rec.close()

    c = MlflowClient(uri)
    runs = c.search_runs([rec.experiment_id])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    for key in ("train/acc", "logit/scale"):
        steps = [m.step for m in c.get_metric_history(ids[2], key)]
        assert sorted(steps) == list(range(0, 3000, 200))
    assert len(c.get_metric_history(ids[2], "t_mem")) == 1
    assert [m.value for m in c.get_metric_history(ids[2], "t_grok")] == [2400]
    assert "delay" not in c.get_run(ids[2]).data.metrics
    member = c.get_run(ids[2])
    assert member.info.run_name == "clamp_raised seed=3"
    assert member.data.params == {"arm": "clamp_raised", "rho": "1.15", "tau": "1.0", "fork_from": "none",
                                  "seed": "3"}
    assert member.data.tags["mlflow.parentRunId"] == ids[1]
    assert c.get_run(ids[1]).data.tags["mlflow.note.content"] == "clamp at 1.15 N0"


def test_param_conflict_is_refused_and_same_value_is_a_noop(uri):
    rec = Recorder(uri, "fork_study")
    _, arm, _ = _hierarchy(rec)
    rec.flush()
    rec2 = Recorder(uri, "fork_study")
    study = rec2.find("study", tags={"study": "fork_study"})
    tags = {"study": "fork_study", "arm": "clamp_raised"}
    assert rec2.run("arm", "clamp_raised", parent_id=study, params=ARM_PARAMS, tags=tags) == arm
    with pytest.raises(ParamConflict, match=r"param 'tau' is stored as '1.0'.*'1.3'"):
        rec2.run("arm", "clamp_raised", parent_id=study, params={**ARM_PARAMS, "tau": 1.3}, tags=tags)
    rec2.flush()
    assert MlflowClient(uri).get_run(arm).data.params["tau"] == "1.0"


def test_curves_are_written_in_chunks_not_per_point(uri, monkeypatch):
    rec = Recorder(uri, "bench", chunk=1000, private_sql=False)   # the public path's calls are counted
    run_id = rec.run("member", "m seed=0", tags={"seed": 0})
    calls = []
    real = rec.client.log_batch
    monkeypatch.setattr(rec.client, "log_batch", lambda rid, **kw: calls.append(len(kw.get("metrics", []))) or real(rid, **kw))
    for step in range(500):   # 500 log steps x 5 keys, one call per step as a training loop would
        rec.log_curves(run_id, {f"k{i}": [(step, step * i)] for i in range(5)})
    rec.finish(run_id)
    rec.close()
    assert sum(calls) == 2500 and len(calls) <= 4, calls
    assert len(MlflowClient(uri).get_metric_history(run_id, "k3")) == 500


def test_artifacts_land_beside_the_db(uri):
    rec = Recorder(uri, "fork_study")
    study, _, _ = _hierarchy(rec)
    rec.log_text(study, "study: fork_study\n", "study.yaml")
    rec.log_text(study, "study: fork_study\n", "study.yaml")   # resume: same file again
    rec.close()
    files = list((sqlite_path(uri).parent / "artifacts" / "fork_study").rglob("study.yaml"))
    assert len(files) == 1 and files[0].read_text() == "study: fork_study\n"


def test_bulk_finished_runs_resume_without_duplicates(uri):
    rec = Recorder(uri, "paper/x")
    arm = rec.run("arm", "a", tags={"arm": "a"})
    specs = [{"name": f"a seed={s}", "params": {"arm": "a", "seed": s}, "tags": {"arm": "a", "seed": s},
              "metrics": {"t_grok": 100.0 * s if s else None, "grokked": float(s > 0)}} for s in range(4)]
    ids = rec.add_runs("member", arm, specs[:2], status="FINISHED")
    rec.close()
    rec = Recorder(uri, "paper/x")
    arm2 = rec.run("arm", "a", tags={"arm": "a"})
    ids2 = rec.add_runs("member", arm2, specs, status="FINISHED")
    rec.finish(arm2)
    c = MlflowClient(uri)
    assert arm2 == arm and ids2[:2] == ids and len(set(ids2)) == 4
    runs = c.search_runs([rec.experiment_id], "tags.role = 'member'")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    by_seed = {r.data.tags["seed"]: r for r in runs}
    assert by_seed["0"].data.metrics == {"grokked": 0.0}
    assert by_seed["3"].data.metrics == {"t_grok": 300.0, "grokked": 1.0}
    assert by_seed["2"].data.params == {"arm": "a", "seed": "2"}
    assert len(c.get_metric_history(ids[1], "t_grok")) == 1


def test_bulk_insert_failing_midway_writes_nothing_and_the_public_path_gives_the_same_runs(uri, monkeypatch):
    from tracking.query import load_runs
    specs = [{"name": f"a seed={s}", "params": {"arm": "a", "seed": s, "rho": 1.15}, "tags": {"arm": "a", "seed": s},
              "metrics": {"t_grok": 100.0 * s if s else None, "grokked": float(s > 0)}} for s in range(4)]

    def imported(experiment):
        rec = Recorder(uri, experiment)
        arm = rec.run("arm", "a", tags={"arm": "a"})
        rec.add_runs("member", arm, specs, status="FINISHED")
        rec.finish(arm)
        rec.close()
        return load_runs(experiment, uri).drop(columns=["run_id", "parent_run_id"])

    private = imported("paper/private")
    _fail_inserts_into("metrics", monkeypatch)   # after runs, tags and params went into the transaction
    with pytest.warns(RuntimeWarning, match="bulk insert through MLflow's SQL models failed.*public API"):
        public = imported("paper/public")
    assert len(public) == 5 and (public["status"] == "FINISHED").all()
    pd.testing.assert_frame_equal(private, public)


def _store_contents(uri, run_id, keys):
    c = MlflowClient(uri)
    value = lambda v: "nan" if math.isnan(v) else v   # noqa: E731  (NaN != NaN)
    history = {k: sorted((m.step, value(m.value), m.timestamp) for m in c.get_metric_history(run_id, k))
               for k in keys}
    return history, c.get_run(run_id).data.metrics


def test_live_curves_through_the_sql_tables_store_what_log_batch_stores(uri, monkeypatch):
    """The private path (tracking.bulk.log_metrics) against MLflow's log_batch on the same points: every
    point, NaN and inf as MLflow keeps them, and the latest value per key, over two writes where the second
    carries an older step; a failing private path warns once and log_batch writes the same."""
    import time

    keys = ["train/loss", "test/acc"]
    ts = int(time.time() * 1000)
    first = {"train/loss": [(0, 2.0), (25, float("nan")), (50, float("inf"))], "test/acc": [(0, 0.1), (50, 0.9)]}
    second = {"train/loss": [(75, 0.5), (10, 9.0)], "test/acc": [(25, 0.3)]}

    def logged(private_sql, monkeypatch_insert=False):
        rec = Recorder(uri, f"points/{private_sql}/{monkeypatch_insert}", private_sql=private_sql)
        run_id = rec.run("member", "m seed=0", tags={"seed": 0})
        rec.flush()
        monkeypatch.setattr(time, "time", lambda: ts / 1000)   # the same timestamps on both paths
        for rows in (first, second):
            rec.log_curves(run_id, rows)
            rec.flush()
        monkeypatch.undo()
        rec.close()
        return _store_contents(uri, run_id, keys)

    public, private = logged(False), logged(True)
    assert private == public
    history, latest = private
    assert [s for s, *_ in history["train/loss"]] == [0, 10, 25, 50, 75]
    assert history["train/loss"][2][1] == "nan" and history["train/loss"][3][1] == 1.7976931348623157e308
    assert latest == {"train/loss": 0.5, "test/acc": 0.9}
    _fail_inserts_into("latest_metrics", monkeypatch)
    with pytest.warns(RuntimeWarning, match="curve points through MLflow's SQL models failed.*log_batch"):
        fallback = logged(True, monkeypatch_insert=True)
    assert fallback == public


def test_a_point_already_stored_goes_to_log_batch_and_keeps_the_sql_path(uri, recwarn):
    """A chunk holding a point the store has (same key, step, value, timestamp: a replay) is written by
    log_batch, which skips the duplicate; the next chunk goes through the SQL tables again, unwarned."""
    from mlflow.entities import Metric

    rec = Recorder(uri, "replay")
    run_id = rec.run("member", "m seed=0", tags={"seed": 0})
    rec.flush()
    rec.client.log_batch(run_id, metrics=[Metric("k", 1.0, 1000, 0)])
    rec.pending.add(run_id, metrics=[Metric("k", 1.0, 1000, 0), Metric("k", 2.0, 1000, 25)])
    rec.flush()
    assert rec.pending.private_sql and not [w for w in recwarn if "SQL models" in str(w.message)]
    rec.pending.add(run_id, metrics=[Metric("k", 3.0, 1000, 50)])
    rec.flush()
    assert rec.pending.private_sql
    history = MlflowClient(uri).get_metric_history(run_id, "k")
    assert sorted(m.step for m in history) == [0, 25, 50]
    assert MlflowClient(uri).get_run(run_id).data.metrics == {"k": 3.0}


def _runs_as_stored(uri, experiment, keys):
    """Every run of `experiment` as the store holds it, ids replaced by run names (comparable across paths)."""
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
    names = {r.info.run_id: r.info.run_name for r in runs}
    out = {}
    for r in runs:
        i, rid = r.info, r.info.run_id
        tags = {k: names.get(v, v) if k == "mlflow.parentRunId" else v for k, v in r.data.tags.items()}
        out[i.run_name] = dict(
            info=(i.status, i.user_id, i.lifecycle_stage, i.end_time is not None, i.start_time > 0,
                  i.artifact_uri.endswith(f"{rid}/artifacts")),
            tags=tags, params=r.data.params, metrics=r.data.metrics,
            inputs=sorted((d.dataset.name, d.dataset.digest, d.dataset.source_type, d.dataset.source,
                           d.dataset.profile, tuple((t.key, t.value) for t in d.tags)) for d in r.inputs.dataset_inputs),
            history={k: sorted((m.step, m.value) for m in c.get_metric_history(rid, k)) for k in keys})
    return out


def test_live_member_runs_through_the_sql_tables_store_what_the_public_api_stores(uri, monkeypatch):
    """A study's arm opens its members in one transaction (tracking.bulk.insert_runs, RUNNING, with params,
    tags and dataset inputs; a dataset two runs share is stored once) and ends them in one: the store then
    holds what create_run + log_inputs + log_batch + set_terminated per run write. Opening them again
    (a resumed study) finds the same runs; a failing private path warns and the public API writes the same."""
    keys = ["train/acc", "logit/scale"]

    def dataset(seed):
        return {"name": "add_mod23_tf0.70", "digest": f"d{seed % 2}", "source": {"p": 23, "split_seeds": [seed % 2]},
                "profile": {"train_pairs": 370, "test_pairs": 159}}

    members = [{"name": f"clamp_raised seed={s}", "params": {**ARM_PARAMS, "seed": s}, "description": f"seed {s}",
                "tags": {"study": "fork_study", "arm": "clamp_raised", "seed": s}, "datasets": [dataset(s)]}
               for s in range(3)]

    def study(experiment, private_sql=True):
        rec = Recorder(uri, experiment, private_sql=private_sql)
        arm = rec.run("arm", "clamp_raised", params=ARM_PARAMS, tags={"study": "fork_study", "arm": "clamp_raised"})
        ids = rec.add_runs("member", arm, members)
        assert {rec.status(i) for i in ids} == {"RUNNING"}
        again = Recorder(uri, experiment, private_sql=private_sql).add_runs("member", arm, members)
        assert again == ids
        for step in (0, 25, 50):
            for s, rid in enumerate(ids):
                rec.log_curves(rid, {k: [(step, s + step / 100)] for k in keys})
        rec.flush()
        for s, rid in enumerate(ids):
            rec.log_summary(rid, {"t_grok": 100.0 * s if s else None, "grokked": float(s > 0)})
        rec.finish([*ids, arm])
        rec.close()
        return _runs_as_stored(uri, experiment, keys)

    private, public = study("live/private"), study("live/public", private_sql=False)
    assert private == public
    assert {r["info"][0] for r in private.values()} == {"FINISHED"} and len(private) == 4
    assert private["clamp_raised seed=2"]["metrics"]["grokked"] == 1.0
    assert private["clamp_raised seed=1"]["history"]["train/acc"] == [(0, 1.0), (25, 1.25), (50, 1.5)]
    with sqlite3.connect(sqlite_path(uri)) as db:   # seeds 0 and 2 share a split: one dataset per experiment
        n = db.execute("select count(*) from datasets d join experiments e on d.experiment_id = e.experiment_id "
                       "where e.name = 'live/private'").fetchone()[0]
    assert n == 2
    _fail_inserts_into("inputs", monkeypatch)   # after runs, tags and params went into the transaction
    with pytest.warns(RuntimeWarning, match="bulk insert through MLflow's SQL models failed.*public API"):
        fallback = study("live/fallback")
    assert fallback == public
