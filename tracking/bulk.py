"""Many runs in one SQL transaction, through MLflow's private table models (SQL stores only): a bulk
import's finished runs, a study's live member runs (with their dataset inputs), their curve points, and
their end.

Private API, kept because it is measured to matter (`python -m benchmarks.tracking --store`, mlflow 3.17.2:
1000 finished member runs in arms of 12, 2.4 s against 30 s through the public create_run + log_batch +
set_terminated per run, 13x; at --members 300, 30 live member runs opened and ended an arm at a time 9.0x,
curve points 9.7x). Any failure here (another MLflow version, another store) raises before anything is
committed, and the caller falls back to the public path.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field

from mlflow.entities import DatasetInput, Metric, Param, RunTag


class NotSQL(Exception):
    """The store is not one of MLflow's SQL stores (a tracking server): the public path applies."""


@dataclass
class NewRun:
    """One run to insert: tags hold mlflow.runName, role, identity and the parent."""
    name: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)   # summaries, at step 0; None/NaN already dropped
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)   # other keys: (step, value)
    datasets: list[DatasetInput] = field(default_factory=list)


def summary_metrics(metrics: dict | None) -> dict[str, float]:
    """Summaries worth writing: None and NaN are 'not reached' and stay absent."""
    return {k: float(v) for k, v in (metrics or {}).items() if v is not None and not math.isnan(float(v))}


def sql_store(client):
    """The client's MLflow SqlAlchemyStore; NotSQL for any other store (or an MLflow without one)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError as e:
        raise NotSQL(str(e)) from None
    store = client._tracking_client.store
    if not isinstance(store, SqlAlchemyStore):
        raise NotSQL(type(store).__name__)
    return store


def insert_runs(client, experiment_id: str, runs: list[NewRun], status: str = "FINISHED") -> list[str]:
    """Insert `runs` (all or none) with `status` (RUNNING: live, no end time) and return their new ids,
    as create_run + log_batch + log_inputs (+ set_terminated) would store them. Raises NotSQL, or whatever
    MLflow's internals raise, with nothing written."""
    store = sql_store(client)
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
    from mlflow.utils.uri import append_to_uri_path
    from mlflow.utils.validation import _validate_batch_log_data, _validate_dataset_inputs
    from sqlalchemy import insert
    location = client.get_experiment(experiment_id).artifact_location
    now = int(time.time() * 1000)
    ids, runs_rows, tag_rows, param_rows, metric_rows, latest_rows = [], [], [], [], [], []
    for r in runs:
        _validate_batch_log_data([Metric(k, v, now, 0) for k, v in r.metrics.items()],
                                 [Param(k, v) for k, v in r.params.items()],
                                 [RunTag(k, v) for k, v in r.tags.items()])
        _validate_dataset_inputs(r.datasets)
        run_id = uuid.uuid4().hex
        ids.append(run_id)
        runs_rows.append(dict(run_uuid=run_id, name=r.name, experiment_id=int(experiment_id),
                              artifact_uri=append_to_uri_path(location, run_id, "artifacts"),
                              source_type="UNKNOWN", source_name="", entry_point_name="", user_id="unknown",
                              status=status, start_time=now, end_time=None if status == "RUNNING" else now,
                              deleted_time=None, source_version="", lifecycle_stage="active"))
        tag_rows += [dict(run_uuid=run_id, key=k, value=v) for k, v in r.tags.items()]
        param_rows += [dict(run_uuid=run_id, key=k, value=v) for k, v in r.params.items()]
        points = {**{k: [(0, v)] for k, v in r.metrics.items()}, **r.curves}
        by_key = [[_metric_row(run_id, k, step, v, now) for step, v in pts] for k, pts in points.items() if pts]
        metric_rows += [row for key_rows in by_key for row in key_rows]
        latest_rows += [max(key_rows, key=lambda row: row["step"]) for key_rows in by_key]
    # Core executemany in one transaction (rolled back on any error): the ORM costs ~10 ms a run, this ~0.1 ms.
    with store.ManagedSessionMaker(read_only=False) as session:
        for model, rows in ((SqlRun, runs_rows), (SqlTag, tag_rows), (SqlParam, param_rows),
                            (SqlMetric, metric_rows), (SqlLatestMetric, latest_rows)):
            if rows:
                session.execute(insert(model.__table__), rows)
        _insert_inputs(session, int(experiment_id), [(rid, r.datasets) for rid, r in zip(ids, runs)])
    return ids


