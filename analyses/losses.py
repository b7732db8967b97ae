"""One design under two losses (study stablemax: the mediation design with cross-entropy and with
StableMax): does the norm still delay grokking without softmax saturation, and does a matched logit scale
still take the delay back?

Found where a family (p, model, precision) holds a recovery design (designs.recovery_sets) under >= 2
losses. Per loss: T0 (baseline), T1 (norm-up), the norm's delay T1 / T0 and the recovery fraction
(recovery.py) with their intervals from one paired bootstrap over seeds (cells.bootstrap_medians: 4000
resamples, default_rng(0); 95% percentile), and the peak share of training pairs in softmax collapse
(`softmax/collapse`, counted in the loss's own probabilities: StableMax's for stablemax) in the baseline
and norm-up cells.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analyses.cells import bootstrap_medians, num, percentile_ci, seed_matrix
from analyses.designs import recovery_sets
from analyses.figures import save
from analyses.recovery import recovery
from analyses.tables import est, fmt, table

NAME, TITLE = "loss_contrast", "The same design under each loss"
N_BOOT = 4000
BOOTSTRAP_SEED = 0


def find(cells: pd.DataFrame) -> tuple[list[dict], list[str]]:
    specs, _ = recovery_sets(cells)   # recovery's own notes say why a design is incomplete
    by = cells.set_index("cell")
    families: dict[tuple, list[dict]] = {}
    for s in specs:
        b = by.loc[s["base"]]
        families.setdefault((b["p"], b["model"], b["precision"]), []).append(s)
    out = []
    for (p, model, precision), group in families.items():
        if len({by.at[s["base"], "loss"] for s in group}) >= 2:
            out.append({"group": f"p={p:g} {model} {precision}", "designs": group})
    return out, []


def compute(members: pd.DataFrame, cells: pd.DataFrame, spec: dict, n_boot: int = N_BOOT,
            seed: int = BOOTSTRAP_SEED) -> dict:
    by = cells.set_index("cell")
    rows = []
    for s in spec["designs"]:
        rec = recovery(members, cells, s["base"], s["up"], s["sweep"], s["matched"], s["time"], n_boot, seed)
        values, seeds = seed_matrix(members, [s["base"], s["up"]], s["time"])
        boot = bootstrap_medians(values, n_boot, seed)
        lo, hi = percentile_ci(boot[1] / boot[0])
        ratio = rec["T1"] / rec["T0"] if rec["T0"] and rec["T1"] else None
        rows.append({"loss": by.at[s["base"], "loss"], "T0": rec["T0"], "T1": rec["T1"], "delay_ratio": num(ratio),
                     "delay_ci": [num(lo), num(hi)], "recovery": rec["estimate"],
                     "recovery_ci": [rec["ci_low"], rec["ci_high"]], "realized": rec["realized_estimate"],
                     "realized_ci": [rec["realized_ci_low"], rec["realized_ci_high"]],
                     "sc_baseline": num(by.at[s["base"], "sc_peak"]), "sc_norm_up": num(by.at[s["up"], "sc_peak"]),
                     "n_seeds": int(len(seeds)), "baseline_arm": rec["baseline_arm"], "norm_up_arm": rec["norm_up_arm"],
                     "time": s["time"]})
    for r in rows:
        r["verdict"] = verdict(r)
    return {"losses": rows}


def verdict(r: dict) -> str:
    lo, hi = r["delay_ci"]
    if lo is None:
        return f"{r['loss']}: no interval for the norm's delay"
    delays = (f"the norm delays grokking (T1 / T0 {r['delay_ratio']:.2f} [{lo:.2f}, {hi:.2f}])" if lo > 1 else
              f"no delay by the norm that the interval can tell from none (T1 / T0 {r['delay_ratio']:.2f} "
              f"[{lo:.2f}, {hi:.2f}])")
    rec = ("; a matched logit scale takes back " + est(r["recovery"], *r["recovery_ci"], 2) + " of it"
           if r["recovery"] is not None else "; recovery not computed")
    return f"{r['loss']}: {delays}{rec}"


def markdown(rows: list[dict]) -> list[str]:
    out = [f"## {TITLE}", ""]
    for res in rows:
        out += [table(["group", "loss", "T0", "T1", "T1 / T0 [95% CI]", "recovery [95% CI]",
                       "realized recovery [95% CI]", "peak softmax collapse (baseline / norm-up)", "seeds"],
                      [[res["group"], r["loss"], fmt(r["T0"], 0), fmt(r["T1"], 0),
                        est(r["delay_ratio"], *r["delay_ci"], 2), est(r["recovery"], *r["recovery_ci"]),
                        est(r["realized"], *r["realized_ci"]) if r["realized"] is not None else "-",
                        f"{fmt(r['sc_baseline'])} / {fmt(r['sc_norm_up'])}", r["n_seeds"]] for r in res["losses"]]),
                ""] + [f"- {r['verdict']}." for r in res["losses"]] + [""]
    return out


def figure(res: dict, path) -> str | None:
    import matplotlib.pyplot as plt
    rows = res["losses"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    x = np.arange(len(rows))
    for j, (key, label) in enumerate((("T0", "baseline T0"), ("T1", "norm-up T1"))):
        ax.bar(x + 0.38 * j, [r[key] or 0 for r in rows], 0.36, label=label)
    ax.set_xticks(x + 0.19, [f"{r['loss']}\nrecovery {fmt(r['recovery'], 2)}" for r in rows])
    ax.set(ylabel="median t_grok" if rows[0]["time"] == "t_grok" else "median delay from the fork",
           title=f"the norm's delay under each loss, {res['group']}")
    ax.legend(fontsize=7)
    return save(fig, path)
