"""Past one machine: a study on Ray (`--executor ray`) tracked on the MLflow server over PostgreSQL
(`python -m tracking.server`) ends with the same member summaries and every curve point as the local
executor into SQLite: on a local Ray instance, after SIGKILL of the worker that trains a cohort, and on a
two-node cluster in network namespaces of the test's own. Everything started here listens on 127.0.0.1
or inside those namespaces, and is ended by its process id or group (benchmarks/netns.py).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from benchmarks import netns
from conftest import SMOKE, missing

if os.environ.get("CI", "").lower() != "true":   # under CI every part must be there
    pytest.importorskip("ray")
    if shutil.which("initdb") is None:
        pytest.skip("PostgreSQL's initdb is not on PATH", allow_module_level=True)
STUDY = SMOKE   # the tests' fork study (conftest)


def run_cli(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**netns.ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    return subprocess.run([sys.executable, "-m", "interventions.run", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=900, **kw)


store_contents = netns.store_contents


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The smoke fork study on the local executor into SQLite."""
    d = tmp_path_factory.mktemp("local")
    uri = f"sqlite:///{d}/mlflow.db"
    r = run_cli([*STUDY, "--tracking-uri", uri], d)
    assert r.returncode == 0, r.stderr
    return store_contents(uri, "fork_study-smoke")


@pytest.fixture(scope="module")
def server():
    with netns.reachable_dir() as d, netns.tracking_server(d / "data") as server:
        yield server


descendants = netns.descendants


def test_ray_on_the_server_with_a_killed_worker_equals_local_on_sqlite(reference, server, tmp_path):
    """The smoke fork study on a local Ray instance, logging to the server. The cohort task `free+...` is
    held by a failpoint just after its first checkpoint (tracking.faults: cohort.checkpoint), so it is
    certainly alive and mid-cohort when the test SIGKILLs its worker, named by the driver for that task, once
    the checkpoint is on disk. Ray retries the task, the retry resumes from exactly that checkpoint, and
    every run ends FINISHED with the local executor's params and every curve point (no duplicate point,
    nothing left RUNNING). Meanwhile a second study, started at the same moment against the same server
    into its own experiment, completes too."""
    import torch
    other = subprocess.Popen([sys.executable, "-m", "interventions.run", "mediation", "--preset", "smoke",
                              "--no-progress", "--tracking-uri", server.uri, "--snapshot-dir", str(tmp_path / "other")],
                             cwd=tmp_path, env=netns.ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    env = {**netns.ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "GROKKING_FAULTS": "cohort.checkpoint/free+=sleep:900"}   # a retry resumes: no failpoint there
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "interventions.run", *STUDY, "--executor", "ray",
                             "--tracking-uri", server.uri, "--experiment", "ray-a", "--snapshot-dir",
                             str(tmp_path / "snap")], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    cohorts = tmp_path / "snap" / "ray-a" / "cohorts"
    step = None
    try:
        end = time.monotonic() + 600   # generous: a loaded 2-core machine
        while step is None and proc.poll() is None and time.monotonic() < end:
            started = re.search(r"ray: cohort (free\+\S+) training on \S+ \(worker pid (\d+)\)",
                                (tmp_path / "run.log").read_text())
            if started and (cohorts / f"{started.group(1)}.pt").is_file():
                step = torch.load(cohorts / f"{started.group(1)}.pt", weights_only=False)["cohort"]["step"]
                os.kill(int(started.group(2)), signal.SIGKILL)
            time.sleep(0.05)
        assert step is not None, (tmp_path / "run.log").read_text()[-3000:]
        assert proc.wait(timeout=900) == 0, (tmp_path / "run.log").read_text()[-3000:]
        _, err = other.communicate(timeout=900)
        assert other.returncode == 0, err[-3000:]
    finally:
        left = descendants(proc.pid)
        netns.stop(proc)
        netns.stop(other)
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    text = (tmp_path / "run.log").read_text()
    assert re.search(rf"resuming free\b.* from the snapshot at step {step}\n", text), text[-3000:]
    got = store_contents(server.backend, "ray-a")     # what the server stored, read from its database
    assert set(got) == set(reference)
    for name, (status, params, curves) in reference.items():
        assert got[name][0] == status == "FINISHED", name
        assert got[name][2] == curves, name    # every curve point, summaries included
        assert got[name][1] == params, name
    runs = store_contents(server.uri, "mediation-smoke", curves=False)
    assert runs and all(status == "FINISHED" for status, _, _ in runs.values())


@pytest.fixture(scope="module")
def namespaces() -> None:
    """What two network namespaces need (root, `ip`): outside CI a skip with the reason, under CI=true a
    failure (conftest.missing). Module-scoped and listed first, so it is checked before the reference run."""
    why = netns.netns_available()
    if why is not None:
        missing(f"two-node cluster in network namespaces: {why}")


