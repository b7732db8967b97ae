"""tracking.store: URI resolution, unreachable stores refused without side effects, experiments."""
import socket
from pathlib import Path

import pytest

from tracking.store import (EXPERIMENT_KIND, StoreError, check_uri, delete_study_runs, ensure_experiment, resolve_uri,
                            sqlite_path, ui_link)


def test_resolve_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri() == f"sqlite:///{tmp_path.resolve() / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_uri() == "http://127.0.0.1:5000"
    assert resolve_uri("sqlite:////x/y.db") == "sqlite:////x/y.db"
    assert resolve_uri("store.db") == f"sqlite:///{tmp_path.resolve() / 'store.db'}"
    assert sqlite_path("sqlite:////abs/m.db") == Path("/abs/m.db")


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_check_uri_refuses_unusable_stores_and_creates_nothing(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    (tmp_path / "a_folder.db").mkdir()
    (tmp_path / "text.db").write_text("not sqlite")
    before = _tree(tmp_path)
    cases = {
        f"sqlite:///{blocker}/mlruns/mlflow.db": "file where a folder should be",
        f"sqlite:///{tmp_path}/a_folder.db": "is a folder",
        f"sqlite:///{tmp_path}/text.db": "not a SQLite database",
        "sqlite:////proc/mlruns/mlflow.db": "pseudo filesystem",
        f"http://127.0.0.1:{_closed_port()}": "no MLflow server answered",
        "ftp://example.org/store": "unsupported scheme",
        str(tmp_path / "mlruns"): "file store",
        "sqlite://": "in-memory",
    }
    for uri, reason in cases.items():
        with pytest.raises(StoreError) as e:
            check_uri(uri)
        assert uri in str(e.value) and reason in str(e.value), str(e.value)
    assert _tree(tmp_path) == before
    assert not Path("/proc/mlruns").exists()
    check_uri(f"sqlite:///{tmp_path}/new/deeper/mlflow.db")   # creatable: fine, still nothing made
    assert _tree(tmp_path) == before


def test_ensure_experiment_creates_store_quietly_with_artifacts_beside_db(tracking_uri, capfd):
    from mlflow import MlflowClient
    db = sqlite_path(tracking_uri)
    assert not db.parent.exists()
    eid = ensure_experiment(tracking_uri, "paper/dose")
    assert db.is_file()
    assert ensure_experiment(tracking_uri, "paper/dose") == eid
    exp = MlflowClient(tracking_uri).get_experiment(eid)
    assert exp.artifact_location == (db.parent / "artifacts" / "paper_dose").as_uri()
    err = capfd.readouterr().err
    assert "Creating initial MLflow database tables" not in err and "alembic" not in err, err


def test_tracking_imports_neither_torch_nor_the_upper_packages():
    import ast
    import tracking
    for path in Path(tracking.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in {"torch", "interventions", "analyses"}, (path.name, name)


def test_delete_study_runs_soft_deletes_only_that_study_and_creates_nothing(tracking_uri):
    from mlflow import MlflowClient
    from mlflow.entities import ViewType
    db = sqlite_path(tracking_uri)
    assert delete_study_runs(tracking_uri, "fork_study", "fork_study") == 0
    assert not db.parent.exists()   # no store file yet: nothing made
    eid = ensure_experiment(tracking_uri, "fork_study")
    assert delete_study_runs(tracking_uri, "no_such_experiment", "fork_study") == 0
    c = MlflowClient(tracking_uri)
    ours = [c.create_run(eid, tags={"study": "fork_study"}).info.run_id for _ in range(3)]
    other = c.create_run(eid, tags={"study": "other"}).info.run_id
    assert delete_study_runs(tracking_uri, "fork_study", "fork_study") == 3
    assert [r.info.run_id for r in c.search_runs([eid])] == [other]
    deleted = c.search_runs([eid], run_view_type=ViewType.DELETED_ONLY)
    assert sorted(r.info.run_id for r in deleted) == sorted(ours)   # soft: still in the store
    assert delete_study_runs(tracking_uri, "fork_study", "fork_study") == 0


def test_several_first_users_of_a_new_sqlite_store_at_once_all_succeed(tmp_path):
    """Two terminals, a fresh mlruns/: MLflow creates the schema on first use, and two first users both
    ran its migrations ("duplicate column name: step"); store.client serializes the first use."""
    import subprocess
    import sys
    uri = f"sqlite:///{tmp_path}/new/mlflow.db"
    code = ("import sys; from tracking.store import ensure_experiment; "
            "print(ensure_experiment(sys.argv[1], sys.argv[2]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, f"study{i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e[-2000:] for _, e in outs]
    assert len({o.strip() for o, _ in outs}) == 4          # four experiments, one store


def test_experiments_are_model_training_ones_and_the_link_opens_their_runs_table(tracking_uri):
    """MLflow's own experiment-kind tag on every experiment the toolkit makes (an older one without it gets it
    on its next use); the link names the runs table's view, which MLflow 3.17's UI reads from the URL."""
    from mlflow import MlflowClient
    c = MlflowClient(tracking_uri)
    eid = ensure_experiment(tracking_uri, "made_here")
    assert c.get_experiment(eid).tags[EXPERIMENT_KIND[0]] == "custom_model_development"
    old = c.create_experiment("made_elsewhere")
    assert ensure_experiment(tracking_uri, "made_elsewhere") == old
    assert c.get_experiment(old).tags[EXPERIMENT_KIND[0]] == "custom_model_development"
    assert ui_link(tracking_uri, "made_here") == (f"mlflow ui --backend-store-uri {tracking_uri}, then "
                                                  f"http://127.0.0.1:5000/#/experiments/{eid}/runs"
                                                  "?workflowType=machine_learning")
    assert ui_link(tracking_uri, "never_made") is None


def test_the_servers_credentials_file_is_owner_only_reused_and_in_mlflows_client_format(tmp_path, monkeypatch):
    """tracking.credentials: the first start generates every secret into an owner-only file; a restart
    reads the same ones back (a deleted key alone is made again); its [mlflow] section, copied to
    ~/.mlflow/credentials, is what MLflow's client logs in with."""
    import os
    from tracking import credentials
    first = credentials.load_or_create(tmp_path)
    path = tmp_path / credentials.FILE
    assert path.stat().st_mode & 0o777 == 0o600
    secrets = {(s, k): v for s in first.sections() for k, v in first[s].items()}
    assert len({v for (s, k), v in secrets.items() if k in ("mlflow_tracking_password", "flask_secret_key",
                                                            "password")}) == 3   # three different secrets
    os.chmod(path, 0o644)
    again = credentials.load_or_create(tmp_path)
    assert {(s, k): v for s in again.sections() for k, v in again[s].items()} == secrets
    assert path.stat().st_mode & 0o777 == 0o600
    again.remove_option("server", "flask_secret_key")
    credentials.write(path, again)
    third = credentials.load_or_create(tmp_path)
    assert third["server"]["flask_secret_key"] not in ("", secrets[("server", "flask_secret_key")])
    assert third["mlflow"]["mlflow_tracking_password"] == secrets[("mlflow", "mlflow_tracking_password")]
    home = tmp_path / "home"
    (home / ".mlflow").mkdir(parents=True)
    (home / ".mlflow" / "credentials").write_text(
        "[mlflow]\n" + "".join(f"{k} = {v}\n" for k, v in third["mlflow"].items()))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert credentials.client_credentials() == ("admin", secrets[("mlflow", "mlflow_tracking_password")])
