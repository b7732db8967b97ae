"""What a lab needs on one host for many writers: PostgreSQL in a data folder and MLflow's own tracking
server on it (what MLflow documents for concurrent clients; a SQLite file has one writer host), letting in
only those with credentials when it listens beyond loopback.

    python -m tracking.server --data DIR [--host 127.0.0.1] [--port 5000] [--pg-port 5433] [--workers 2]
                              [--auth] [--user NAME=LEVEL ...]

PostgreSQL (tracking.postgres) listens on 127.0.0.1 only and asks every TCP connection for a password; MLflow
connects as its own role. The MLflow server listens on --host. Beyond loopback it runs MLflow's basic
authentication (`--app-name basic-auth`; on loopback with --auth): the admin's password, the Flask secret key
and the PostgreSQL role's password are generated on first start into DIR/credentials.ini, readable by its
owner only, and reused at every restart (tracking.credentials). --user adds a user with a generated password
(kept in the same file) at a level: read (every experiment; MLflow's default for every user), edit or manage
(every experiment, now and later) or admin. Prints the tracking URI, then serves until SIGINT/SIGTERM, when
it stops the server and shuts PostgreSQL down cleanly: everything committed stays in DIR, and the same
command starts it again on the same data.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from . import credentials, postgres
from .postgres import ServerError

EXIT_BAD_INPUT = 2
LEVELS = {"read": "READ", "edit": "EDIT", "manage": "MANAGE", "admin": None}


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_env() -> dict:
    """MLflow 3's server also starts job runners (Huey consumers for its GenAI jobs, a few processes that
    poll): nothing a study uses, so they stay off unless the caller's environment asks for them."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION":
            os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}


def wait_healthy(uri: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise ServerError(f"mlflow server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise ServerError(f"mlflow server did not answer {uri}/health within {timeout:.0f} s")


def prepare_auth(data: Path, cfg, users: dict[str, str]) -> dict:
    """Basic auth's configuration (DIR/auth.ini), its user database (DIR/auth.db) migrated once here, not by
    each server worker at once, the admin holding the file's password (set again at every start: the file is
    what counts) and every --user with its level; returns the server's environment for it."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
    admin, password = cfg["mlflow"]["mlflow_tracking_username"], cfg["mlflow"]["mlflow_tracking_password"]
    db = f"sqlite:///{data / 'auth.db'}"
    # auth_cache_ttl_seconds: a checked password is not hashed again (PBKDF2) for 60 s per worker. Without it
    # every request pays the hash: the smoke fork study against a loopback --auth server took 70.8 s, 18.5 s
    # with it. A changed password reaches the other workers within those 60 s (MLflow's basic_auth.ini)
    ini = ("[mlflow]\ndefault_permission = READ\n"
           f"database_uri = {db}\nadmin_username = {admin}\n"
           "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
           "auth_cache_ttl_seconds = 60\n")
    (data / "auth.ini").write_text(ini)
    store = SqlAlchemyStore()
    store.init_db(db)
    os.chmod(data / "auth.db", 0o600)
    for name, pw, is_admin in [(admin, password, True), *((n, cfg["users"][n], LEVELS[lv] is None)
                                                          for n, lv in users.items())]:
        if store.has_user(name):
            store.update_user(name, password=pw, is_admin=is_admin)
        else:
            store.create_user(name, pw, is_admin=is_admin)
    for name, level in users.items():
        if LEVELS[level] is not None:   # every experiment, those made later too (MLflow's wildcard grant)
            store.grant_user_permission(name, "experiment", "*", LEVELS[level])
    return {"MLFLOW_AUTH_CONFIG_PATH": str(data / "auth.ini"), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": cfg["server"]["flask_secret_key"]}


def _users(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        name, _, level = spec.partition("=")
        if not name or level not in LEVELS or name == credentials.ADMIN:
            raise ServerError(f"--user {spec!r}: expected NAME=LEVEL, LEVEL one of {', '.join(LEVELS)}, NAME not "
                              f"{credentials.ADMIN!r}")
        out[name] = level
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tracking.server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="folder for PostgreSQL's data, the artifacts and "
                                                             "credentials.ini")
    ap.add_argument("--host", default="127.0.0.1", help="address the MLflow server listens on")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--pg-port", type=int, default=5433, help="PostgreSQL's port (on 127.0.0.1)")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes")
    ap.add_argument("--auth", action="store_true", help="basic authentication on loopback too (always on "
                                                        "beyond loopback)")
    ap.add_argument("--user", action="append", default=[], metavar="NAME=LEVEL",
                    help="add a user with a generated password (in credentials.ini): LEVEL read | edit | manage | "
                         "admin; repeatable")
    args = ap.parse_args(argv)
    data = args.data.absolute()
    auth = args.auth or not loopback(args.host)
    try:
        users = _users(args.user)
        if users and not auth:
            raise ServerError("--user needs authentication: a --host beyond loopback, or --auth")
        data.mkdir(parents=True, exist_ok=True)
        cfg = credentials.load_or_create(data)
        new = [name for name in users if not cfg["users"].get(name)]
        for name in new:
            cfg["users"][name] = credentials.new_secret()
        if new:
            credentials.write(data / credentials.FILE, cfg)
        role, pg_password = cfg["postgres"]["role"], cfg["postgres"]["password"]
        pg = postgres.start(data, args.pg_port, role, pg_password)
    except ServerError as e:
        print(f"error: {data}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    backend = f"postgresql+psycopg2://{role}@127.0.0.1:{args.pg_port}/{postgres.DATABASE}"
    uri = f"http://{args.host}:{args.port}"
    (data / "artifacts").mkdir(exist_ok=True)
    env = {**server_env(), "PGPASSWORD": pg_password}   # libpq's: never on a command line
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
           "--artifacts-destination", str(data / "artifacts"), "--host", args.host, "--port", str(args.port),
           "--workers", str(args.workers), "--uvicorn-opts", "--no-access-log"]
    proc = None

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        if auth:
            env.update(prepare_auth(data, cfg, users))
            cmd += ["--app-name", "basic-auth"]
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        wait_healthy(uri, proc)
        print(f"tracking URI: {uri}  (PostgreSQL role {role} at 127.0.0.1:{args.pg_port}; artifacts "
              f"{data / 'artifacts'})", flush=True)
        print(f"basic auth: on; the admin's and every user's password in {data / credentials.FILE} (owner only); "
              "clients set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" if auth else
              "basic auth: off (loopback only; --auth turns it on)", flush=True)
        proc.wait()
        print(f"error: mlflow server exited with status {proc.returncode}", file=sys.stderr)
        return 1
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        postgres.stop(pg)
        print("stopped: the MLflow server and PostgreSQL (data kept in " f"{data})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
