"""Run identity and what the store already holds per run: the index a resumed Recorder finds its runs in.

Every run carries a canonical `identity` tag (role, tags study/arm/seed, extra identity fields); with the
parent's id it names the run, so a process that restarts finds the runs it made before instead of
making duplicates. One search over the experiment loads every run's identity, params, latest metrics
and status.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .store import search_all

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


def run_tags(role: str, tags: dict | None, identity: dict | None, description: str | None) -> dict[str, str]:
    """The tags a run is written with: canonical strings, `role`, `identity`, the description as its note."""
    out = {k: param_str(v) for k, v in (tags or {}).items()}
    out["role"] = role
    out["identity"] = identity_string(role, out, identity)
    if description is not None:
        out[NOTE_TAG] = description
    return out


@dataclass
class RunState:
    run_id: str
    name: str
    status: str
    params: dict[str, str] = field(default_factory=dict)     # stored or pending
    latest: dict[str, float] = field(default_factory=dict)   # key -> latest value (stored or pending)
    stored_keys: set[str] = field(default_factory=set)       # metric keys that had values at load
    seen: dict[str, set[int]] = field(default_factory=dict)  # key -> steps stored or pending
    tags: dict[str, str] = field(default_factory=dict)       # stored (or being written) tag values


class RunIndex:
    """The runs of one experiment by (identity, parent id), and each run's state; loaded on first use."""

    def __init__(self, client, experiment_id: str):
        self.client, self.experiment_id = client, experiment_id
        self.states: dict[str, RunState] = {}
        self._by_identity: dict[tuple[str, str], str] | None = None

    def lookup(self, ident: str, parent_id: str | None) -> str | None:
        if self._by_identity is None:
            self._load()
        return self._by_identity.get((ident, parent_id or ""))

    def add(self, st: RunState) -> None:
        """A run this process just created (its tags hold identity and parent)."""
        if self._by_identity is None:
            self._load()
        self.states[st.run_id] = st
        self._by_identity[(st.tags["identity"], st.tags.get(PARENT_TAG, ""))] = st.run_id

    def state(self, run_id: str) -> RunState:
        if self._by_identity is None:
            self._load()
        st = self.states.get(run_id)
        if st is None:   # a run made elsewhere: load what it holds
            st = self._register(self.client.get_run(run_id))
        return st

    def _load(self) -> None:
        """One search over the experiment: identities, params, latest metrics and status of every run."""
        self._by_identity, self.states = {}, {}
        for r in search_all(self.client, self.experiment_id):
            ident = r.data.tags.get("identity")
            if ident is None:
                continue
            key = (ident, r.data.tags.get(PARENT_TAG, ""))
            self._by_identity.setdefault(key, r.info.run_id)  # oldest wins if a duplicate ever slipped in
            self._register(r)

    def _register(self, r) -> RunState:
        st = RunState(r.info.run_id, r.info.run_name, r.info.status, params=dict(r.data.params),
                      latest=dict(r.data.metrics), stored_keys=set(r.data.metrics), tags=dict(r.data.tags))
        self.states[r.info.run_id] = st
        return st
