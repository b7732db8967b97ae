"""Same-state fork contrasts: four arms continue from one identical snapshot; delays run from the fork.

Arms (by name): clamp_lowered (N0 / rho), free, clamp_same (N0), clamp_raised (rho * N0). Per arm the
median over grokked seeds of t_grok - fork_step. Contrast: raised vs same (both apply the clamp; only the
held value differs): ratio of median delays with a paired bootstrap CI over seeds (cells.bootstrap_medians:
4000 resamples, default_rng(0), 95% percentile interval). Ordering: the seeds (grokked in all four arms)
whose delays satisfy lowered < free < same < raised. Per-arm CIs (same resamples) feed the figure.
The paper's p = 59 fork gives 1525, 4225, 7200, 24162; ratio 3.36 [3.27, 3.43]; 12/12 ordered.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analyses.cells import FORK_ARMS, bootstrap_medians, num, percentile_ci, seed_matrix

N_BOOT = 4000
BOOTSTRAP_SEED = 0


def fork_contrast(members: pd.DataFrame, arms: dict[str, str], n_boot: int = N_BOOT,
                  seed: int = BOOTSTRAP_SEED) -> dict:
    """`arms` maps fork role (FORK_ARMS names) -> cell id; clamp_same and clamp_raised are required."""
    roles = [r for r in FORK_ARMS if r in arms]
    values, seeds = seed_matrix(members, [arms[r] for r in roles], "fork_delay")
    boot = bootstrap_medians(values, n_boot, seed)
    i_same, i_raised = roles.index("clamp_same"), roles.index("clamp_raised")
    ratio_ci = percentile_ci(boot[i_raised] / boot[i_same])
    # the delays of the report are the cells' own medians (all their grokked seeds, paired or not)
    m = members[members["cell"].isin(arms.values()) & members["ok"]]
    delays = {r: num(np.median(m.loc[m["cell"] == arms[r], "fork_delay"])) if (m["cell"] == arms[r]).any()
              else None for r in roles}
    ordered = None
    if len(roles) == len(FORK_ARMS):
        grokked_all = np.isfinite(values).all(axis=0)
        ordered = int((np.all(np.diff(values, axis=0) > 0, axis=0) & grokked_all).sum())
    first = members[members["cell"] == arms["clamp_raised"]].iloc[0]
    return {"p": num(first["p"]), "model": first["model"], "fork_step": num(first["fork_step"]),
            "delays": delays, "ratio_raised_same": num(delays["clamp_raised"] / delays["clamp_same"])
            if delays["clamp_raised"] and delays["clamp_same"] else None,
            "ci_low": num(ratio_ci[0]), "ci_high": num(ratio_ci[1]),
            "ordered_seeds": ordered, "n_seeds": int(len(seeds)),
            "delay_ci": {r: [num(x) for x in percentile_ci(boot[i])] for i, r in enumerate(roles)},
            "missing_arms": [r for r in FORK_ARMS if r not in arms]}
