"""Processes on 127.0.0.1 or in network namespaces of our own, each ended by its process group: the
tracking server and a two-node Ray cluster for tests/test_cluster.py and benchmarks/cluster.py.

Multi-node Ray refuses loopback, so TwoNodes makes two namespaces joined by a veth pair (10.77.0.1 and
10.77.0.2, needs root and `ip`): the head node, PostgreSQL and the MLflow server in the first, a worker
node in the second. Every process is started in its own session and, when done, its group gets SIGTERM
then SIGKILL; then whatever is left in the namespaces (`ip netns pids`) is killed and the namespaces are
deleted (which deletes the veth pair). Never `ray stop`: it ends every Ray process on the machine.
"""
from __future__ import annotations

import configparser
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

HEAD_IP, WORKER_IP = "10.77.0.1", "10.77.0.2"
RAY_PORT = 6390
# A local Ray instance (ray.init() in the driver) needs no token; the two-node cluster runs with token
# authentication (two_nodes: RAY_AUTH_MODE=token and the token file on every node, as Ray documents)
ENV = {**os.environ, "RAY_worker_niceness": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM to the process group, SIGKILL if it has not ended within `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def descendants(pid: int) -> list[int]:
    """Process ids of every descendant of `pid` (from /proc)."""
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped, counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def spawn(cmd: list[str], log: Path, netns: str | None = None, env: dict | None = None) -> subprocess.Popen:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.Popen(prefix + cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env or ENV,
                            start_new_session=True)


@contextmanager
def reachable_dir():
    """A temporary folder that PostgreSQL's own user can reach (pytest's are 0700 root), removed after."""
    d = Path(tempfile.mkdtemp(prefix="gi-cluster-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Server(NamedTuple):
    uri: str        # http://HOST:PORT, what studies log to
    backend: str    # its PostgreSQL database, as an MLflow tracking URI (reachable where the server runs)
    data: Path      # its data folder (credentials.ini: the generated admin and PostgreSQL passwords)
    username: str   # the admin, from credentials.ini
    password: str

    def env(self, base: dict | None = None) -> dict:
        """An environment whose MLflow client logs in as the admin (MLflow's own variables)."""
        return {**(base or ENV), "MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}


@contextmanager
def tracking_server(data: Path, host: str = "127.0.0.1", netns: str | None = None):
    """`python -m tracking.server` on a free port; yields a Server."""
    port, pg_port = free_port(), free_port()
    log = data.parent / f"{data.name}.log"
    proc = spawn([sys.executable, "-m", "tracking.server", "--data", str(data), "--host", host, "--port", str(port),
                  "--pg-port", str(pg_port)], log, netns)
    try:
        end = time.monotonic() + 180
        while "tracking URI:" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"tracking server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)
        cfg = configparser.ConfigParser(interpolation=None)
        cfg.read(data / "credentials.ini")
        pg = f"{cfg['postgres']['role']}:{quote(cfg['postgres']['password'], safe='')}"
        yield Server(f"http://{host}:{port}", f"postgresql+psycopg2://{pg}@127.0.0.1:{pg_port}/mlflow", data,
                     cfg["mlflow"]["mlflow_tracking_username"], cfg["mlflow"]["mlflow_tracking_password"])
    finally:
        stop(proc, timeout=60)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def netns_available() -> str | None:
    """Why two-node namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    return None


@contextmanager
def two_nodes(folder: Path, cpus: int = 1):
    """Namespaces gi-head and gi-worker: a Ray head (with the tracking server, basic auth on: it listens
    beyond loopback) and a worker node of `cpus` CPUs each, with Ray's token authentication: one generated
    token in a file only its owner reads, RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH on every node and in
    the driver. Yields (ray address, Server, run(cmd) -> CompletedProcess in the head namespace, as the
    server's admin)."""
    tag = f"{os.getpid() % 100000}"
    token = folder / "ray_auth_token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, secrets.token_hex(32).encode())
    os.close(fd)
    env = {**ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    head, worker = f"gi-head-{tag}", f"gi-worker-{tag}"
    procs: list[subprocess.Popen] = []
    made: list[str] = []
    try:
        for ns in (head, worker):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", f"veh{tag}", "type", "veth", "peer", "name", f"vew{tag}")
        for ns, dev, ip in ((head, f"veh{tag}", HEAD_IP), (worker, f"vew{tag}", WORKER_IP)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        ray = str(Path(sys.executable).with_name("ray"))
        address = f"{HEAD_IP}:{RAY_PORT}"
        # --temp-dir of our own: `ray start --head` records its address in <temp dir>/ray_current_cluster,
        # which a later plain ray.init() elsewhere would join
        procs.append(spawn([ray, "start", "--head", "--block", "--node-ip-address", HEAD_IP, "--port", str(RAY_PORT),
                            "--num-cpus", str(cpus), "--include-dashboard=false", "--disable-usage-stats",
                            f"--temp-dir={folder / 'rh'}"], folder / "ray-head.log", head, env))
        _wait_ray(address, head, 1, env)
        procs.append(spawn([ray, "start", "--block", "--address", address, "--node-ip-address", WORKER_IP,
                            "--num-cpus", str(cpus), "--disable-usage-stats", f"--temp-dir={folder / 'rw'}"],
                           folder / "ray-worker.log", worker, env))
        _wait_ray(address, head, 2, env)
        with tracking_server(folder / "server", host=HEAD_IP, netns=head) as server:
            def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
                return subprocess.run(["ip", "netns", "exec", head, *cmd], env=kw.pop("env", server.env(env)), **kw)
            yield address, server, run
    finally:
        for p in reversed(procs):
            stop(p)
        for ns in made:   # anything Ray left behind in our namespaces, by process id
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def _wait_ray(address: str, netns: str, nodes: int, env: dict, timeout: float = 120.0) -> None:
    probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
             "print(sum(n['Alive'] for n in ray.nodes()))")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", probe, address], env=env,
                           capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip().splitlines()[-1:] == [str(nodes)]:
            return
        time.sleep(1)
    raise RuntimeError(f"Ray cluster at {address} did not reach {nodes} nodes within {timeout:.0f} s")


def store_contents(uri: str, experiment: str, curves: bool = True) -> dict:
    """{run name: [status, params, {metric key: [[step, value], ...]}]} of every run of the experiment, as
    JSON data, every stored point (a step logged twice shows twice). Tests compare stores with it;
    `python -m benchmarks.netns URI EXPERIMENT` prints it. Read a server's runs through its database URI
    (Server.backend): one query per metric key there (tracking.query.histories_bulk), against one HTTP
    request per run and key (smoke fork study, this machine: 1.5 s against 42 s over HTTP)."""
    from mlflow.tracking import MlflowClient
    from tracking.query import histories_bulk, histories_public
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], max_results=5000)
    out = {r.info.run_id: [r.info.status, dict(r.data.params), {}] for r in runs}
    if curves and runs:
        ids, keys = list(out), sorted({k for r in runs for k in r.data.metrics})
        for rid, key, step, value, _ in histories_bulk(c, ids, keys) or histories_public(c, ids, keys):
            out[rid][2].setdefault(key, []).append([step, value])
    for v in out.values():
        v[2] = {k: sorted(pts) for k, pts in v[2].items()}
    return {r.info.run_name: out[r.info.run_id] for r in runs}


if __name__ == "__main__":
    import json
    print(json.dumps(store_contents(sys.argv[1], sys.argv[2])))

