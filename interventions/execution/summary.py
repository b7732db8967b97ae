"""Arm summaries from member results: seed medians, "L at grok", seed-mean curves, the dense curves
table, the final arm table. Plain Python (no torch, no MLflow); the statistics are tracking.conventions'."""
from __future__ import annotations

import io

from tracking.conventions import grokked, l_at_grok, majority, median, norm_curve, seed_mean_curve, w_c, w_c_interval

SUMMARY_KEYS = ("t_mem", "t_grok", "delay", "logit_scale_at_grok", "weight_norm_at_grok", "N0", "target")


def member_summary(r: dict) -> dict:
    """Summary metrics of one member run (MLflow contract); None = not reached (not logged)."""
    out = {k: r.get(k) for k in SUMMARY_KEYS}
    out.update(grokked=int(bool(r["grokked"])), diverged=int(bool(r["diverged"])), final_step=r["final_step"],
               weight_norm_final=r.get("weight_norm_final"), test_acc_at_grok=r.get("test_acc_at_grok"))
    if r.get("fork_step") is not None and r.get("t_grok") is not None:
        out["delay_from_fork"] = r["t_grok"] - r["fork_step"]
    return out


def arm_summary(results: list[dict], curves: dict[str, dict] | None = None) -> dict:
    """Seed medians (times and at-grok values over the grokked seeds) and the cell's "L at grok" from its
    seed-mean logit/scale curve (`curves`: member key -> curves); the per-seed median beside it."""
    grok = [r for r in results if grokked(r)]
    out = {k: median(r.get(k) for r in (results if k in ("t_mem", "N0", "target") else grok))
           for k in SUMMARY_KEYS}
    out["logit_scale_at_grok_seed_median"] = out["logit_scale_at_grok"]
    mean_L = seed_mean_curve(c.get("logit/scale", []) for c in (curves or {}).values())
    out["logit_scale_at_grok"] = l_at_grok(mean_L, out["t_grok"]) if curves is not None else None
    out["weight_norm_final"] = median(r.get("weight_norm_final") for r in grok)
    out["delay_from_fork"] = median(r["t_grok"] - r["fork_step"] for r in grok if r.get("fork_step") is not None)
    out.update(n_seeds=len(results), n_grokked=len(grok), n_diverged=sum(bool(r["diverged"]) for r in results),
               majority=int(majority(len(grok), len(results))))
    return out


def w_c_summary(results: list[dict], curves: dict[str, dict], retire: str) -> dict:
    """A w_c source arm's w_c and its 95% interval (tracking.conventions.w_c_interval) from its members'
    norm curves (`curves`: member key -> curves); None where it has no grokking majority."""
    ci = w_c_interval(results, [norm_curve(r, curves[r["key"]].get("norm/total", [])) for r in results], retire)
    return {"w_c": w_c(results), "w_c_ci_low": ci and ci[0], "w_c_ci_high": ci and ci[1]}


def seed_mean_curves(member_curves) -> dict[str, list[tuple[int, float]]]:
    """Every curve key's seed-mean curve (tracking.conventions.seed_mean_curve)."""
    member_curves = list(member_curves)
    keys = dict.fromkeys(k for c in member_curves for k in c)
    return {k: seed_mean_curve(c.get(k, []) for c in member_curves) for k in keys}


def dense_curves(arm: str, member_curves: dict) -> tuple[list[str], list[list]]:
    """(columns, rows): one row per (seed, step), one column per curve key, None where a key has no value.
    member_curves: {vocab.MemberKey: curves}."""
    keys = sorted({k for c in member_curves.values() for k in c})
    rows = []
    for mkey, curves in member_curves.items():
        by_step: dict[int, dict[str, float]] = {}
        for k, pts in curves.items():
            for s, v in pts:
                by_step.setdefault(s, {})[k] = v
        for s in sorted(by_step):
            row = by_step[s]
            rows.append([arm, mkey.seed, s, *(row.get(k) for k in keys)])
    return ["arm", "seed", "step", *keys], rows


def dense_curves_csv(arm: str, member_curves: dict) -> str:
    """dense_curves as CSV text; empty where a key has no value."""
    cols, rows = dense_curves(arm, member_curves)
    buf = io.StringIO()
    buf.write(",".join(cols) + "\n")
    for r in rows:
        buf.write(",".join([r[0], str(r[1]), str(r[2]), *("" if v is None else repr(v) for v in r[3:])]) + "\n")
    return buf.getvalue()


def dense_curves_table(arm: str, member_curves: dict) -> dict[str, list]:
    """dense_curves as columns, for mlflow's log_table (curves.json)."""
    cols, rows = dense_curves(arm, member_curves)
    return {c: [r[i] for r in rows] for i, c in enumerate(cols)}


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
        s = a.get("summary") or arm_summary(a["results"])
        f = lambda v, d=0: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        rows.append((name, f"{s['n_grokked']}/{s['n_seeds']}", f(s["t_mem"]), f(s["t_grok"]), f(s["delay"]),
                     f(s["delay_from_fork"]), f(s["logit_scale_at_grok"], 2), f"{a['params']['tau']:.4g}"))
    widths = [max(len(str(r[i])) for r in [head, *rows] if r[1] != "skipped" or i < 2)
              for i in range(len(head))]
    fmt = lambda r: "  ".join(str(x).ljust(w) if i in (0, len(r) - 1) and r[1] == "skipped" or i == 0  # noqa
                              else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths), *map(fmt, rows)])
