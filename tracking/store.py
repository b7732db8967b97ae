"""Where runs live: the tracking URI, store checks, experiments, and searching or deleting a study's runs.

Default store: embedded SQLite at <cwd>/mlruns/mlflow.db with artifacts beside it under
<dbdir>/artifacts/<experiment>. The deprecated file store is refused.
"""
from __future__ import annotations

import logging
import os
import re
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlparse

from .credentials import refusal
from .schema import CREATING, SchemaError, inspect_sqlite, prepare_sqlite

HTTP_TIMEOUT_S = 3.0   # one health request; a refused connection fails at once
HTTP_WAIT_S = 60.0     # a server that is up but slow to answer (a loaded host) gets this long in all
DB_SCHEMES = ("postgresql", "mysql", "mssql")  # SQL stores MLflow supports besides sqlite
PAGE = 5000     # runs per search_runs page


class StoreError(Exception):
    """The tracking store cannot be used; the message names the URI and the reason."""

    def __init__(self, uri: str, reason: str):
        self.uri, self.reason = uri, reason
        super().__init__(f"tracking store {uri!r}: {reason}")


def quiet_mlflow_logs() -> None:
    """Creating a SQLite store runs alembic migrations that print INFO lines; keep warnings only."""
    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils",
                 "mlflow.store.tracking.sqlalchemy_store", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)


def resolve_uri(uri: str | None = None) -> str:
    """arg > $MLFLOW_TRACKING_URI > sqlite:///<abs cwd>/mlruns/mlflow.db. A bare *.db path becomes sqlite."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or str(Path.cwd() / "mlruns" / "mlflow.db")
    if "://" not in uri and uri.endswith((".db", ".sqlite", ".sqlite3")):
        uri = f"sqlite:///{Path(uri).expanduser().resolve()}"
    return uri


def sqlite_path(uri: str) -> Path:
    """Filesystem path of a sqlite:/// URI (sqlite:///rel.db is relative to cwd, sqlite:////abs absolute)."""
    rest = unquote(uri[len("sqlite://"):]).split("?", 1)[0]
    if not rest.startswith("/") or rest == "/":
        raise StoreError(uri, "in-memory SQLite keeps nothing; give a file, e.g. sqlite:////abs/path/mlflow.db")
    return Path(rest[1:]).resolve() if not rest.startswith("//") else Path(rest[1:])


