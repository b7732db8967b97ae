"""What outlives a process: the study's state.json (digest, fork steps, derived levers, resolved lever
records, finished arms), atomic text writes, and the helper thread that carries out tracking calls and file
writes in program order (so a kill leaves what an unthreaded program would have left a little earlier)."""
from __future__ import annotations

import json
import os
import queue
import tempfile
import threading
from pathlib import Path
from typing import Callable


class ResumeError(Exception):
    """The snapshots on disk belong to other settings of the study."""


def snapshot_dir(uri: str, experiment: str, base: str | Path | None = None) -> Path:
    """<base>/<experiment>; base: given (--snapshot-dir), else snapshots/ beside a SQLite store, else
    ./mlruns/snapshots."""
    from tracking.store import safe_name, sqlite_path
    if base is None:
        base = (sqlite_path(uri).parent if uri.startswith("sqlite:") else Path.cwd() / "mlruns") / "snapshots"
    return Path(base).absolute() / safe_name(experiment)


def write_text(path: Path, text: str) -> None:
    """Atomic: temp file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_state(folder: Path, digest: str, study: str, source: str, plugins: dict | None = None,
               identity: dict | None = None) -> dict:
    """state.json of the study in `folder`, or a fresh state; ResumeError if it is another study's (or the
    same study's with other settings or a changed plug-in: {module: source digest}), naming what changed
    (identity: the study's StudyBase.identity(), kept in the state to compare against)."""
    path = folder / "state.json"
    if not path.is_file():
        return {"digest": digest, "study": study, "arms": {}, "forks": {}, "derived": {}, "levers": {},
                "plugins": plugins or {}, "identity": identity, "finished": False}
    state = json.loads(path.read_text())
    if state.get("digest") != digest:
        changed = [f"plug-in {m} changed (source digest {state['plugins'].get(m)} -> {d})"
                   for m, d in (plugins or {}).items() if "plugins" in state and state["plugins"].get(m) != d]
        changed = changed or changed_keys(state.get("identity"), identity)
        why = "; ".join(changed) or f"digest {state.get('digest')} != {digest}"
        raise ResumeError(f"{source}: {folder} holds snapshots of study {state.get('study')!r} run with other "
                          f"settings ({why}); rerun with --fresh to replace them, or give another --experiment")
    state.setdefault("levers", {})
    state.setdefault("identity", identity)   # a state.json written before it was kept
    return state


def changed_keys(old: dict | None, new: dict | None, most: int = 4) -> list[str]:
    """'key.path old -> new' for each setting that differs (arms by name), the first `most` of them."""
    if old is None or new is None:
        return []
    a, b = dict(_flat(old)), dict(_flat(new))
    diff = [f"{k} {a.get(k, '(none)')} -> {b.get(k, '(none)')}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)]
    return diff[:most] + ([f"and {len(diff) - most} more"] if len(diff) > most else [])


def _flat(d, prefix: str = ""):
    """(dotted key, value) pairs; a list of named records (the arms) is keyed by name."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _flat(v, f"{prefix}{k}.")
    elif isinstance(d, list) and d and all(isinstance(x, dict) and "name" in x for x in d):
        for x in d:
            yield from _flat(x, f"{prefix}{x['name']}.")
    else:
        yield prefix[:-1], json.dumps(d)


class Worker:
    """Carries out queued calls on one helper thread, in order. After a failure it skips the rest and the
    error is raised on the training thread by the next put() or wait()."""

    def __init__(self):
        self.q: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="tracking", daemon=True)
        self.thread.start()

    def put(self, fn: Callable, *args) -> None:
        self.check()
        self.q.put((fn, args))

    def _loop(self) -> None:
        while True:
            item = self.q.get()
            try:
                if item is None:
                    return
                if self.error is None:
                    item[0](*item[1])
            except BaseException as e:
                self.error = e
            finally:
                self.q.task_done()

    def wait(self) -> None:
        self.q.join()
        self.check()

    def check(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
