"""The buffered writer: params, tags and metric points pending per run, sent in log_batch calls.

Why buffered: one MLflow call is a ~10 ms SQLite transaction whatever its size, so points are kept in
memory and written in calls of up to 1000 entries (MLflow's limit; <= 100 params and <= 100 tags each).
"""
from __future__ import annotations

from mlflow.entities import Metric, Param, RunTag

CHUNK = 1000


class Pending:
    """What is buffered, per run, until write(); `chunk` entries make a run's metric buffer full."""

    def __init__(self, client, chunk: int = CHUNK):
        self.client, self.chunk = client, chunk
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
        done = []
        for rid in list(ids):
            if only_full and len(self.metrics.get(rid, ())) < self.chunk:
                continue
            metrics = self.metrics.pop(rid, [])
            params = self.params.pop(rid, [])
            tags = {t.key: t for t in self.tags.pop(rid, [])}   # last value of a tag wins
            if not (metrics or params or tags):
                continue
            for batch in batches(self.chunk, metrics, params, list(tags.values())):
                self.client.log_batch(rid, **batch)
            done.append((rid, metrics, {k: t.value for k, t in tags.items()}))
        return done


def batches(chunk: int, metrics: list, params: list, tags: list):
    """Split into log_batch calls within MLflow's limits (<= chunk entries, <= 100 params, <= 100 tags)."""
    while params or tags or metrics:
        p, t = params[:100], tags[:100]
        params, tags = params[100:], tags[100:]
        room = max(chunk - len(p) - len(t), 0)
        yield {"metrics": metrics[:room], "params": p, "tags": t}
        metrics = metrics[room:]
