"""The MLflow side of a study run: study -> arm -> member runs, curves, summaries, artifacts.

`Tracker` does it in this process (with a Recorder, or a NullRecorder when tracking is off).
`TrackerProcess` runs a Tracker in a child process and forwards calls to it through a socket, so that
MLflow's Python work (SQLAlchemy, matplotlib) neither holds this process's GIL nor delays training;
`sync()` returns once the child has written everything sent before it (the resume order relies on it).
The child ignores Ctrl-C (the parent closes the runs) and dies with its parent (a SIGKILLed parent must
not leave a writer behind that races the resumed process). The CLI starts the child early (`prestart`),
so that its fixed cost (imports, opening an existing store: 2.5-3.2 CPU-s measured) overlaps the CLI's own start.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from multiprocessing.connection import Connection
from pathlib import Path

from tracking.faults import hit

from .summary import dense_curves_csv, dense_curves_table, member_summary, seed_mean_curves
from .vocab import MemberKey


class NullRecorder:
    """Recorder stand-in when tracking is off (benchmarks, tests): accepts every call, keeps nothing."""

    def __init__(self, *_, **__):
        self._n = 0

    def run(self, role: str, name: str, **_) -> str:
        self._n += 1
        return f"null-{self._n}"

    def add_runs(self, role: str, parent_id, runs: list, **_) -> list[str]:
        return [self.run(role, r["name"]) for r in runs]

    def log_curves(self, *_, **__): pass
    def log_summary(self, *_, **__): pass
    def log_artifact(self, *_, **__): pass
    def log_text(self, *_, **__): pass
    def log_dataset(self, *_, **__): pass
    def log_table(self, *_, **__): pass
    def flush(self): pass
    def finish(self, *_, **__): pass
    def close(self): pass


def provenance(kernels_path: str | None = None) -> dict[str, str]:
    """Tags of the study run: the project's git commit, branch and dirty flag (MLflow's mlflow.source.*
    tags, where the UI shows them; dirty: tracked files changed), the package version, the compiled
    kernels' file, the host."""
    from importlib.metadata import PackageNotFoundError, version
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None
    try:
        pkg = version("grokking-interventions")
    except PackageNotFoundError:
        pkg = "not installed"
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "interventions.run", "package_version": pkg,
            "host": socket.gethostname()}
    commit = git("rev-parse", "HEAD")
    if commit:   # a git checkout (not an installed copy)
        tags.update({"mlflow.source.git.commit": commit,
                     "mlflow.source.git.branch": git("rev-parse", "--abbrev-ref", "HEAD") or "",
                     "git_dirty": "true" if git("status", "--porcelain", "--untracked-files=no") else "false"})
    if kernels_path:
        tags["kernels_path"] = kernels_path
    return tags


