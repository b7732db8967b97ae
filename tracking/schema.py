"""A SQLite store's schema: built whole, checked before use, never migrated in place.

MLflow builds a new store's schema by running its migrations one by one, each committed on its own (some
rebuild a table through a temporary `_alembic_tmp_*` copy). A process killed in between leaves a store
that every later open fails on. So a new store is built in `<db>.creating-<pid>` beside it and renamed
into place once complete: a kill at any moment leaves either no store or a whole one, plus a leftover
that the next opener removes (saying so). The caller holds the store's lock file (store.client).

An existing store whose schema is not this MLflow's would be migrated in place by MLflow on open, with
the same risk; it is refused with the commands that upgrade it safely. A half-made store that holds no
runs (an interrupted creation by an older version) is built anew; one that holds runs is refused.
Read with the standard library's sqlite3: no MLflow import, so the CLI can check before it starts.
"""
from __future__ import annotations

import os
import re
import sqlite3
from contextlib import closing
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Callable

from .faults import hit

CREATING = ".creating-"   # <db>.creating-<pid>: a new store being built


class SchemaError(Exception):
    """The store cannot be used as it is; the message says why and what to do."""


@lru_cache(maxsize=1)
def head_revision() -> tuple[str | None, frozenset[str]]:
    """(head, every revision) of this MLflow's schema migrations, read from its migration scripts (alembic's
    revision / down_revision lines); (None, set()) where they cannot be found: the check is then skipped."""
    spec = find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        return None, frozenset()
    versions = Path(list(spec.submodule_search_locations)[0]) / "store" / "db_migrations" / "versions"
    revisions, downs = set(), set()
    for f in versions.glob("*.py"):
        text = f.read_text(errors="replace")
        rev = re.search(r"^revision\s*(?::[^=]*)?=\s*['\"](\w+)['\"]", text, re.M)
        down = re.search(r"^down_revision\s*(?::[^=]*)?=\s*(.*)$", text, re.M)
        if rev:
            revisions.add(rev.group(1))
            downs |= set(re.findall(r"['\"](\w+)['\"]", down.group(1) if down else ""))
    heads = revisions - downs
    return (heads.pop() if len(heads) == 1 else None), frozenset(revisions)


def inspect_sqlite(path: Path) -> str:
    """'absent' | 'empty' (no tables) | 'half-made' (not this MLflow's schema, no runs: safe to build anew)
    | 'ok'; SchemaError for a store that holds runs and would need a migration, or is not MLflow's."""
    if not path.exists():
        return "absent"
    if path.stat().st_size == 0:
        return "empty"
    with closing(sqlite3.connect(path, timeout=30)) as db:   # reads only
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return "empty"
        count = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("runs", "experiments")
                 if t in tables}
        rev = db.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
    rev = rev[0] if rev else None
    head, known = head_revision()
    leftover = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    if not leftover and rev is not None and (head is None or rev == head):
        return "ok"
    if not leftover and not tables & {"alembic_version", "experiments", "runs"}:
        raise SchemaError(f"{path} is a SQLite database but not an MLflow store (tables "
                          f"{', '.join(sorted(tables)[:5])}); give another --tracking-uri")
    n_runs = count.get("runs", 0)
    if n_runs == 0 and count.get("experiments", 0) <= 1:   # nothing in it but MLflow's Default
        return "half-made"
    if rev is None:
        raise SchemaError(f"{path} has MLflow's tables but no schema version (no alembic_version) and holds "
                          f"{n_runs} runs; restore it from a backup, or move it aside to start a new store")
    if leftover:
        raise SchemaError(f"{path} is half-way through a schema migration that was interrupted (leftover table "
                          f"{leftover[0]}, revision {rev}) and holds {n_runs} runs; restore it from a backup, or "
                          "move it aside to start a new store")
    if rev in known:
        raise SchemaError(f"{path} has MLflow schema revision {rev}, older than this MLflow's {head}; MLflow would "
                          "migrate it in place, which an interruption can break: back it up, then upgrade it: "
                          f"python -c \"import sqlite3; sqlite3.connect('{path}').backup(sqlite3.connect('{path}.bak'))\" "
                          f"&& mlflow db upgrade sqlite:///{path}")
    raise SchemaError(f"{path} has MLflow schema revision {rev}, unknown to this MLflow (head {head}): it was "
                      "written by a newer MLflow; install that version (pip install -U mlflow)")


def prepare_sqlite(path: Path, log: Callable[[str], None]) -> None:
    """Make the store at `path` whole before MLflow opens it (the caller holds its lock): remove the leftover
    of an interrupted creation, build a missing (or empty, or half-made and run-less) store atomically."""
    for left in sorted(path.parent.glob(f"{path.name}{CREATING}*")):
        left.unlink(missing_ok=True)
        if not left.name.endswith("-journal"):
            log(f"removed {left}, the leftover of an interrupted store creation")
    state = inspect_sqlite(path)
    if state == "ok":
        return
    if state == "half-made":
        log(f"{path} was a store whose creation had been interrupted (no runs in it); building it anew")
    if state != "absent":
        for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            f.unlink(missing_ok=True)
    _create(path)


def _create(path: Path) -> None:
    """Build MLflow's schema in <path>.creating-<pid> (rollback journal: each commit is in the file itself),
    then rename it into place. A unique name per creation: MLflow caches an engine per URI."""
    from mlflow import MlflowClient
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    tmp = path.with_name(f"{path.name}{CREATING}{os.getpid()}")

    def step(*_):
        hit("store.create")
    event.listen(Engine, "after_cursor_execute", step)
    try:
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
    finally:
        event.remove(Engine, "after_cursor_execute", step)
    os.replace(tmp, path)   # SQLite fsynced each commit (rollback journal, synchronous FULL)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)    # the rename itself survives a power cut
    finally:
        os.close(fd)
