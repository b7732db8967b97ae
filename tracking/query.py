"""Runs back to pandas: one row per run (params + latest metrics), and curves in long form.

Used by `analyses` (which never imports torch): everything here is MLflow + pandas.
"""
from __future__ import annotations

import pandas as pd

from .store import quiet_mlflow_logs, resolve_uri, sqlite_path

FIXED = ["run_id", "parent_run_id", "run_name", "role", "study", "arm", "seed", "status"]
TEXT = {"run_id", "parent_run_id", "run_name", "role", "study", "arm", "status"}  # never parsed as numbers
PAGE = 5000
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
    flt = f"tags.role = '{role}'" if role else ""
    runs, token = [], None
    while True:
        page = c.search_runs([eid], filter_string=flt, max_results=PAGE, page_token=token,
                             order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            break
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


def load_curves(run_ids: list[str], keys: list[str] | None = None, uri: str | None = None) -> pd.DataFrame:
    """Metric histories in long form: run_id, key, step, value (one row per step; the latest write wins).

    keys=None reads every metric of each run. On a SQL store one query per key covers all runs.
    """
    c, uri = _client(uri)
    run_ids = list(dict.fromkeys(run_ids))
    if keys is None:
        keys = sorted({k for rid in run_ids for k in c.get_run(rid).data.metrics})
    store = c._tracking_client.store
    bulk = getattr(store, "get_metric_history_bulk", None)
    records = []
    for key in keys:
        if bulk is not None:
            for i in range(0, len(run_ids), BULK_RUNS):
                for m in bulk(run_ids[i:i + BULK_RUNS], key, max_results=2**62):
                    records.append((m.run_id, key, m.step, m.value, m.timestamp))
        else:   # a tracking server: one request per (run, key)
            for rid in run_ids:
                for m in c.get_metric_history(rid, key):
                    records.append((rid, key, m.step, m.value, m.timestamp))
    df = pd.DataFrame(records, columns=["run_id", "key", "step", "value", "timestamp"])
    df = (df.sort_values(["run_id", "key", "step", "timestamp"], kind="stable")
            .drop_duplicates(["run_id", "key", "step"], keep="last")
            .drop(columns="timestamp").reset_index(drop=True))
    return df.astype({"run_id": str, "key": str, "step": "int64", "value": float})
