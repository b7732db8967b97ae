"""Credentials of the lab server (python -m tracking.server) and what its clients are told when theirs fail.

The server keeps its secrets in one file of its data folder, readable by its owner only (mode 0600), made on
first start and reused by every restart:

    [mlflow]    mlflow_tracking_username, mlflow_tracking_password: the MLflow admin (generated password;
                the section is in the format of MLflow's own ~/.mlflow/credentials)
    [server]    flask_secret_key: MLflow's MLFLOW_FLASK_SERVER_SECRET_KEY (CSRF tokens, sessions)
    [postgres]  role, password: the PostgreSQL role MLflow connects as (scram-sha-256)
    [users]     name = password, for each user added with --user

Clients authenticate the way MLflow's client does (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, else
~/.mlflow/credentials); `refusal` says, before anything is written, why a server would refuse them.
"""
from __future__ import annotations

import configparser
import json
import os
import secrets
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

FILE = "credentials.ini"
ADMIN, ROLE = "admin", "mlflow"


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def write(path: Path, cfg: configparser.ConfigParser) -> None:
    """Write `cfg` to `path` with mode 0600 from its first byte (a temporary file renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        cfg.write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_or_create(data: Path) -> configparser.ConfigParser:
    """The server's secrets (module docstring), generated where missing and written back; the file's mode is
    set to 0600 whatever it was."""
    path = data / FILE
    cfg = configparser.ConfigParser(interpolation=None)
    if path.is_file():
        cfg.read(path)
    wanted = {"mlflow": {"mlflow_tracking_username": ADMIN, "mlflow_tracking_password": None},
              "server": {"flask_secret_key": None}, "postgres": {"role": ROLE, "password": None}, "users": {}}
    changed = not path.is_file()
    for section, keys in wanted.items():
        if not cfg.has_section(section):
            cfg.add_section(section)
            changed = True
        for key, value in keys.items():
            if not cfg.get(section, key, fallback=""):
                cfg.set(section, key, value or new_secret())
                changed = True
    if changed:
        write(path, cfg)
    os.chmod(path, 0o600)
    return cfg


def client_credentials() -> tuple[str | None, str | None]:
    """(username, password) as MLflow's client resolves them: its environment variables, else the [mlflow]
    section of ~/.mlflow/credentials."""
    from mlflow.utils.credentials import read_mlflow_creds
    creds = read_mlflow_creds()
    return creds.username, creds.password


def refusal(uri: str, timeout: float = 30.0) -> str | None:
    """Why the MLflow server at `uri` refuses this client (HTTP 401/403 on a read every user may make), or
    None when it lets it in (or asks for no credentials)."""
    user, password = client_credentials()
    req = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    if user is not None and password is not None:
        req.add_header("Authorization", "Basic " + b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout):
            return None
    except urllib.error.HTTPError as e:
        code, detail = e.code, _message(e)
    if code not in (401, 403):
        return None   # the server answered; anything else shows in the first real request
    if code == 403:
        return f"user {user!r} is not permitted to read this server (HTTP 403{detail})"
    if user is None or password is None:
        return ("the server asks for credentials and none were given (HTTP 401): set MLFLOW_TRACKING_USERNAME "
                "and MLFLOW_TRACKING_PASSWORD, or an [mlflow] section in ~/.mlflow/credentials")
    return f"the server refused the credentials of user {user!r} (HTTP 401: wrong username or password)"


def _message(e: urllib.error.HTTPError) -> str:
    try:
        body = e.read().decode(errors="replace")
        msg = json.loads(body).get("message", "") if body.lstrip().startswith("{") else body.strip()
    except (OSError, ValueError):
        return ""
    return f": {msg.splitlines()[0][:200]}" if msg else ""


def write_refusal(uri: str, experiment: str, kind_tag: tuple[str, str]) -> str | None:
    """For a server: why this client may not write into `experiment`, which exists (HTTP 403 when it sets the
    experiment's kind tag to what it is, as every study run does; a new experiment any user may create), or
    None."""
    if not uri.startswith(("http://", "https://")):
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    try:
        c.set_experiment_tag(exp.experiment_id, kind_tag[0], exp.tags.get(kind_tag[0], kind_tag[1]))
    except MlflowException as e:
        if e.get_http_status_code() != 403:
            raise
        return (f"user {client_credentials()[0]!r} may not write to experiment {experiment!r} (HTTP 403): an admin "
                f"or the experiment's owner grants EDIT")
    return None