class Tracker:
    def __init__(self, rec, study: str):
        self.rec, self.study = rec, study
        self.study_run: str | None = None
        self.arm_runs: dict[str, str] = {}
        self.member_runs: dict[MemberKey, str] = {}
        self.open_runs: list[str] = []

    def _tags(self, arm: str | None = None, seed: int | None = None, design_role: str | None = None) -> dict:
        return {"study": self.study, **({"arm": arm} if arm is not None else {}),
                **({"seed": seed} if seed is not None else {}),
                **({"design_role": design_role} if design_role else {})}

    def open_study(self, description: str | None, params: dict, yaml_text: str, graph, forks: dict,
                   provenance: dict | None = None) -> None:
        self.study_run = self.rec.run("study", self.study, tags={**self._tags(), **(provenance or {})},
                                      description=description, params=params)
        self.rec.log_text(self.study_run, yaml_text, "study.yaml")
        if graph is not None and not isinstance(self.rec, NullRecorder):
            from .views import draw_graph
            with tempfile.TemporaryDirectory() as tmp:
                draw_graph(graph, Path(tmp) / "graph.png", forks)
                self.rec.log_artifact(self.study_run, str(Path(tmp) / "graph.png"))

    def open_arm(self, name: str, params: dict, description: str, seeds: list[int],
                 datasets: dict | None = None) -> None:
        """datasets: {seed or None (the arm): plan.dataset(...)}, logged as each run's dataset input."""
        role, datasets = params.get("design_role"), datasets or {}
        rid = self.rec.run("arm", name, parent_id=self.study_run, params=params, tags=self._tags(name, None, role),
                           description=description)
        self.arm_runs[name] = rid
        self.open_runs.append(rid)
        if None in datasets:
            self.rec.log_dataset(rid, **datasets[None])
        members = [{"name": f"{name} seed={seed}", "params": {**params, "seed": seed},
                    "tags": self._tags(name, seed, role), "description": f"{description}; seed {seed}",
                    "datasets": [datasets[seed]] if seed in datasets else []} for seed in seeds]
        for seed, mid in zip(seeds, self.rec.add_runs("member", rid, members)):   # one transaction
            self.member_runs[MemberKey(name, seed)] = mid
            self.open_runs.append(mid)

    def log_rows(self, step: int, rows: dict) -> None:
        for key, row in rows.items():
            self.rec.log_curves(self.member_runs[key], {k: [(step, v)] for k, v in row.items()})

    def finish_arm(self, name: str, results: list[dict], curves: dict, summary: dict, yaml_text: str) -> None:
        """summary: summary.arm_summary(results, curves), the one the scheduler derives levers from."""
        members = [self.member_runs[r["key"]] for r in results]
        for mid, r in zip(members, results):
            self.rec.log_summary(mid, member_summary(r))
        rid = self.arm_runs[name]
        self.rec.log_curves(rid, seed_mean_curves(curves.values()))
        self.rec.log_summary(rid, summary)
        self.rec.log_text(rid, yaml_text, "study.yaml")
        self.rec.log_text(rid, dense_curves_csv(name, curves), "curves.csv")
        self.rec.log_table(rid, dense_curves_table(name, curves), "curves.json")
        self.rec.finish([*members, rid])   # the arm and its members end together (one transaction)
        done = {rid, *members}
        self.open_runs = [r for r in self.open_runs if r not in done]

    def log_member_file(self, key: MemberKey, path: str, folder: str) -> None:
        self.rec.log_artifact(self.member_runs[key], path, folder)

    def log_study_file(self, path: str, folder: str) -> None:
        self.rec.log_artifact(self.study_run, path, folder)

    def finish_study(self, table: str, n_done: int) -> None:
        self.rec.log_text(self.study_run, table, "arm_table.txt")
        self.rec.log_summary(self.study_run, {"n_arms_done": n_done})
        self.rec.finish(self.study_run)

    def repair_arm(self, name: str, params: dict, description: str, seeds: list[int], datasets: dict,
                   results: list[dict], summary: dict, yaml_text: str) -> None:
        """Write a finished arm again from what state.json kept (its params, member results and summary), its
        curves read back from the member runs: runs missing from the store are made, the others reopened,
        then everything is logged and ended as finish_arm does (what is stored already is not written twice)."""
        self.open_arm(name, params, description, seeds, datasets)
        ids = {r["key"]: self.member_runs[r["key"]] for r in results}
        skip = {k for r in results for k in member_summary(r)}
        stored = self.rec.curves(list(ids.values()), skip)
        self.finish_arm(name, results, {key: stored[rid] for key, rid in ids.items()}, summary, yaml_text)

    def check(self, expected: list[dict]) -> list[tuple[str | None, str]]:
        """What the store lacks of `expected` (tracking.audit), read back after writing every buffer."""
        if isinstance(self.rec, NullRecorder):
            return []
        from tracking.audit import missing
        self.rec.flush()
        return missing(self.rec.client, self.rec.experiment_id, self.study, expected)

    def sync(self) -> None:
        self.rec.flush()

    def abort(self, status: str = "KILLED") -> None:
        """Close the runs still open (after an exception or Ctrl-C); a resumed run reopens them."""
        for rid in self.open_runs + ([self.study_run] if self.study_run else []):
            try:
                self.rec.finish(rid, status)
            except Exception:
                pass
        self.open_runs = []

    def close(self) -> None:
        self.rec.close()


