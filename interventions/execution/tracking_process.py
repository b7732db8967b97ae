"""The tracking process: a Tracker (tracker.py) in a child process, its calls forwarded through a socket,
so that MLflow's Python work (SQLAlchemy, matplotlib) neither holds the study's GIL nor delays training;
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
from multiprocessing.connection import Connection
from pathlib import Path

from interventions.execution.tracker import Tracker
from tracking.faults import hit


class TrackerProcess:
    """Same methods as Tracker; each call is sent to a child process (`python -m interventions.execution.tracking_process`:
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
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.Popen([sys.executable, "-m", "interventions.execution.tracking_process", str(theirs.fileno()), str(os.getpid()),
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
