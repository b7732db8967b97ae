"""What a lab needs on one host for many writers: PostgreSQL in a data folder and MLflow's own tracking
server on it (what MLflow documents for concurrent clients; a SQLite file has one writer host).

    python -m tracking.server --data DIR [--host 127.0.0.1] [--port 5000] [--pg-port 5433] [--workers 2]

First use: `initdb` in DIR/postgres (as the `postgres` user when run as root: PostgreSQL refuses root),
the database `mlflow`, and DIR/artifacts for the artifacts (served by the server, so clients on other
hosts need no shared disk). PostgreSQL listens on 127.0.0.1 only (only the MLflow server talks to it,
trusted on loopback); the MLflow server listens on --host. Prints the tracking URI, then serves until
SIGINT/SIGTERM, when it stops the server and shuts PostgreSQL down cleanly (`pg_ctl stop -m fast`):
everything committed stays in DIR, and the same command starts it again on the same data.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

EXIT_BAD_INPUT = 2


class ServerError(RuntimeError):
    pass


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its tools as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], what: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise ServerError(f"{what} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:] or r.returncode}")
    return r.stdout


def start_postgres(data: Path, port: int) -> Path:
    """initdb on first use, then start PostgreSQL on 127.0.0.1:port; returns its data folder."""
    for tool in ("initdb", "pg_ctl", "psql"):
        if shutil.which(tool) is None:
            raise ServerError(f"PostgreSQL's {tool} is not on PATH (Debian: apt-get install postgresql)")
    pg, sock = data / "postgres", data / "socket"
    data.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and subprocess.run(_as_postgres(["test", "-x", str(data)])).returncode:
        raise ServerError("the postgres user cannot reach this folder (a folder above it is not "
                          "world-searchable, e.g. a 0700 home or pytest folder): choose one it can reach")
    sock.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(sock, "postgres", "postgres")
    if not (pg / "PG_VERSION").is_file():
        pg.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(pg, "postgres", "postgres")
        _run(_as_postgres(["initdb", "-D", str(pg), "-U", "postgres", "--auth=trust", "-E", "UTF8"]), "initdb")
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"
    _run(_as_postgres(["pg_ctl", "-D", str(pg), "-o", opts, "-l", str(pg / "postgres.log"), "-w", "-t", "60",
                       "start"]), f"starting PostgreSQL (log: {pg / 'postgres.log'})")
    psql = ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-tAc"]
    if _run(psql + ["SELECT 1 FROM pg_database WHERE datname = 'mlflow'"], "psql").strip() != "1":
        _run(psql + ["CREATE DATABASE mlflow"], "creating the database")
    return pg


def stop_postgres(pg: Path) -> None:
    subprocess.run(_as_postgres(["pg_ctl", "-D", str(pg), "-m", "fast", "-w", "stop"]), capture_output=True)


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tracking.server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="folder for PostgreSQL's data and the artifacts")
    ap.add_argument("--host", default="127.0.0.1", help="address the MLflow server listens on")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--pg-port", type=int, default=5433, help="PostgreSQL's port (on 127.0.0.1)")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes")
    args = ap.parse_args(argv)
    data = args.data.absolute()
    try:
        pg = start_postgres(data, args.pg_port)
    except ServerError as e:
        print(f"error: {data}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    backend = f"postgresql+psycopg2://postgres@127.0.0.1:{args.pg_port}/mlflow"
    uri = f"http://{args.host}:{args.port}"
    (data / "artifacts").mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                             "--artifacts-destination", str(data / "artifacts"), "--host", args.host,
                             "--port", str(args.port), "--workers", str(args.workers),
                             "--uvicorn-opts", "--no-access-log"],
                            env=server_env(), start_new_session=True)

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        wait_healthy(uri, proc)
        print(f"tracking URI: {uri}  (PostgreSQL {backend}; artifacts {data / 'artifacts'})", flush=True)
        proc.wait()
        print(f"error: mlflow server exited with status {proc.returncode}", file=sys.stderr)
        return 1
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        stop_postgres(pg)
        print("stopped: the MLflow server and PostgreSQL (data kept in " f"{data})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
