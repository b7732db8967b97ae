"""Read a study's runs back from the store and say what it lacks of what the study reported.

A study ends with exit 0 only when this finds nothing (interventions.execution): every run the study made is
in the store and ended with its status, with its summaries (the values it reported), and with its curve
up to the step it trained to. The expectations are plain data built from the study's state.json:
    {"role": "arm" | "member" | "study", "arm": name or None, "seed": int or None,
     "status": "FINISHED", "metrics": {key: value}, "last_step": step or None}
`last_step`: the step of the member's last curve row, checked on CURVE_KEY.
"""
from __future__ import annotations

import math

from .query import histories_bulk, histories_public
from .store import search_all

CURVE_KEY = "train/acc"   # every logged row has it


def run_key(role: str, arm, seed) -> tuple[str, str, str]:
    return role, "" if arm is None else str(arm), "" if seed is None else str(seed)


def describe(e: dict) -> str:
    if e["role"] == "study":
        return "the study run"
    return f"arm run {e['arm']}" if e["role"] == "arm" else f"member run {e['arm']} seed {e['seed']}"


def missing(client, experiment_id: str, study: str, expected: list[dict]) -> list[tuple[str | None, str]]:
    """(arm, "<run>: <what it lacks>") for every expected run that the store does not hold as expected.
    Expected metrics that are None or NaN ("not reached") are not looked for."""
    stored = {}
    for r in search_all(client, experiment_id, f"tags.study = '{study}'"):
        t = r.data.tags
        stored.setdefault(run_key(t.get("role", ""), t.get("arm"), t.get("seed")), r)   # oldest first
    wanted = [e for e in expected if e.get("last_step") is not None and run_key(e["role"], e["arm"], e["seed"]) in stored]
    ids = [stored[run_key(e["role"], e["arm"], e["seed"])].info.run_id for e in wanted]
    try:
        records = histories_bulk(client, ids, [CURVE_KEY]) if ids else []
    except Exception:
        records = None
    if records is None:
        records = histories_public(client, ids, [CURVE_KEY])
    last: dict[str, int] = {}
    for rid, _, step, _, _ in records:
        last[rid] = max(last.get(rid, step), step)
    out = []
    for e in expected:
        r = stored.get(run_key(e["role"], e["arm"], e["seed"]))
        if r is None:
            out.append((e["arm"], f"{describe(e)}: not in the store"))
            continue
        lacks = []
        if r.info.status != e.get("status", "FINISHED"):
            lacks.append(f"{r.info.status}, not {e.get('status', 'FINISHED')}")
        metrics = {k: float(v) for k, v in e.get("metrics", {}).items() if v is not None and not math.isnan(float(v))}
        gone = [k for k, v in metrics.items()
                if k not in r.data.metrics or not math.isclose(r.data.metrics[k], v, rel_tol=1e-12, abs_tol=1e-300)]
        if gone:
            gone = sorted(gone)
            lacks.append(f"{len(gone)} of {len(metrics)} summaries missing or different ({', '.join(gone[:2])}"
                         + (", ..." if len(gone) > 2 else "") + ")")
        if e.get("last_step") is not None and last.get(r.info.run_id, -1) < e["last_step"]:
            lacks.append(f"curves end at step {last.get(r.info.run_id, 'none')}, not {e['last_step']}")
        if lacks:
            out.append((e["arm"], f"{describe(e)}: {'; '.join(lacks)}"))
    return out
