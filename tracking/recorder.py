"""The run hierarchy (study -> arm -> member) and buffered, resume-safe logging into MLflow.

Why buffered: one MLflow call is a ~10 ms SQLite transaction whatever its size, so curves are kept in
memory and written with log_batch in chunks of up to 1000 entries, by a background thread, off the
training loop. Why identity tags: a resumed process must find the runs it made before (no duplicates),
so every run carries a canonical `identity` tag (role, study, arm, seed, ...) looked up under its parent.
Resume safety: params are written once (a different value is an error), and a (key, step) already in the
store is never logged again.
"""
from __future__ import annotations

import math
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field

from mlflow.entities import Metric, Param, RunTag

from .store import client, ensure_experiment, resolve_uri

CHUNK = 1000            # MLflow's log_batch limit: 1000 entries per call (params <= 100, tags <= 100)
FLUSH_EVERY_S = 30.0    # the background writer empties small buffers this often (UI stays current)
IDENTITY_KEYS = ("study", "arm", "seed")  # tags that, with role and parent, name a run
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"


class ParamConflict(ValueError):
    """A param already stored on a run with another value (MLflow params are immutable)."""


def param_str(value) -> str:
    """Canonical string of a param/tag value, so that a resumed process compares equal."""
    if value is None:
        return "none"
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def identity_string(role: str, tags: dict[str, str], identity: dict | None) -> str:
    ident = {"role": role, **{k: tags[k] for k in IDENTITY_KEYS if k in tags},
             **{k: param_str(v) for k, v in (identity or {}).items()}}
    return ";".join(f"{k}={ident[k]}" for k in sorted(ident))


@dataclass
class _RunState:
    run_id: str
    name: str
    status: str
    params: dict[str, str] = field(default_factory=dict)     # stored or pending
    latest: dict[str, float] = field(default_factory=dict)   # key -> latest value (stored or pending)
    stored_keys: set[str] = field(default_factory=set)       # metric keys that had values at load
    seen: dict[str, set[int]] = field(default_factory=dict)  # key -> steps stored or pending