def _insert_inputs(session, experiment_id: int, runs: list[tuple[str, list[DatasetInput]]]) -> None:
    """Dataset inputs of new runs, as log_inputs stores them: a dataset (experiment, name, digest) is
    stored once and shared; each run gets an input edge with its tags."""
    from mlflow.store.tracking.dbmodels.models import SqlDataset, SqlInput, SqlInputTag
    from sqlalchemy import insert, select
    wanted = {(d.dataset.name, d.dataset.digest): d.dataset for _, inputs in runs for d in inputs}
    if not wanted:
        return
    t = SqlDataset.__table__
    found = session.execute(select(t.c.name, t.c.digest, t.c.dataset_uuid).where(
        t.c.experiment_id == experiment_id, t.c.name.in_({n for n, _ in wanted}),
        t.c.digest.in_({d for _, d in wanted})))
    uuids = {(name, digest): u for name, digest, u in found}
    datasets, edges, edge_tags = [], [], []
    for key, ds in wanted.items():
        if key not in uuids:
            uuids[key] = uuid.uuid4().hex
            datasets.append(dict(dataset_uuid=uuids[key], experiment_id=experiment_id, name=ds.name,
                                 digest=ds.digest, dataset_source_type=ds.source_type, dataset_source=ds.source,
                                 dataset_schema=ds.schema, dataset_profile=ds.profile))
    for run_id, inputs in runs:
        firsts: dict[tuple[str, str], DatasetInput] = {}
        for d in inputs:   # a dataset listed twice: the first one counts, as in log_inputs
            firsts.setdefault((d.dataset.name, d.dataset.digest), d)
        for key, d in firsts.items():
            edge = uuid.uuid4().hex
            edges.append(dict(input_uuid=edge, source_type="DATASET", source_id=uuids[key], destination_type="RUN",
                              destination_id=run_id, step=0))
            edge_tags += [dict(input_uuid=edge, name=tag.key, value=tag.value) for tag in d.tags]
    for model, rows in ((SqlDataset, datasets), (SqlInput, edges), (SqlInputTag, edge_tags)):
        if rows:
            session.execute(insert(model.__table__), rows)


def end_runs(client, run_ids: list[str], status: str) -> int:
    """Set the runs' status and end time, as set_terminated does, in one statement, and return how many;
    raises (nothing written) unless every one of them is an active run of the store."""
    store = sql_store(client)
    from mlflow.store.tracking.dbmodels.models import SqlRun
    from sqlalchemy import update
    t = SqlRun.__table__
    with store.ManagedSessionMaker(read_only=False) as session:
        n = session.execute(update(t).where(t.c.run_uuid.in_(run_ids), t.c.lifecycle_stage == "active")
                            .values(status=status, end_time=int(time.time() * 1000))).rowcount
        if n != len(set(run_ids)):
            raise LookupError(f"{len(set(run_ids)) - n} of {len(set(run_ids))} runs are not active runs of the store")
    return n


def _metric_row(run_id: str, key: str, step, value, timestamp: int) -> dict:
    value = float(value)
    nan = math.isnan(value)   # as MLflow stores them: NaN as 0 with is_nan set, +-inf as +-max float
    if math.isinf(value):
        value = math.copysign(1.7976931348623157e308, value)
    return dict(run_uuid=run_id, key=key, value=0.0 if nan else value, timestamp=timestamp, step=int(step),
                is_nan=nan)


def log_metrics(client, points: dict[str, list[Metric]]) -> None:
    """Curve points of live runs ({run_id: points}) in one transaction (SQL stores only): what log_batch
    does for metrics (the points, and each run's latest value per key by (step, timestamp, value)), as
    Core inserts instead of ORM objects. Raises NotSQL, or what MLflow's internals raise, with nothing
    written; the caller then uses log_batch (which also handles a point already stored)."""
    store = sql_store(client)
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
    from sqlalchemy import delete, insert, select
    rows = [_metric_row(run_id, m.key, m.step, m.value, m.timestamp) for run_id, ms in points.items() for m in ms]
    if not rows:
        return
    latest: dict[tuple[str, str], dict] = {}
    for row in rows:
        old = latest.get((row["run_uuid"], row["key"]))
        if old is None or _order(row) > _order(old):
            latest[row["run_uuid"], row["key"]] = row
    lm = SqlLatestMetric.__table__
    with store.ManagedSessionMaker(read_only=False) as session:
        session.execute(insert(SqlMetric.__table__), rows)
        stored = session.execute(select(lm).where(lm.c.run_uuid.in_(list(points)),
                                                  lm.c.key.in_({k for _, k in latest}))).mappings()
        keep = {(r["run_uuid"], r["key"]) for r in stored
                if (r["run_uuid"], r["key"]) in latest and _order(r) >= _order(latest[r["run_uuid"], r["key"]])}
        newer = [row for k, row in latest.items() if k not in keep]
        by_run: dict[str, list[str]] = {}
        for row in newer:
            by_run.setdefault(row["run_uuid"], []).append(row["key"])
        for run_id, keys in by_run.items():
            session.execute(delete(lm).where(lm.c.run_uuid == run_id, lm.c.key.in_(keys)))
        if newer:
            session.execute(insert(lm), newer)


def _order(row) -> tuple:
    """MLflow's 'more recent' order of two points of a key (SqlAlchemyStore._update_latest_metrics...)."""
    return row["step"], row["timestamp"], row["value"]
