"""The buffered writer: params, tags and metric points pending per run, sent in log_batch calls.

Why buffered: one MLflow call is a ~10 ms SQLite transaction whatever its size, so points are kept in
memory and written in calls of up to 1000 entries (MLflow's limit; <= 100 params and <= 100 tags each).
On a SQL store the points of every run written at once go in through tracking.bulk.log_metrics, in one
transaction (private, measured: see there), else through log_batch.
"""
from __future__ import annotations

import warnings

from mlflow.entities import Metric, Param, RunTag

from . import bulk

CHUNK = 1000


class Pending:
    """What is buffered, per run, until write(); `chunk` entries make a run's metric buffer full."""

    def __init__(self, client, chunk: int = CHUNK, private_sql: bool = True):
        self.client, self.chunk, self.private_sql = client, chunk, private_sql
        self.metrics: dict[str, list[Metric]] = {}
        self.params: dict[str, list[Param]] = {}
        self.tags: dict[str, list[RunTag]] = {}

    def add(self, run_id: str, metrics=(), params=(), tags=()) -> bool:
        """Buffer entries; True when the run's metric buffer is full."""
        for buf, new in ((self.metrics, metrics), (self.params, params), (self.tags, tags)):
            if new:
                buf.setdefault(run_id, []).extend(new)
        return len(self.metrics.get(run_id, ())) >= self.chunk

    def write(self, run_ids=None, only_full: bool = False) -> list[tuple[str, list[Metric], dict[str, str]]]:
        """Send the buffers of `run_ids` (None: every run; only_full: only full metric buffers).

        Returns (run_id, metrics, tags) written, tags as {key: last value}.
        """
        ids = set(self.metrics) | set(self.params) | set(self.tags) if run_ids is None else run_ids
        todo = []
        for rid in list(ids):
            if only_full and len(self.metrics.get(rid, ())) < self.chunk:
                continue
            metrics = self.metrics.pop(rid, [])
            params = self.params.pop(rid, [])
            tags = {t.key: t for t in self.tags.pop(rid, [])}   # last value of a tag wins
            if metrics or params or tags:
                todo.append((rid, metrics, params, tags))
        sent = self._bulk({rid: m for rid, m, _, _ in todo if m}) if self.private_sql else set()
        for rid, metrics, params, tags in todo:
            for batch in batches(self.chunk, [] if rid in sent else metrics, params, list(tags.values())):
                self.client.log_batch(rid, **batch)
        return [(rid, metrics, {k: t.value for k, t in tags.items()}) for rid, metrics, _, tags in todo]

    def _bulk(self, points: dict[str, list[Metric]]) -> set[str]:
        """The runs whose points tracking.bulk wrote: all in one transaction; where that fails on a point
        stored already (log_batch skips it) or a busy database, run by run, and log_batch takes the runs
        that fail again. Any other failure (another MLflow's schema) ends the private path."""
        from sqlalchemy.exc import IntegrityError, OperationalError
        parts, done = [points] if points else [], set()
        while parts and self.private_sql:
            part = parts.pop()
            try:
                bulk.log_metrics(self.client, part)
                done |= set(part)
            except bulk.NotSQL:
                self.private_sql = False
            except Exception as e:
                if not isinstance(e.__cause__ or e, (IntegrityError, OperationalError)):
                    self.private_sql = False
                    warnings.warn(f"curve points through MLflow's SQL models failed ({type(e).__name__}: {e}); "
                                  "using log_batch from now on", RuntimeWarning, stacklevel=4)
                elif len(part) > 1:
                    parts += [{rid: ms} for rid, ms in part.items()]
        return done


def batches(chunk: int, metrics: list, params: list, tags: list):
    """Split into log_batch calls within MLflow's limits (<= chunk entries, <= 100 params, <= 100 tags)."""
    while params or tags or metrics:
        p, t = params[:100], tags[:100]
        params, tags = params[100:], tags[100:]
        room = max(chunk - len(p) - len(t), 0)
        yield {"metrics": metrics[:room], "params": p, "tags": t}
        metrics = metrics[room:]
