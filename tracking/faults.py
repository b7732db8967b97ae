"""Failpoints: named places where a test makes this program stall, fail or die on purpose, so that crash
safety is checked at the moments that matter instead of at whatever moment a timer happens to hit.

Off unless the environment names some (children inherit it: the tracking process, Ray workers):

    GROKKING_FAULTS="POINT[/CONTEXT]=ACTION[@N][;...]"

POINT is a name passed to `hit`; CONTEXT, if given, must be a prefix of the context passed with it (a
cohort job id, for example). ACTION, on the N-th matching hit in this process (every hit without @N):
    sleep:S      sleep S seconds
    raise        raise FaultInjected
    exit         os._exit(3): the process dies without cleanup
    kill         SIGKILL this process
    kill-parent  SIGKILL the parent process, then this one (a study killed while its tracking process works)
    skip         `hit` returns True: the caller leaves out what it was about to do (where it supports that)
Points in the code: store.create (each SQL statement while a new SQLite store is built), tracker.<method>
(a call in the tracking process, before it runs; skip: the call is lost), cohort.checkpoint (a fresh cohort job emitted a checkpoint).
"""
from __future__ import annotations

import os
import signal
import time

ENV = "GROKKING_FAULTS"
VERBS = ("sleep", "raise", "exit", "kill", "kill-parent", "skip")


class FaultInjected(RuntimeError):
    """Raised by a failpoint whose action is `raise`."""


def _parse(spec: str) -> list[dict]:
    rules = []
    for part in filter(None, (s.strip() for s in spec.split(";"))):
        point, _, action = part.partition("=")
        name, _, context = point.partition("/")
        action, _, nth = action.partition("@")
        verb, _, arg = action.partition(":")
        if verb not in VERBS or (verb == "sleep") != bool(arg):
            raise ValueError(f"{ENV}: cannot read {part!r} (POINT[/CONTEXT]=ACTION[@N], ACTION one of "
                             f"{', '.join(VERBS)}; sleep:SECONDS)")
        rules.append({"name": name, "context": context, "verb": verb, "arg": float(arg or 0),
                      "nth": int(nth) if nth else None, "count": 0})
    return rules


_rules: list[dict] | None = None
_spec: str | None = None


def hit(name: str, context: str = "") -> bool:
    """A failpoint: does nothing (False) unless GROKKING_FAULTS names it; True for a `skip`."""
    global _rules, _spec
    spec = os.environ.get(ENV)
    if not spec:
        return False
    if spec != _spec:
        _rules, _spec = _parse(spec), spec
    for rule in _rules:
        if rule["name"] != name or not context.startswith(rule["context"]):
            continue
        rule["count"] += 1
        if rule["nth"] is not None and rule["count"] != rule["nth"]:
            continue
        verb = rule["verb"]
        if verb == "skip":
            return True
        if verb == "sleep":
            time.sleep(rule["arg"])
        elif verb == "raise":
            raise FaultInjected(f"fault injected at {name} {context}".strip())
        elif verb == "exit":
            os._exit(3)
        else:
            if verb == "kill-parent":
                os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
    return False