# inside the head namespace: the HTTP status of a read without credentials, with the public default admin
# password of older MLflow releases, and with the generated one; then a password-less TCP connection to
# PostgreSQL (exit 0 only if refused)
PROBE = """import sys, urllib.request, urllib.error, base64
def status(auth):
    req = urllib.request.Request(sys.argv[1] + "/api/2.0/mlflow/experiments/search?max_results=1")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        return urllib.request.urlopen(req, timeout=30).status
    except urllib.error.HTTPError as e:
        return e.code
print(status(None), status("admin:password1234"), status("admin:" + sys.argv[2]))"""
PG_PROBE = """import sys, psycopg2
try:
    psycopg2.connect(host="127.0.0.1", port=int(sys.argv[1]), user=sys.argv[2], dbname="mlflow", connect_timeout=10)
except psycopg2.OperationalError as e:
    print(str(e).strip().splitlines()[-1]); sys.exit(0)
sys.exit("connected without a password")"""


def test_two_nodes_in_network_namespaces_equal_local(namespaces, reference, paper_metrics, tmp_path):
    """A cluster as the README sets one up: the Ray head and worker with token authentication, the tracking
    server beyond loopback (basic auth on, its secrets generated into an owner-only file). The study runs
    on both nodes with the generated credentials and stores what the local executor does; its report runs;
    without credentials, with wrong ones or with MLflow's old public default password, nothing gets in."""
    with netns.reachable_dir() as d, netns.two_nodes(d) as (address, server, run):
        assert (server.data / "credentials.ini").stat().st_mode & 0o777 == 0o600
        probe = run([sys.executable, "-c", PROBE, server.uri, server.password], text=True, capture_output=True,
                    timeout=120)
        assert probe.stdout.split() == ["401", "401", "200"], probe.stderr[-2000:]
        pg_port = int(server.backend.rsplit(":", 1)[1].split("/")[0])
        for user in ("postgres", "mlflow"):
            refused = run([sys.executable, "-c", PG_PROBE, str(pg_port), user], text=True, capture_output=True)
            assert refused.returncode == 0 and "password" in refused.stdout, (user, refused.stderr[-2000:])
        # a driver without the token, meanwhile (Ray retries ~20 s before it refuses)
        join = ThreadPoolExecutor(1).submit(run, [sys.executable, "-c", f"import ray; ray.init(address='{address}', "
                                                  "logging_level='ERROR')"], text=True, capture_output=True,
                                            timeout=180, env=netns.ENV)
        bad = run([sys.executable, "-m", "interventions.run", *STUDY, "--executor", "ray", "--ray-address", address,
                   "--tracking-uri", server.uri, "--snapshot-dir", str(tmp_path / "bad")], cwd=tmp_path, text=True,
                  capture_output=True, timeout=300, env={**server.env(), "MLFLOW_TRACKING_PASSWORD": "wrong"})
        assert bad.returncode == 2 and bad.stderr.count("error:") == 1, bad.stderr[-3000:]
        assert "refused the credentials of user 'admin'" in bad.stderr and not (tmp_path / "bad").exists()
        r = run([sys.executable, "-m", "interventions.run", *STUDY, "--executor", "ray", "--ray-address", address,
                 "--tracking-uri", server.uri, "--snapshot-dir", str(tmp_path / "snap")], cwd=tmp_path, text=True,
                capture_output=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        # MLflow's client says "View run ... at" for every run it ends against a server: the study says one link
        assert "View run" not in r.stdout and r.stdout.count("runs table in the MLflow UI: http://") == 1, r.stdout
        dump = run([sys.executable, "-m", "benchmarks.netns", server.backend, "fork_study-smoke"], text=True,
                   capture_output=True, timeout=300)   # its database is reachable inside the namespace only
        # the other two clients with the same credentials: the importer (the paper's p = 59 dose cells), the report
        (tmp_path / "dose").mkdir()
        for f in (paper_metrics / "dose").glob("mlp_ce_full_p59_clamp_*.npz"):
            (tmp_path / "dose" / f.name).symlink_to(f)
        imp = run([sys.executable, "-m", "tracking.import_npz", str(tmp_path / "dose"), "--tracking-uri", server.uri],
                  cwd=tmp_path, text=True, capture_output=True, timeout=300)
        assert imp.returncode == 0, imp.stderr[-3000:]
        rep = run([sys.executable, "-m", "analyses.report", "paper/dose", "--tracking-uri", server.uri, "--out",
                   str(tmp_path / "report")], cwd=tmp_path, text=True, capture_output=True, timeout=300)
        assert rep.returncode == 0 and "| 0.140 | 0.991 | 7 | 6.40 |" in (tmp_path / "report" / "report.md").read_text()
        join = join.result(timeout=200)   # the cluster let no driver in without its token
        assert join.returncode != 0, join.stdout[-2000:]
    assert dump.returncode == 0, dump.stderr[-3000:]
    assert json.loads(dump.stdout) == reference


def started(cmd: list[str], log: Path) -> subprocess.Popen:
    """`python -m tracking.server ...` in its own session, once it has printed its tracking URI."""
    proc = netns.spawn(cmd, log)
    end = time.monotonic() + 180
    while "tracking URI:" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > end:
            netns.stop(proc)
            raise AssertionError(f"tracking server did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc


def test_the_server_stopped_with_sigterm_and_started_again_on_its_data_loses_nothing(monkeypatch):
    """README ("Run on a cluster"): SIGTERM stops `python -m tracking.server` (exit 0) and shuts PostgreSQL
    down cleanly; the same command starts it again on the same data. Every run logged before the stop is
    there after the restart with its status (one left RUNNING), params, tags, every metric point and its
    artifact, and PostgreSQL started from a clean shutdown (no crash recovery). With basic auth on (--auth
    here, on loopback) the restart reuses the generated credentials (an owner-only file): the same admin and
    the user added with --user still get in, with their levels."""
    import configparser
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param
    with netns.reachable_dir() as d:
        port = netns.free_port()
        cmd = [sys.executable, "-m", "tracking.server", "--data", str(d / "data"), "--port", str(port),
               "--pg-port", str(netns.free_port()), "--auth", "--user", "reader=read"]
        uri, pg_log = f"http://127.0.0.1:{port}", d / "data" / "postgres" / "postgres.log"   # pg_ctl -l appends
        proc = started(cmd, d / "first.log")
        secrets = (d / "data" / "credentials.ini").read_text()
        assert (d / "data" / "credentials.ini").stat().st_mode & 0o777 == 0o600
        cfg = configparser.ConfigParser(interpolation=None)
        cfg.read_string(secrets)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", cfg["mlflow"]["mlflow_tracking_password"])
        try:
            c = MlflowClient(uri)
            eid = c.create_experiment("kept")
            ids = []
            for i in range(3):
                ids.append(c.create_run(eid, run_name=f"run{i}", tags={"role": "member"}).info.run_id)
                c.log_batch(ids[-1], metrics=[Metric("test/acc", i + s / 1000, 0, s) for s in range(0, 500, 25)],
                            params=[Param("seed", str(i))])
                c.log_text(ids[-1], f"run {i}", "notes/run.txt")
                if i < 2:
                    c.set_terminated(ids[-1])
            before = store_contents(uri, "kept")
            assert sorted(s for s, _, _ in before.values()) == ["FINISHED", "FINISHED", "RUNNING"]
            assert all(len(curves["test/acc"]) == 20 for _, _, curves in before.values())
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 0, (d / "first.log").read_text()[-2000:]
            assert "stopped: the MLflow server and PostgreSQL" in (d / "first.log").read_text()
            assert not (d / "data" / "postgres" / "postmaster.pid").exists()   # PostgreSQL is down
            proc = started(cmd, d / "second.log")
            assert (d / "data" / "credentials.ini").read_text() == secrets   # reused, nothing regenerated
            assert store_contents(uri, "kept") == before
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")   # reads every experiment, writes none
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", cfg["users"]["reader"])
            assert store_contents(uri, "kept") == before
            with pytest.raises(Exception, match="PERMISSION_DENIED|403"):
                MlflowClient(uri).log_param(ids[0], "written_by", "reader")
            rep = subprocess.run([sys.executable, "-m", "analyses.report", "kept", "--tracking-uri", uri, "--out",
                                  str(d / "report")], env={**os.environ}, capture_output=True, text=True, timeout=300)
            assert rep.returncode == 2 and len(rep.stderr.strip().splitlines()) == 1, rep.stderr[-2000:]
            assert "user 'reader' may not write to experiment 'kept' (HTTP 403)" in rep.stderr
            assert not (d / "report").exists()
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", cfg["mlflow"]["mlflow_tracking_password"])
            assert [c.get_run(r).data.tags["role"] for r in ids] == ["member"] * 3
            assert [Path(c.download_artifacts(r, "notes/run.txt", str(d))).read_text() for r in ids] == \
                [f"run {i}" for i in range(3)]
        finally:
            netns.stop(proc)
        # each start of PostgreSQL found a clean shutdown (initdb's, then the SIGTERM's), none a crash
        starts = [ln for ln in pg_log.read_text().splitlines() if "database system was " in ln]
        assert len(starts) == 2 and all("database system was shut down at" in ln for ln in starts), starts


def test_unreachable_ray_address_or_server_is_one_line_and_exit_2(tmp_path):
    port = netns.free_port()
    r = run_cli([*STUDY, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}",
                 "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"], tmp_path)
    assert r.returncode == 2
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0], r.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "snapshots").exists()
    r = run_cli([*STUDY, "--executor", "ray", "--tracking-uri", f"http://127.0.0.1:{port}"], tmp_path)
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "--tracking-uri" in r.stderr, r.stderr
    assert not (tmp_path / "mlruns").exists()
