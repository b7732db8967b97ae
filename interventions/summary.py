"""Arm summaries from member results: seed medians, seed-mean curves, the dense curves table, the final
arm table. Plain Python (no torch, no MLflow)."""
from __future__ import annotations

import io
import math
import statistics

SUMMARY_KEYS = ("t_mem", "t_grok", "delay", "logit_scale_at_grok", "weight_norm_at_grok", "N0", "target")


def median(vals) -> float | None:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(statistics.median(vals)) if vals else None


def member_summary(r: dict) -> dict:
    """Summary metrics of one member run (MLflow contract); None = not reached (not logged)."""
    out = {k: r.get(k) for k in SUMMARY_KEYS}
    out.update(grokked=int(bool(r["grokked"])), diverged=int(bool(r["diverged"])), final_step=r["final_step"])
    if r.get("fork_step") is not None and r.get("t_grok") is not None:
        out["delay_from_fork"] = r["t_grok"] - r["fork_step"]
    return out


def arm_summary(results: list[dict]) -> dict:
    """Seed medians; times and at-grok values over the seeds that reached them (as the importer does)."""
    grok = [r for r in results if r["grokked"]]
    out = {k: median(r.get(k) for r in (results if k in ("t_mem", "N0", "target") else grok))
           for k in SUMMARY_KEYS}
    out["delay_from_fork"] = median(r["t_grok"] - r["fork_step"] for r in grok if r.get("fork_step") is not None)
    out.update(n_seeds=len(results), n_grokked=len(grok), n_diverged=sum(bool(r["diverged"]) for r in results))
    return out


def seed_mean_curves(member_curves) -> dict[str, list[tuple[int, float]]]:
    """Mean over the members that have a value at each step (a retired member stops contributing)."""
    acc: dict[str, dict[int, list[float]]] = {}
    for curves in member_curves:
        for key, pts in curves.items():
            for step, v in pts:
                acc.setdefault(key, {}).setdefault(step, []).append(v)
    return {k: [(s, math.fsum(v) / len(v)) for s, v in sorted(d.items())] for k, d in acc.items()}


def dense_curves_csv(arm: str, member_curves: dict[str, dict]) -> str:
    """One row per (seed, step), one column per curve key; empty where a key has no value."""
    keys = sorted({k for c in member_curves.values() for k in c})
    buf = io.StringIO()
    buf.write(",".join(["arm", "seed", "step", *keys]) + "\n")
    for mkey, curves in member_curves.items():
        by_step: dict[int, dict[str, float]] = {}
        for k, pts in curves.items():
            for s, v in pts:
                by_step.setdefault(s, {})[k] = v
        seed = mkey.rsplit("/", 1)[1]
        for s in sorted(by_step):
            row = by_step[s]
            buf.write(",".join([arm, seed, str(s), *(repr(row[k]) if k in row else "" for k in keys)]) + "\n")
    return buf.getvalue()


def arm_table(order: list[str], arms: dict[str, dict]) -> str:
    """Members grokked/total, median t_mem, t_grok, delay, delay from the fork, logit_scale at grok, tau."""
    head = ("arm", "grokked", "t_mem", "t_grok", "delay", "from fork", "L@grok", "tau")
    rows = []
    for name in order:
        a = arms.get(name)
        if a is None:
            continue
        if a["status"] == "skipped":
            rows.append((name, "skipped", "", "", "", "", "", a.get("reason", "")))
            continue
        s = arm_summary(a["results"])
        f = lambda v, d=0: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        rows.append((name, f"{s['n_grokked']}/{s['n_seeds']}", f(s["t_mem"]), f(s["t_grok"]), f(s["delay"]),
                     f(s["delay_from_fork"]), f(s["logit_scale_at_grok"], 2), f"{a['params']['tau']:.4g}"))
    widths = [max(len(str(r[i])) for r in [head, *rows] if r[1] != "skipped" or i < 2)
              for i in range(len(head))]
    fmt = lambda r: "  ".join(str(x).ljust(w) if i in (0, len(r) - 1) and r[1] == "skipped" or i == 0  # noqa
                              else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *map(fmt, rows)])
