"""The Recorder: one experiment's run hierarchy (study -> arm -> member) and resume-safe, buffered logging.

Synchronous: every call runs in the caller's thread (the study runner keeps it in a child process,
interventions/tracker.py). Curves are buffered and written in chunks (tracking.batches); runs are found
again by identity (tracking.runs). Resume safety: params are written once (a different value is an
error), and a (key, step) already in the store is never logged again.
"""
from __future__ import annotations

import json
import os
import time
import warnings
import weakref

from mlflow.entities import Metric, Param, RunTag

from . import bulk
from .batches import CHUNK, Pending
from .query import histories_bulk, histories_public
from .runs import PARENT_TAG, ParamConflict, RunIndex, RunState, param_str, run_tags
from .store import client, ensure_experiment, resolve_uri

__all__ = ["ParamConflict", "Recorder"]


class Recorder:
    """Writes one experiment's runs. Safe to recreate after a crash: it finds and reuses its runs.

    Call flush() before writing a training snapshot: points still buffered when the process dies are
    lost, and a resumed run only re-emits the steps after its snapshot. private_sql=False: runs added or
    ended several at a time, and curve points, use MLflow's public API only (slower; `python -m
    benchmarks.tracking --store` compares the two).
    """

    def __init__(self, uri: str | None, experiment: str, *, chunk: int = CHUNK, private_sql: bool = True):
        self.uri = resolve_uri(uri)
        # MLflow's client prints two "View run/experiment at" lines per run it ends against a server (160 for
        # the smoke fork study); the study prints one link instead (interventions.execution.studies)
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.experiment = experiment
        self.experiment_id = ensure_experiment(self.uri, experiment)
        self.client = client(self.uri)
        self.private_sql = private_sql
        self.runs = RunIndex(self.client, self.experiment_id)
        self.pending = Pending(self.client, chunk, private_sql)
        # A dropped Recorder, or a normal interpreter exit, still writes what is buffered.
        self._finalizer = weakref.finalize(self, _write_quietly, self.pending)

    # ---- runs -------------------------------------------------------------------------------
    def run(self, role: str, name: str, *, parent_id: str | None = None, params: dict | None = None,
            tags: dict | None = None, description: str | None = None, identity: dict | None = None,
            reopen: bool = True) -> str:
        """The run named by (role, tags study/arm/seed, identity, parent): found if it exists, else created.

        Params are buffered and written once; a param stored with a different value raises ParamConflict.
        A found run that is not RUNNING is set RUNNING again (reopen=False leaves its status alone).
        """
        tags = run_tags(role, tags, identity, description)
        params = {k: param_str(v) for k, v in (params or {}).items()}
        run_id = self.runs.lookup(tags["identity"], parent_id)
        if run_id is None:
            all_tags = dict(tags, **({PARENT_TAG: parent_id} if parent_id else {}))
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags).info.run_id
            self.runs.add(RunState(run_id, name, "RUNNING", tags=all_tags))
        st = self.runs.state(run_id)
        conflicts = [(k, st.params[k], v) for k, v in params.items() if k in st.params and st.params[k] != v]
        if conflicts:
            k, old, new = conflicts[0]
            raise ParamConflict(
                f"experiment {self.experiment!r}, run {st.name!r} ({run_id}): param {k!r} is stored as "
                f"{old!r}, refusing to change it to {new!r} (params are immutable; start a fresh "
                f"experiment to change it)" + (f"; {len(conflicts) - 1} more conflicts" if len(conflicts) > 1 else ""))
        new_params = [Param(k, v) for k, v in params.items() if k not in st.params]
        st.params.update(params)
        changed = [RunTag(k, v) for k, v in tags.items() if st.tags.get(k) != v]
        self.pending.add(run_id, params=new_params, tags=changed)
        if st.status != "RUNNING" and reopen:
            self.client.update_run(run_id, status="RUNNING")
            st.status = "RUNNING"
        return run_id

    def add_runs(self, role: str, parent_id: str | None, runs: list[dict], status: str = "RUNNING") -> list[str]:
        """Many runs under one parent at once: a study's live members (RUNNING), or a bulk import's
        finished runs (FINISHED). Each dict: name, params, tags, optional description, identity, metrics
        (summaries at step 0), datasets (log_dataset's keyword arguments).

        New runs go into the store in ONE transaction when it is SQL (tracking.bulk); runs that already
        exist, or all of them where that cannot be used, are completed one by one through run(),
        log_dataset(), log_summary() (and finish()), so a half-done call resumes without duplicates.
        """
        specs = []
        for r in runs:
            tags = run_tags(role, r.get("tags"), r.get("identity"), r.get("description"))
            tags["mlflow.runName"] = r["name"]
            if parent_id:
                tags[PARENT_TAG] = parent_id
            params = {k: param_str(v) for k, v in (r.get("params") or {}).items()}
            specs.append(bulk.NewRun(r["name"], tags, params, bulk.summary_metrics(r.get("metrics")),
                                     datasets=[_dataset_input(**d) for d in r.get("datasets", ())]))
        ids = [self.runs.lookup(s.tags["identity"], parent_id) for s in specs]
        new = [i for i, rid in enumerate(ids) if rid is None]
        inserted = self._bulk("bulk insert", bulk.insert_runs, self.experiment_id, [specs[i] for i in new],
                              status) if new else None   # all of them or none
        for i, rid in zip(new, inserted or ()):
            ids[i] = rid
            s = specs[i]
            self.runs.add(RunState(rid, s.name, status, params=dict(s.params), latest=dict(s.metrics),
                                   stored_keys=set(s.metrics), tags=dict(s.tags)))
        bulked = set(new) if inserted else set()
        for i, r in enumerate(runs):
            if i in bulked:
                continue
            ids[i] = self.run(role, r["name"], parent_id=parent_id, params=r.get("params"), tags=r.get("tags"),
                              description=r.get("description"), identity=r.get("identity"),
                              reopen=status == "RUNNING")
            for d in r.get("datasets", ()):
                self.log_dataset(ids[i], **d)
            self.log_summary(ids[i], r.get("metrics") or {})
            if status == "RUNNING":
                continue   # written with the next flush
            if self.status(ids[i]) == status:
                self._write(run_ids=[ids[i]])
            else:
                self.finish(ids[i], status)
        return ids

    def _bulk(self, what: str, fn, *args):
        """fn(client, *args), one of tracking.bulk's private paths; None where it cannot be used (not a SQL
        store, or a failure: warned, and the public API is used from then on). Nothing is half-written."""
        if not self.private_sql:
            return None
        try:
            return fn(self.client, *args)
        except bulk.NotSQL:
            self.private_sql = False
        except Exception as e:
            self.private_sql = False
            warnings.warn(f"tracking store {self.uri!r}: {what} through MLflow's SQL models failed "
                          f"({type(e).__name__}: {e}); using the public API", RuntimeWarning, stacklevel=3)
        return None

    def find(self, role: str, *, parent_id: str | None = None, tags: dict | None = None,
             identity: dict | None = None) -> str | None:
        """The id of the run run() would return, or None; creates and changes nothing."""
        return self.runs.lookup(run_tags(role, tags, identity, None)["identity"], parent_id)

    def status(self, run_id: str) -> str:
        """RUNNING | FINISHED | FAILED | KILLED, as this recorder last saw or set it."""
        return self.runs.state(run_id).status

    # ---- logging ----------------------------------------------------------------------------
    def log_curves(self, run_id: str, rows: dict[str, list[tuple[int, float]]]) -> None:
        """Buffer curve points; a (key, step) already stored or buffered is skipped."""
        st = self.runs.state(run_id)
        for key in rows:
            if key not in st.seen:   # first touch of a key: which steps does the store hold?
                st.seen[key] = ({m.step for m in self.client.get_metric_history(run_id, key)}
                                if key in st.stored_keys else set())
        ts = int(time.time() * 1000)
        new = []
        for key, points in rows.items():
            seen = st.seen[key]
            for step, value in points:
                if int(step) not in seen:
                    seen.add(int(step))
                    new.append(Metric(key, float(value), ts, int(step)))
                    st.latest[key] = float(value)
        if self.pending.add(run_id, metrics=new):
            self._write(only_full=True)

    def log_summary(self, run_id: str, metrics: dict[str, float | None], step: int = 0) -> None:
        """Summary metrics at `step` (0); None/NaN skipped; a value equal to the stored one is not re-logged."""
        st = self.runs.state(run_id)
        ts = int(time.time() * 1000)
        new = []
        for key, value in bulk.summary_metrics(metrics).items():
            if st.latest.get(key) != value:
                new.append(Metric(key, value, ts, step))
                st.latest[key] = value
        self.pending.add(run_id, metrics=new)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        """Copy a file (or folder) into the run's artifacts; re-logging the same path overwrites it."""
        self.client.log_artifact(run_id, str(local_path), artifact_path)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        """Write `text` as artifact file `name` (e.g. "study.yaml", "curves/arm.csv")."""
        self.client.log_text(run_id, text, name)

    def log_dataset(self, run_id: str, name: str, digest: str, source: dict, profile: dict,
                    context: str = "train") -> None:
        """The run's task as an MLflow dataset input (the UI's Dataset column); logging it again is a no-op."""
        self.client.log_inputs(run_id, [_dataset_input(name, digest, source, profile, context)])

    def log_table(self, run_id: str, data: dict, name: str) -> None:
        """`data` (columns) as an MLflow table artifact `name` (mlflow.load_table reads it back)."""
        self.client.log_table(run_id, data, name)

    def curves(self, run_ids: list[str], skip: set[str] = frozenset()) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """{run_id: {key: [(step, value)]}} of every metric of the runs but those in `skip`, read back from
        the store (buffers written first)."""
        self.flush()
        keys = sorted({k for rid in run_ids for k in self.runs.state(rid).stored_keys} - set(skip))
        records = None
        if keys and self.private_sql:
            try:
                records = histories_bulk(self.client, run_ids, keys)
            except Exception:   # the public path below reads the same
                records = None
        if records is None:
            records = histories_public(self.client, run_ids, keys)
        out: dict[str, dict[str, dict[int, float]]] = {rid: {} for rid in run_ids}
        for rid, key, step, value, _ in sorted(records, key=lambda r: r[4]):   # the latest write of a step wins
            out[rid].setdefault(key, {})[int(step)] = value
        return {rid: {k: sorted(pts.items()) for k, pts in c.items()} for rid, c in out.items()}

    def set_tags(self, run_id: str, tags: dict) -> None:
        """Buffer tags (mutable, e.g. a description known only at the end)."""
        self.pending.add(run_id, tags=[RunTag(k, param_str(v)) for k, v in tags.items()])

    def flush(self) -> None:
        """Write everything buffered."""
        self._write()

    def finish(self, run_id: str | list[str], status: str = "FINISHED") -> None:
        """Write the buffers of one run or several, then end them with `status` (FINISHED | FAILED |
        KILLED); several: in one transaction on a SQL store."""
        ids = [run_id] if isinstance(run_id, str) else list(run_id)
        self._write(run_ids=ids)
        if len(ids) == 1 or self._bulk("ending runs", bulk.end_runs, ids, status) is None:
            for rid in ids:
                self.client.set_terminated(rid, status)
        for rid in ids:
            self.runs.state(rid).status = status

    def close(self) -> None:
        """Write what is buffered."""
        self.flush()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, run_ids=None, only_full: bool = False) -> None:
        for rid, metrics, tags in self.pending.write(run_ids, only_full):
            st = self.runs.states.get(rid)
            if st is not None:
                st.stored_keys.update(m.key for m in metrics)
                st.tags.update(tags)


def _dataset_input(name: str, digest: str, source: dict, profile: dict, context: str = "train"):
    from mlflow.entities import Dataset, DatasetInput, InputTag
    ds = Dataset(name=name, digest=digest, source_type="code", source=json.dumps(source, sort_keys=True),
                 profile=json.dumps(profile, sort_keys=True))
    return DatasetInput(ds, [InputTag("mlflow.data.context", context)])


def _write_quietly(pending: Pending) -> None:
    try:
        pending.write()
    except Exception:
        pass