# ---------------------------------------------------------------- in a child process
class TrackerProcess:
    """Same methods as Tracker; each call is sent to a child process (`python -m interventions.tracker`:
    a fresh interpreter, so no fork of a threaded parent and no re-import of the caller's script).
    Start it from the main thread: the child's parent-death signal follows the thread that started it."""

    METHODS = ("open_study", "open_arm", "log_rows", "log_member_file", "log_study_file", "finish_arm",
               "repair_arm", "finish_study", "abort")

    def __init__(self, uri: str, experiment: str, study: str):
        global _spare
        spare, _spare = _spare, None
        if spare is not None and (spare[0] != uri or spare[1].poll() is not None):
            spare[2].close()   # it ends at the EOF
            spare = None
        _, self.proc, self.conn = spare or _spawn(uri)
        self.conn.send(("open", (uri, experiment, study)))

    def __getattr__(self, method: str):
        if method not in self.METHODS:
            raise AttributeError(method)
        return lambda *args: self.conn.send((method, args))

    def sync(self) -> None:
        """Wait until the child has written everything sent so far; raise what it failed with."""
        self._ask("sync")

    def check(self, expected: list[dict]) -> list[tuple[str | None, str]]:
        """Tracker.check in the child, after everything sent so far."""
        return self._ask("check", expected)

    def _ask(self, method: str, *args):
        try:
            self.conn.send((method, args))
            error, value = self.conn.recv()
        except (EOFError, OSError):
            self.proc.wait()
            raise RuntimeError(f"the tracking process died (exit status {self.proc.returncode}) before the store "
                               "held everything; run the same command again to complete it") from None
        if error:
            raise RuntimeError(f"{error}; the store is incomplete: run the same command again to complete it "
                               "(after fixing the cause)")
        return value

    def close(self) -> None:
        try:
            self.conn.send(("close", ()))
            error, _ = self.conn.recv()
        except (EOFError, OSError):
            error = None
        self.conn.close()
        self.proc.wait(timeout=120)
        if error:
            raise RuntimeError(error)


_spare: tuple[str, subprocess.Popen, Connection] | None = None


def _spawn(uri: str) -> tuple[str, subprocess.Popen, Connection]:
    ours, theirs = socket.socketpair()
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.Popen([sys.executable, "-m", "interventions.tracker", str(theirs.fileno()), str(os.getpid()),
                             uri], pass_fds=[theirs.fileno()], env=env)
    theirs.close()
    return uri, proc, Connection(ours.detach())


def prestart(uri: str) -> None:
    """Start the next TrackerProcess's child now (from the main thread), so that its imports (MLflow,
    SQLAlchemy, matplotlib) and the opening of the store (`uri`, checked, if it exists) overlap this process's
    own start (torch, the kernels) rather than training: measured by benchmarks.tracking. The next
    TrackerProcess on `uri` takes it; an unused one ends with this process."""
    global _spare
    if _spare is None:
        _spare = _spawn(uri)


def _die_with_parent(parent_pid: int) -> None:
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass   # not Linux: the socket's EOF still ends the child, a moment later
    if os.getppid() != parent_pid:   # the parent died before the signal was armed
        os._exit(0)


def _serve(conn, uri: str) -> bool:
    # Before the first call arrives (see prestart): the imports, and the store opened (MLflow keeps one
    # store object per URI; runs are looked up only at "open", after a --fresh has deleted its runs).
    # Only a store that exists already, or a server: the CLI may still refuse to start (exit 2), and
    # must then leave no new store behind.
    from tracking.recorder import Recorder
    from tracking.store import client, sqlite_path
    from matplotlib.figure import Figure   # for the graph picture (views.draw_graph)
    del Figure
    try:
        if uri.startswith(("http:", "https:")) or (uri.startswith("sqlite:") and sqlite_path(uri).exists()):
            client(uri)
    except Exception:
        pass           # the same error comes again at "open", and is reported then
    tracker, error = None, None
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):    # the parent is gone
            return False
        value = None
        try:
            # a failpoint (tracking.faults): tests lose, fail, stall or end the process at any call
            if hit(f"tracker.{method}") and method in TrackerProcess.METHODS:
                continue
            if method == "open":
                uri = args[0]
                tracker = Tracker(Recorder(uri, args[1]), args[2])
            elif method == "abort" and tracker is not None:
                tracker.abort(*args)
            elif method == "close":
                if tracker is not None:
                    tracker.close()
            elif error is None:
                value = getattr(tracker, method)(*args)
        except BaseException as e:     # reported at the next answer; later calls are skipped
            error = error or f"tracking store {uri!r}: {type(e).__name__}: {e}"
        if method in ANSWERED:
            conn.send((error, value))
        if method == "close":
            return True


ANSWERED = ("sync", "check", "close")   # calls the parent waits for: (error or None, value)


if __name__ == "__main__":
    fd, parent, uri = sys.argv[1:4]
    _die_with_parent(int(parent))
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's: it closes the runs
    if _serve(Connection(int(fd)), uri):
        # closed: everything is committed; skip the interpreter's teardown of MLflow's modules (~0.9 s
        # measured, which the parent's close waits for)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