def _check_sqlite(uri: str) -> None:
    path = sqlite_path(uri)
    if path.exists():
        if path.is_dir():
            raise StoreError(uri, f"{path} is a folder, expected a SQLite file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(uri, f"{path} is not readable and writable")
        # Read through SQLite only, never open() + close(): closing any descriptor of the file drops
        # every POSIX lock this process's SQLite connections hold on it, and another process's connection
        # (a reader: the MLflow UI, a report) may then checkpoint and delete the WAL under them: their
        # later commits are lost (a paper-scale study lost its last writes that way).
        try:
            inspect_sqlite(path)
        except SchemaError as e:
            raise StoreError(uri, str(e)) from None
        except sqlite3.DatabaseError as e:
            if "not a database" in str(e):
                raise StoreError(uri, f"{path} exists but is not a SQLite database") from None
            raise StoreError(uri, f"{path} cannot be read ({e})") from None   # locked past the wait, damaged
        return
    # Nothing exists yet: the first existing ancestor must be a writable folder on a writable mount.
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise StoreError(uri, f"{parent} is a file where a folder should be (cannot create {path})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(uri, f"folder {parent} is not writable (cannot create {path})")
    fs = os.statvfs(parent)
    if fs.f_flag & os.ST_RDONLY:
        raise StoreError(uri, f"folder {parent} is on a read-only filesystem (cannot create {path})")
    if fs.f_blocks == 0:  # proc, sysfs: pseudo filesystems that hold no files
        raise StoreError(uri, f"folder {parent} is on a pseudo filesystem without storage (cannot create {path})")


def _check_http(uri: str) -> None:
    url = uri.rstrip("/") + "/health"
    end = time.monotonic() + HTTP_WAIT_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S):   # any status but 2xx raises HTTPError
                break
        except urllib.error.HTTPError as e:
            raise StoreError(uri, f"GET {url} answered HTTP {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            # a timeout means something listens but is busy: ask again; refused or unresolvable: no server
            if isinstance(reason, TimeoutError) and time.monotonic() < end:
                continue
            waited = f"within {HTTP_WAIT_S:.0f} s" if isinstance(reason, TimeoutError) else "at once"
            raise StoreError(uri, f"no MLflow server answered at {url} ({waited}: {reason})") from None
    if why := refusal(uri):   # credentials missing or refused: said before anything is written
        raise StoreError(uri, why)


def _check_db(uri: str) -> None:
    try:
        import sqlalchemy
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": int(HTTP_TIMEOUT_S)})
        with engine.connect():
            pass
    except Exception as e:  # driver missing, refused, auth: all mean "unusable"
        raise StoreError(uri, f"cannot connect ({type(e).__name__}: {e})") from None


def check_uri(uri: str) -> None:
    """Raise StoreError if the store is unreachable or cannot be written. Creates nothing."""
    scheme = urlparse(uri).scheme.lower() if "://" in uri else ""
    if scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("http", "https"):
        _check_http(uri)
    elif scheme.split("+")[0] in DB_SCHEMES:
        _check_db(uri)
    elif scheme in ("", "file"):
        raise StoreError(uri, "the file store is deprecated and refused by MLflow >= 3.13; "
                              "use sqlite:////abs/path/mlflow.db")
    else:
        raise StoreError(uri, f"unsupported scheme {scheme!r} (use sqlite:///, http(s)://, or a SQL database URI)")


def safe_name(name: str) -> str:
    """Experiment name as a folder name: 'paper/dose' -> 'paper_dose'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


def artifact_root(uri: str) -> Path | None:
    """<dbdir>/artifacts for a SQLite store; None for a server (it chooses)."""
    return sqlite_path(uri).parent / "artifacts" if uri.startswith("sqlite:") else None


_FAST_SQLITE = False


def _fast_sqlite() -> None:
    """WAL journal + synchronous=NORMAL on every SQLite connection of this process.

    MLflow commits each call as its own transaction; in the default rollback-journal mode each commit
    costs several fsyncs (~50 ms under load). WAL keeps commits durable across a killed process (only a
    power cut can lose the last ones) and lets `mlflow ui` read while we write. Not for a store being
    built (`_create_sqlite`): its file must be complete by itself when it is renamed into place.
    """
    global _FAST_SQLITE
    if _FAST_SQLITE:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _pragmas(dbapi_conn, _record):
        if isinstance(dbapi_conn, sqlite3.Connection):
            cur = dbapi_conn.cursor()
            try:
                files = [row[2] for row in cur.execute("PRAGMA database_list")]
                if not any(CREATING in Path(f).name for f in files if f):
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.OperationalError:  # a read-only store: reading still works
                pass
            finally:
                cur.close()

    _FAST_SQLITE = True


def _say(msg: str) -> None:
    print(f"tracking: {msg}", file=sys.stderr, flush=True)


def client(uri: str, log: Callable[[str], None] = _say):
    """An MlflowClient on a checked store. A SQLite store that does not exist yet is created whole
    (tracking.schema); one that this MLflow would migrate in place is refused (StoreError)."""
    from mlflow import MlflowClient
    quiet_mlflow_logs()
    if not uri.startswith("sqlite:"):
        return MlflowClient(tracking_uri=uri)
    check_uri(uri)
    path = sqlite_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    _fast_sqlite()
    # One process at a time creates, repairs or first opens a store: two first users at once both ran
    # MLflow's migrations and one died ("duplicate column name: step"). The lock file sits beside it.
    import fcntl
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            prepare_sqlite(path, log)
        except SchemaError as e:
            raise StoreError(uri, str(e)) from None
        c = MlflowClient(tracking_uri=uri)
        c.search_experiments(max_results=1)
    return c


# MLflow's own experiment-kind tag: without it MLflow 3's UI opens an experiment on the GenAI traces
# overview, not on its runs table.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def ensure_experiment(uri: str, name: str) -> str:
    """Create (or find, or restore) experiment `name`, tagged as a model-training experiment (one without an
    experiment kind gets the tag); artifacts go to <dbdir>/artifacts/<safe name>."""
    from mlflow.exceptions import MlflowException
    check_uri(uri)
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        if EXPERIMENT_KIND[0] not in exp.tags:
            c.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id
    root = artifact_root(uri)
    location = (root / safe_name(name)).as_uri() if root is not None else None
    try:
        return c.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
    except MlflowException as e:  # a concurrent creator won the race
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise StoreError(uri, f"cannot create experiment {name!r}: {e.message}") from None
        return exp.experiment_id


# MLflow 3.17's UI chooses its GenAI or its model-training view from the URL's workflowType, else from the
# browser's last choice (GenAI on a fresh profile), not from the experiment's kind tag: a link with the
# parameter opens on the runs table.
UI_RUNS = "#/experiments/{}/runs?workflowType=machine_learning"
UI_DEFAULT = "http://127.0.0.1:5000/"   # where `mlflow ui` serves by default


def ui_link(uri: str, experiment: str) -> str | None:
    """Where to see `experiment`'s runs table in the MLflow UI, in one line; None where its id cannot be
    read (a SQL server store: browse it through the `mlflow server` in front of it)."""
    try:
        if uri.startswith("sqlite:"):
            path = sqlite_path(uri)
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                row = db.execute("SELECT experiment_id FROM experiments WHERE name = ?", (experiment,)).fetchone()
            finally:
                db.close()
            return row and f"mlflow ui --backend-store-uri {uri}, then {UI_DEFAULT}{UI_RUNS.format(row[0])}"
        if uri.startswith(("http://", "https://")):   # through MLflow's client: it sends the credentials
            from mlflow import MlflowClient
            exp = MlflowClient(uri).get_experiment_by_name(experiment)
            return exp and f"{uri.rstrip('/')}/{UI_RUNS.format(exp.experiment_id)}"
    except Exception:   # a link is a courtesy: no store, no experiment, a refusal: no link
        return None
    return None


def delete_study_runs(uri: str, experiment: str, study: str) -> int:
    """Delete (MLflow's soft delete) every run tagged study=`study` in `experiment`; how many.

    0, creating nothing, where the SQLite store file does not exist yet or the experiment does not.
    """
    if uri.startswith("sqlite:") and not sqlite_path(uri).exists():
        return 0
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return 0
    ids = [r.info.run_id for r in search_all(c, exp.experiment_id, f"tags.study = '{study}'")]
    for run_id in ids:   # every page read first: deleting while paging would shift the pages
        c.delete_run(run_id)
    return len(ids)


def search_all(c, experiment_id: str, filter_string: str = "") -> list:
    """Every active run of the experiment matching `filter_string`, oldest first (all pages)."""
    runs, token = [], None
    while True:
        page = c.search_runs([experiment_id], filter_string=filter_string, max_results=PAGE, page_token=token,
                             order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs
