"""Runs back to pandas: one row per run (params + latest metrics), and curves in long form.

Used by `analyses` (which never imports torch): everything here is MLflow + pandas.
"""
from __future__ import annotations

import warnings

import pandas as pd

from .store import quiet_mlflow_logs, resolve_uri, search_all, sqlite_path

FIXED = ["run_id", "parent_run_id", "run_name", "role", "study", "arm", "seed", "status"]
TEXT = {"run_id", "parent_run_id", "run_name", "role", "study", "arm", "status"}  # never parsed as numbers
BULK_RUNS = 500   # run ids per bulk history query (SQLite caps bound variables)


def _client(uri: str | None):
    """An MlflowClient on an existing store; a query never creates a store."""
    from mlflow import MlflowClient
    from .store import _fast_sqlite
    uri = resolve_uri(uri)
    if uri.startswith("sqlite:"):
        path = sqlite_path(uri)
        if not path.is_file():
            raise LookupError(f"no MLflow store at {path} (tracking URI {uri!r}); import or run a study first")
        _fast_sqlite()
    quiet_mlflow_logs()
    return MlflowClient(tracking_uri=uri), uri


def list_experiments(uri: str | None = None) -> list[str]:
    """Names of the active experiments, sorted ("Default" only when it holds runs)."""
    c, _ = _client(uri)
    names = []
    for e in c.search_experiments(max_results=50000):
        if e.name == "Default" and not c.search_runs([e.experiment_id], max_results=1):
            continue
        names.append(e.name)
    return sorted(names)


def _experiment_id(c, uri: str, experiment: str) -> str:
    exp = c.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        existing = [e.name for e in c.search_experiments(max_results=50000)]
        raise LookupError(f"experiment {experiment!r} not found in {uri}; existing experiments: "
                          + (", ".join(sorted(existing)) if existing else "none"))
    return exp.experiment_id


def _numeric(values: pd.Series) -> pd.Series:
    """Numbers where the string parses ("1.15" -> 1.15), the string itself where not ("none", "ce")."""
    num = pd.to_numeric(values, errors="coerce")
    failed = num.isna() & values.notna()
    if not failed.any():
        return num.astype(float)
    return num.astype(object).where(~failed, values)


def load_runs(experiment: str, uri: str | None = None, role: str | None = None) -> pd.DataFrame:
    """One row per run of `experiment` (optionally only tag role == `role`): ids, names, tags role/study/
    arm/seed, status, every param (numeric strings as floats) and every metric's latest value."""
    c, uri = _client(uri)
    eid = _experiment_id(c, uri, experiment)
    runs = search_all(c, eid, f"tags.role = '{role}'" if role else "")
    param_keys = set().union(*(r.data.params for r in runs)) - set(FIXED)
    taken = set(FIXED) | param_keys
    rows, metric_keys = [], set()
    for r in runs:
        t = r.data.tags
        row = {"run_id": r.info.run_id, "parent_run_id": t.get("mlflow.parentRunId"),
               "run_name": r.info.run_name, "role": t.get("role"), "study": t.get("study"),
               "arm": t.get("arm"), "seed": t.get("seed"), "status": r.info.status}
        row.update(r.data.params)   # params `arm` and `seed` equal the tags of the same name
        for k, v in r.data.metrics.items():
            col = f"metric.{k}" if k in taken else k   # a metric never hides a param
            row[col] = v
            metric_keys.add(col)
        rows.append(row)
    params = sorted(param_keys - set(FIXED))
    metrics = sorted(metric_keys)
    df = pd.DataFrame(rows, columns=FIXED + params + metrics)
    for col in FIXED + params:
        if col not in TEXT:
            df[col] = _numeric(df[col])
    for col in metrics:
        df[col] = df[col].astype(float)
    # deterministic order: study first, then arms and their members by arm name and seed
    try:
        df = df.sort_values(["arm", "seed", "run_name"], na_position="first", kind="stable")
    except TypeError:   # seeds that are not all numbers: keep the creation order
        pass
    return df.reset_index(drop=True)


def load_members(experiment: str, uri: str | None = None) -> pd.DataFrame:
    """load_runs(role="member"): one row per (arm, seed)."""
    return load_runs(experiment, uri, role="member")


def load_arms(experiment: str, uri: str | None = None) -> pd.DataFrame:
    """load_runs(role="arm"): one row per arm, seed-median summaries."""
    return load_runs(experiment, uri, role="arm")


def load_curves(run_ids: list[str], keys: list[str] | None = None, uri: str | None = None, *,
                private_sql: bool = True) -> pd.DataFrame:
    """Metric histories in long form: run_id, key, step, value (one row per step; the latest write wins).

    keys=None reads every metric of each run. On a SQL store one query per key covers all runs (MLflow's
    store method, reached through a private attribute; private_sql=False or any failure there: the
    public get_metric_history, one call per run and key).
    """
    c, uri = _client(uri)
    run_ids = list(dict.fromkeys(run_ids))
    if keys is None:
        keys = sorted({k for rid in run_ids for k in c.get_run(rid).data.metrics})
    records = None
    if private_sql:
        try:
            records = histories_bulk(c, run_ids, keys)
        except Exception as e:
            warnings.warn(f"tracking store {uri!r}: bulk metric history failed ({type(e).__name__}: {e}); "
                          "using the public API", RuntimeWarning, stacklevel=2)
    if records is None:
        records = histories_public(c, run_ids, keys)
    df = pd.DataFrame(records, columns=["run_id", "key", "step", "value", "timestamp"])
    df = (df.sort_values(["run_id", "key", "step", "timestamp"], kind="stable")
            .drop_duplicates(["run_id", "key", "step"], keep="last")
            .drop(columns="timestamp").reset_index(drop=True))
    return df.astype({"run_id": str, "key": str, "step": "int64", "value": float})


def histories_public(c, run_ids: list[str], keys: list[str]) -> list[tuple]:
    """(run_id, key, step, value, timestamp) through MlflowClient.get_metric_history: one call per run and key."""
    return [(rid, key, m.step, m.value, m.timestamp) for key in keys for rid in run_ids
            for m in c.get_metric_history(rid, key)]


def histories_bulk(c, run_ids: list[str], keys: list[str]) -> list[tuple] | None:
    """The same records, one query per key and BULK_RUNS runs, through the SQL store's
    get_metric_history_bulk (private: MlflowClient does not expose it); None where the store has none (a
    tracking server). Kept because measured: 1000 members x 12 keys x 60 points, 30 s against 155 s
    public, 5x (`python -m benchmarks.tracking --store`, mlflow 3.17.2)."""
    bulk = getattr(c._tracking_client.store, "get_metric_history_bulk", None)
    if bulk is None:
        return None
    return [(m.run_id, key, m.step, m.value, m.timestamp) for key in keys for i in range(0, len(run_ids), BULK_RUNS)
            for m in bulk(run_ids[i:i + BULK_RUNS], key, max_results=2**62)]


def load_embeddings(run_ids: list[str], uri: str | None = None) -> dict[str, dict]:
    """{run_id: {"fork" | "grok" | "final": (p, d) array}} of the member runs that hold
    checkpoints/embedding.npz (studies with `save:`, interventions.checkpoints); the others are left out."""
    import tempfile

    import numpy as np
    c, _ = _client(uri)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rid in run_ids:
            if "checkpoints/embedding.npz" not in {f.path for f in c.list_artifacts(rid, "checkpoints")}:
                continue
            with np.load(c.download_artifacts(rid, "checkpoints/embedding.npz", tmp)) as z:
                out[rid] = {k: z[k] for k in z.files}
    return out
