"""PostgreSQL in a data folder, for the lab server (tracking.server): loopback only, passwords required.

First use: `initdb` in DIR/postgres (as the `postgres` user when run as root: PostgreSQL refuses root). Every
start writes its access rules: the superuser `postgres` only over the folder's own Unix socket, as the
operating-system user that owns the server (peer authentication, no password to leak); every TCP connection,
on 127.0.0.1 only, with a password (scram-sha-256). MLflow connects as the role `mlflow`, owner of the
database `mlflow`, with the password of the server's credentials file (tracking.credentials).
"""
from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from pathlib import Path

SUPERUSER, DATABASE = "postgres", "mlflow"


class ServerError(RuntimeError):
    pass


def as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its tools as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], what: str, stdin: str | None = None) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, input=stdin)
    if r.returncode:
        raise ServerError(f"{what} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:] or r.returncode}")
    return r.stdout


def _owned(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def _access_rules(pg: Path) -> None:
    """pg_hba.conf and pg_ident.conf, rewritten at every start (a folder made by an older version, which
    trusted every local connection, is closed the same way)."""
    os_user = "postgres" if os.geteuid() == 0 else getpass.getuser()
    (pg / "pg_ident.conf").write_text(f"# written by tracking.postgres at every start\nowner {os_user} {SUPERUSER}\n")
    (pg / "pg_hba.conf").write_text(
        "# written by tracking.postgres at every start: the superuser over the Unix socket as the owner only;\n"
        "# every TCP connection (127.0.0.1) with a password\n"
        f"local all {SUPERUSER} peer map=owner\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
        "host all all ::1/128 scram-sha-256\n")
    for f in ("pg_ident.conf", "pg_hba.conf"):
        _owned(pg / f)
        os.chmod(pg / f, 0o600)


def start(data: Path, port: int, role: str, password: str) -> Path:
    """initdb on first use, then PostgreSQL on 127.0.0.1:port with role `role` (password `password`) owning
    the database `mlflow`; returns its data folder."""
    for tool in ("initdb", "pg_ctl", "psql"):
        if shutil.which(tool) is None:
            raise ServerError(f"PostgreSQL's {tool} is not on PATH (Debian: apt-get install postgresql)")
    pg, sock = data / "postgres", data / "socket"
    data.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and subprocess.run(as_postgres(["test", "-x", str(data)])).returncode:
        raise ServerError("the postgres user cannot reach this folder (a folder above it is not "
                          "world-searchable, e.g. a 0700 home or pytest folder): choose one it can reach")
    sock.mkdir(exist_ok=True)
    _owned(sock)
    if not (pg / "PG_VERSION").is_file():
        pg.mkdir(exist_ok=True)
        _owned(pg)
        _run(as_postgres(["initdb", "-D", str(pg), "-U", SUPERUSER, "--auth-local=peer",
                          "--auth-host=scram-sha-256", "-E", "UTF8"]), "initdb")
    _access_rules(pg)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c password_encryption=scram-sha-256"
    _run(as_postgres(["pg_ctl", "-D", str(pg), "-o", opts, "-l", str(pg / "postgres.log"), "-w", "-t", "60",
                      "start"]), f"starting PostgreSQL (log: {pg / 'postgres.log'})")
    try:
        _role_and_database(sock, port, role, password)
    except ServerError:
        stop(pg)
        raise
    return pg


def _psql(sock: Path, port: int, sql: str, db: str = "postgres") -> str:
    """SQL as the superuser over the Unix socket; on stdin, so no password shows in a process list."""
    return _run(as_postgres(["psql", "-h", str(sock), "-p", str(port), "-U", SUPERUSER, "-d", db, "-X", "-q",
                             "-tA", "-v", "ON_ERROR_STOP=1"]), "psql", stdin=sql)


def _literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _role_and_database(sock: Path, port: int, role: str, password: str) -> None:
    """The role with the file's password (set again at every start: the file is what counts), owner of the
    database and of every table and sequence in it (a store made by an older version belonged to postgres)."""
    exists = _psql(sock, port, f"SELECT 1 FROM pg_roles WHERE rolname = {_literal(role)};").strip() == "1"
    verb = "ALTER" if exists else "CREATE"
    _psql(sock, port, f'{verb} ROLE "{role}" LOGIN PASSWORD {_literal(password)};')
    if _psql(sock, port, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';").strip() != "1":
        _psql(sock, port, f'CREATE DATABASE {DATABASE} OWNER "{role}";')
    _psql(sock, port, f'ALTER DATABASE {DATABASE} OWNER TO "{role}";')
    _psql(sock, port, f"""DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT tablename AS n FROM pg_tables WHERE schemaname = 'public' AND tableowner <> {_literal(role)} LOOP
    EXECUTE format('ALTER TABLE public.%I OWNER TO %I', r.n, {_literal(role)}); END LOOP;
  FOR r IN SELECT sequencename AS n FROM pg_sequences WHERE schemaname = 'public'
           AND sequenceowner <> {_literal(role)} LOOP
    EXECUTE format('ALTER SEQUENCE public.%I OWNER TO %I', r.n, {_literal(role)}); END LOOP;
END $$;""", db=DATABASE)


def stop(pg: Path) -> None:
    subprocess.run(as_postgres(["pg_ctl", "-D", str(pg), "-m", "fast", "-w", "stop"]), capture_output=True)