class Recorder:
    """Writes one experiment's runs. Safe to recreate after a crash: it finds and reuses its runs.

    Call flush() before writing a training snapshot: points still buffered when the process dies are
    lost, and a resumed run only re-emits the steps after its snapshot.
    """

    def __init__(self, uri: str | None, experiment: str, *, background: bool = True,
                 chunk: int = CHUNK, flush_every_s: float = FLUSH_EVERY_S):
        self.uri = resolve_uri(uri)
        self.experiment = experiment
        self.experiment_id = ensure_experiment(self.uri, experiment)
        self.client = client(self.uri)
        self.chunk = chunk
        self._runs: dict[str, _RunState] = {}
        self._index: dict[tuple[str, str], str] | None = None   # (identity, parent) -> run_id
        self._stored_tags: dict[str, dict[str, str]] = {}
        self._metrics: dict[str, list[Metric]] = {}             # pending, per run
        self._params: dict[str, list[Param]] = {}
        self._tags: dict[str, list[RunTag]] = {}
        self._lock = threading.Lock()     # guards the buffers and states (held briefly)
        self._io = threading.RLock()      # serializes store calls (SQLite: one writer at a time)
        self._error: BaseException | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        if background:   # the thread holds only a weak reference, so a dropped Recorder can be collected
            self._thread = threading.Thread(target=_writer, args=(weakref.ref(self), self._wake, self._stop,
                                                                  flush_every_s),
                                            name=f"recorder:{experiment}", daemon=True)
            self._thread.start()
        # A normal interpreter exit still writes what is buffered.
        self._finalizer = weakref.finalize(self, Recorder._close_quietly, weakref.ref(self))

    # ---- runs -------------------------------------------------------------------------------
    def run(self, role: str, name: str, *, parent_id: str | None = None, params: dict | None = None,
            tags: dict | None = None, description: str | None = None, identity: dict | None = None,
            reopen: bool = True) -> str:
        """The run named by (role, tags study/arm/seed, identity, parent): found if it exists, else created.

        Params are buffered and written once; a param stored with a different value raises ParamConflict.
        A found run that is not RUNNING is set RUNNING again (reopen=False leaves its status alone).
        """
        self._raise_pending_error()
        tags = {k: param_str(v) for k, v in (tags or {}).items()}
        tags["role"] = role
        ident = identity_string(role, tags, identity)
        tags["identity"] = ident
        if description is not None:
            tags[NOTE_TAG] = description
        params = {k: param_str(v) for k, v in (params or {}).items()}
        with self._io:
            run_id = self._lookup(ident, parent_id)
            if run_id is None:
                all_tags = dict(tags, **({PARENT_TAG: parent_id} if parent_id else {}))
                run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
                run_id = run.info.run_id
                with self._lock:
                    self._runs[run_id] = _RunState(run_id, name, "RUNNING")
                    self._stored_tags[run_id] = all_tags
                    self._index[(ident, parent_id or "")] = run_id
            st = self._runs[run_id]
            conflicts = [(k, st.params[k], v) for k, v in params.items() if k in st.params and st.params[k] != v]
            if conflicts:
                k, old, new = conflicts[0]
                raise ParamConflict(
                    f"experiment {self.experiment!r}, run {st.name!r} ({run_id}): param {k!r} is stored as "
                    f"{old!r}, refusing to change it to {new!r} (params are immutable; start a fresh "
                    f"experiment to change it)" + (f"; {len(conflicts) - 1} more conflicts" if len(conflicts) > 1 else ""))
            with self._lock:
                new_params = [Param(k, v) for k, v in params.items() if k not in st.params]
                st.params.update(params)
                self._params.setdefault(run_id, []).extend(new_params)
                stored = self._stored_tags.get(run_id, {})
                changed = [RunTag(k, v) for k, v in tags.items() if stored.get(k) != v]
                if changed:
                    self._tags.setdefault(run_id, []).extend(changed)
            if st.status != "RUNNING" and reopen:
                self.client.update_run(run_id, status="RUNNING")
                st.status = "RUNNING"
        return run_id

    def add_finished_runs(self, role: str, parent_id: str | None, runs: list[dict]) -> list[str]:
        """Many runs at once, already FINISHED, with params, tags and summary metrics (a bulk import).

        Each dict: name, params, tags, metrics (summaries at step 0), optional description, identity.
        New runs go into the store in ONE transaction when it is SQL (MLflow's per-call cost is
        ~15 ms; a paper folder has ~600 member runs); runs that already exist are completed one by
        one through run()/log_summary()/finish(), so a half-done import resumes without duplicates.
        """
        self._raise_pending_error()
        specs = []
        for r in runs:
            tags = {k: param_str(v) for k, v in (r.get("tags") or {}).items()}
            tags["role"] = role
            tags["identity"] = identity_string(role, tags, r.get("identity"))
            if r.get("description") is not None:
                tags[NOTE_TAG] = r["description"]
            if parent_id:
                tags[PARENT_TAG] = parent_id
            tags["mlflow.runName"] = r["name"]
            specs.append((r, tags, {k: param_str(v) for k, v in (r.get("params") or {}).items()}))
        ids: list[str | None] = []
        with self._io:
            for _, tags, _ in specs:
                ids.append(self._lookup(tags["identity"], parent_id))
            new = [i for i, rid in enumerate(ids) if rid is None]
            inserted = self._bulk_insert([specs[i] for i in new]) if new else []
            if inserted is not None:
                for i, rid in zip(new, inserted):
                    ids[i] = rid
            done = set(new) if inserted is not None else set()
            for i, (r, _, _) in enumerate(specs):   # runs that existed, or a store that is not SQL
                if i in done:
                    continue
                ids[i] = self.run(role, r["name"], parent_id=parent_id, params=r.get("params"),
                                  tags=r.get("tags"), description=r.get("description"),
                                  identity=r.get("identity"), reopen=False)
                self.log_summary(ids[i], r.get("metrics") or {})
                if self.status(ids[i]) == "FINISHED":
                    self._write(run_ids=[ids[i]])
                else:
                    self.finish(ids[i])
        return ids

    def _bulk_insert(self, specs) -> list[str] | None:
        """Insert finished runs through MLflow's own SQL models; None when the store is not SQL."""
        try:
            from mlflow.store.tracking.dbmodels.models import (SqlLatestMetric, SqlMetric, SqlParam,
                                                                SqlRun, SqlTag)
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
            from mlflow.utils.uri import append_to_uri_path
            from mlflow.utils.validation import _validate_batch_log_data
            from sqlalchemy import insert
        except ImportError:
            return None
        store = self.client._tracking_client.store
        if not isinstance(store, SqlAlchemyStore):
            return None
        location = self.client.get_experiment(self.experiment_id).artifact_location
        now = int(time.time() * 1000)
        runs, tag_rows, param_rows, metric_rows, states = [], [], [], [], []
        for r, tags, params in specs:
            metrics = [Metric(k, float(v), now, 0) for k, v in (r.get("metrics") or {}).items()
                       if v is not None and not math.isnan(float(v))]
            _validate_batch_log_data(metrics, [Param(k, v) for k, v in params.items()],
                                     [RunTag(k, v) for k, v in tags.items()])
            run_id = uuid.uuid4().hex
            runs.append(dict(run_uuid=run_id, name=r["name"], experiment_id=int(self.experiment_id),
                             artifact_uri=append_to_uri_path(location, run_id, "artifacts"),
                             source_type="UNKNOWN", source_name="", entry_point_name="", user_id="unknown",
                             status="FINISHED", start_time=now, end_time=now, deleted_time=None,
                             source_version="", lifecycle_stage="active"))
            tag_rows += [dict(run_uuid=run_id, key=k, value=v) for k, v in tags.items()]
            param_rows += [dict(run_uuid=run_id, key=k, value=v) for k, v in params.items()]
            metric_rows += [dict(run_uuid=run_id, key=m.key, value=m.value, timestamp=now, step=0, is_nan=False)
                            for m in metrics]
            states.append(_RunState(run_id, r["name"], "FINISHED", params=dict(params),
                                    latest={m.key: m.value for m in metrics},
                                    stored_keys={m.key for m in metrics}))
        # Core executemany: the ORM unit of work costs ~10 ms per run, this ~0.1 ms.
        with store.ManagedSessionMaker(read_only=False) as session:
            for model, rows in ((SqlRun, runs), (SqlTag, tag_rows), (SqlParam, param_rows),
                                (SqlMetric, metric_rows), (SqlLatestMetric, metric_rows)):
                if rows:
                    session.execute(insert(model.__table__), rows)
        with self._lock:
            for (_, tags, _), st in zip(specs, states):
                self._runs[st.run_id] = st
                self._stored_tags[st.run_id] = dict(tags)
                self._index[(tags["identity"], tags.get(PARENT_TAG, ""))] = st.run_id
        return [st.run_id for st in states]

    def find(self, role: str, *, parent_id: str | None = None, tags: dict | None = None,
             identity: dict | None = None) -> str | None:
        """The id of the run run() would return, or None; creates and changes nothing."""
        tags = {k: param_str(v) for k, v in (tags or {}).items()}
        with self._io:
            return self._lookup(identity_string(role, tags, identity), parent_id)

    def status(self, run_id: str) -> str:
        """RUNNING | FINISHED | FAILED | KILLED, as this recorder last saw or set it."""
        return self._state(run_id).status

    def _lookup(self, ident: str, parent_id: str | None) -> str | None:
        if self._index is None:
            self._load_index()
        return self._index.get((ident, parent_id or ""))

    def _load_index(self) -> None:
        """One search over the experiment: identities, params, latest metrics and status of every run."""
        self._index, self._stored_tags = {}, {}
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], max_results=5000, page_token=token,
                                           order_by=["attributes.start_time ASC"])
            runs.extend(page)
            token = page.token
            if not token:
                break
        for r in runs:
            ident = r.data.tags.get("identity")
            if ident is None:
                continue
            key = (ident, r.data.tags.get(PARENT_TAG, ""))
            self._index.setdefault(key, r.info.run_id)  # oldest wins if a duplicate ever slipped in
            self._register(r)

    def _register(self, r) -> _RunState:
        st = _RunState(r.info.run_id, r.info.run_name, r.info.status, params=dict(r.data.params),
                       latest=dict(r.data.metrics), stored_keys=set(r.data.metrics))
        self._runs[r.info.run_id] = st
        self._stored_tags[r.info.run_id] = dict(r.data.tags)
        return st

    def _state(self, run_id: str) -> _RunState:
        st = self._runs.get(run_id)
        if st is None:   # a run made elsewhere: load what it holds
            with self._io:
                if self._index is None:
                    self._load_index()
                st = self._runs.get(run_id) or self._register(self.client.get_run(run_id))
        return st

    # ---- logging ----------------------------------------------------------------------------
    def log_curves(self, run_id: str, rows: dict[str, list[tuple[int, float]]]) -> None:
        """Buffer curve points; a (key, step) already stored or buffered is skipped."""
        self._raise_pending_error()
        st = self._state(run_id)
        missing = [k for k in rows if k not in st.seen]
        if missing:
            self._load_seen(st, missing)
        ts = int(time.time() * 1000)
        with self._lock:
            buf = self._metrics.setdefault(run_id, [])
            for key, points in rows.items():
                seen = st.seen[key]
                for step, value in points:
                    step = int(step)
                    if step in seen:
                        continue
                    seen.add(step)
                    buf.append(Metric(key, float(value), ts, step))
                    st.latest[key] = float(value)
            full = len(buf) >= self.chunk
        if full:
            if self._thread is not None:
                self._wake.set()
            else:
                self._write(only_full=True)

    def _load_seen(self, st: _RunState, keys: list[str]) -> None:
        """First touch of a key on a run that existed before: which steps does the store hold?"""
        found = {}
        for key in keys:
            if key not in st.stored_keys:
                found[key] = set()
            else:
                with self._io:
                    found[key] = {m.step for m in self.client.get_metric_history(st.run_id, key)}
        with self._lock:
            for key, steps in found.items():
                st.seen.setdefault(key, steps)

    def log_summary(self, run_id: str, metrics: dict[str, float | None], step: int = 0) -> None:
        """Summary metrics at `step` (0); None/NaN skipped; a value equal to the stored one is not re-logged."""
        self._raise_pending_error()
        st = self._state(run_id)
        ts = int(time.time() * 1000)
        with self._lock:
            buf = self._metrics.setdefault(run_id, [])
            for key, value in metrics.items():
                if value is None:
                    continue
                value = float(value)
                if math.isnan(value) or st.latest.get(key) == value:
                    continue
                buf.append(Metric(key, value, ts, step))
                st.latest[key] = value

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        """Copy a file (or folder) into the run's artifacts; re-logging the same path overwrites it."""
        with self._io:
            self.client.log_artifact(run_id, str(local_path), artifact_path)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        """Write `text` as artifact file `name` (e.g. "study.yaml", "curves/arm.csv")."""
        with self._io:
            self.client.log_text(run_id, text, name)

    def set_tags(self, run_id: str, tags: dict) -> None:
        """Buffer tags (mutable, e.g. a description known only at the end)."""
        with self._lock:
            self._tags.setdefault(run_id, []).extend(RunTag(k, param_str(v)) for k, v in tags.items())

    def flush(self) -> None:
        """Write everything buffered; raises what the background writer failed with."""
        self._raise_pending_error()
        self._write()

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """Write the run's buffer, then end it with `status` (FINISHED | FAILED | KILLED)."""
        self._raise_pending_error()
        with self._io:
            self._write(run_ids=[run_id])
            self.client.set_terminated(run_id, status)
            self._state(run_id).status = status

    def close(self) -> None:
        """Write what is buffered and stop the background writer."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        self.flush()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        Recorder._close_quietly(lambda: self)

    @staticmethod
    def _close_quietly(ref) -> None:
        rec = ref()
        if rec is not None:
            try:
                rec.close()
            except Exception:
                pass

    # ---- writing ------------------------------------------------------------------------------
    def _take(self, run_ids=None, only_full=False) -> list[tuple[str, list, list, list]]:
        with self._lock:
            ids = set(self._metrics) | set(self._params) | set(self._tags) if run_ids is None else run_ids
            out = []
            for rid in ids:
                m = self._metrics.get(rid, [])
                if only_full and len(m) < self.chunk:
                    continue
                p, t = self._params.pop(rid, []), self._tags.pop(rid, [])
                self._metrics.pop(rid, None)
                if m or p or t:
                    out.append((rid, m, p, t))
            return out

    def _write(self, run_ids=None, only_full=False) -> None:
        with self._io:
            for rid, metrics, params, tags in self._take(run_ids, only_full):
                tags = list({t.key: t for t in tags}.values())   # last value of a tag wins
                for batch in _batches(self.chunk, metrics, params, tags):
                    self.client.log_batch(rid, **batch)
                st = self._runs.get(rid)
                if st is not None:
                    st.stored_keys.update(m.key for m in metrics)
                self._stored_tags.setdefault(rid, {}).update({t.key: t.value for t in tags})

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"tracking store {self.uri!r}: background write failed: {err}") from err


def _writer(ref, wake: threading.Event, stop: threading.Event, every_s: float) -> None:
    """Background writer: full chunks as soon as a run has one, everything every `every_s` seconds."""
    last = time.monotonic()
    while not stop.is_set():
        wake.wait(timeout=every_s)
        wake.clear()
        rec = ref()
        if rec is None or stop.is_set():
            return
        try:
            due = time.monotonic() - last >= every_s
            rec._write(only_full=not due)
            if due:
                last = time.monotonic()
        except BaseException as e:  # surfaced on the caller's next call
            rec._error = e
            return
        finally:
            del rec


def _batches(chunk: int, metrics: list, params: list, tags: list):
    """Split into log_batch calls within MLflow's limits (<= chunk entries, <= 100 params, <= 100 tags)."""
    while params or tags or metrics:
        p, t = params[:100], tags[:100]
        params, tags = params[100:], tags[100:]
        room = max(chunk - len(p) - len(t), 0)
        yield {"metrics": metrics[:room], "params": p, "tags": t}
        metrics = metrics[room:]
