"""Report figures (matplotlib, Agg backend: no display needed). Each function writes one PNG, returns its path."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

DPI = 120


def save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return str(path)


def _log_fit(ax, x: np.ndarray, y: np.ndarray, label: str, xlabel: str, title: str) -> None:
    """The fitted exponential law as a dashed line over a log-scale t_grok axis, labelled."""
    ax.plot(x, y, "k--", lw=1, label=label)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("median t_grok (log scale)")
    ax.set_title(title, fontsize=9)


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_").lower()


def collapse_figure(res: dict, path: Path) -> str:
    """ln median t_grok against L at grok, one marker per tau, colour per rho, with the L-only OLS line."""
    cells = pd.DataFrame(res["cells"])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    markers = dict(zip(sorted(cells["tau"].unique()), "osD^v<>"))
    sc = None
    for tau, g in cells.groupby("tau"):
        sc = ax.scatter(g["L"], g["t_grok"], c=g["rho"], cmap="viridis", marker=markers[tau], s=45,
                        vmin=cells["rho"].min(), vmax=cells["rho"].max())
        ax.scatter([], [], marker=markers[tau], color="grey", label=f"tau {tau:g}")  # legend proxy
    x = np.linspace(cells["L"].min(), cells["L"].max(), 50)
    _log_fit(ax, x, np.exp(res["intercept_logit"] + res["slope_logit"] * x),
             f"ln T = a + b L, R$^2$ {res['r2_logit']:.3f}", "logit scale L at grok",
             f"collapse, p={res['p']:g}: R$^2$ L {res['r2_logit']:.3f}, rho {res['r2_rho']:.3f}, "
             f"both {res['r2_both']:.3f}")
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="rho")
    ax.legend(fontsize=7)
    return save(fig, path)


def sweep_figure(res: dict, path: Path) -> str:
    """The tau sweep's T against L, the baseline's L, the interpolated T2 and the realized logit-matched point."""
    sw = pd.DataFrame(res["sweep"]).sort_values("L")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(sw["L"], sw["T"], "o-", color="tab:blue", label=f"norm-up (rho {res['rho']:g}) tau sweep")
    for r in sw.itertuples():
        ax.annotate(f"tau {r.tau:g}", (r.L, r.T), textcoords="offset points", xytext=(5, 3), fontsize=7)
    ax.axhline(res["T0"], color="tab:green", ls=":", label=f"baseline T0 = {res['T0']:.0f}")
    ax.axvline(res["L_baseline"], color="grey", ls="--", lw=1, label=f"baseline L = {res['L_baseline']:.2f}")
    if res["T2_interpolated"] is not None:
        ax.plot(res["L_baseline"], res["T2_interpolated"], "*", ms=13, color="tab:orange",
                label=f"T2 interpolated = {res['T2_interpolated']:.0f}")
    if res["matched"]:
        m = res["matched"]
        ax.plot(m["L"], m["T"], "s", ms=9, color="tab:red", label=f"logit-matched (tau {m['tau']:.3g}) = {m['T']:.0f}")
    what = "median delay from fork" if res["time"] == "fork_delay" else "median t_grok"
    ax.set_xlabel("logit scale L at grok")
    ax.set_ylabel(what)
    est = "n/a" if res["estimate"] is None else f"{res['estimate']:.3f}"
    realized = f", realized {res['realized_estimate']:.3f}" if res["realized_estimate"] is not None else ""
    ax.set_title(f"recovery, p={res['p']:g} {res['loss']}: interpolated {est}{realized}", fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, path)


def fork_figure(res: dict, path: Path) -> str:
    """Median delay from the fork per arm with its 95% paired-bootstrap CI."""
    roles = [r for r in res["delays"] if res["delays"][r] is not None]
    med = np.array([res["delays"][r] for r in roles], float)
    ci = np.array([[np.nan if x is None else x for x in res["delay_ci"][r]] for r in roles], float).reshape(-1, 2)
    ci = np.where(np.isfinite(ci), ci, med[:, None])  # no interval -> no bar
    fig, ax = plt.subplots(figsize=(5.5, 4))
    colors = {"clamp_lowered": "tab:green", "free": "tab:grey", "clamp_same": "tab:blue", "clamp_raised": "tab:red"}
    ax.bar(roles, med, color=[colors.get(r, "tab:blue") for r in roles], alpha=0.8)
    ax.errorbar(roles, med, yerr=[med - ci[:, 0], ci[:, 1] - med], fmt="none", ecolor="k", capsize=4)
    for i, v in enumerate(med):
        ax.annotate(f"{v:.0f}", (i, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_ylabel("median delay from fork (steps)")
    ratio = res["ratio_raised_same"]
    ax.set_title(f"same-state fork, p={res['p']:g}: raised / same = "
                 f"{ratio:.2f} [{res['ci_low']:.2f}, {res['ci_high']:.2f}]" if ratio else "same-state fork",
                 fontsize=9)
    return save(fig, path)


def dose_figure(res: dict, path: Path) -> str:
    cells = pd.DataFrame(res["cells"])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(cells["W"], cells["t_grok"], "o", label="collapse-free cells")
    x = np.linspace(cells["W"].min(), cells["W"].max(), 50)
    _log_fit(ax, x, np.exp(res["c"] + res["alpha"] * x), f"ln T = c + {res['alpha']:.3f} W, R$^2$ {res['r2']:.3f}",
             "weight norm W", f"dose law, p={res['p']:g}: n {res['n']}, delta AIC {res['delta_aic']:.2f}")
    ax.legend(fontsize=7)
    return save(fig, path)


def curves_figure(curves: pd.DataFrame, cells: pd.DataFrame, title: str, path: Path) -> str | None:
    """Seed-mean test (solid) and train (dotted) accuracy per arm; None when no arm logged accuracy."""
    acc = curves[curves["key"].isin(["test/acc", "train/acc"]) & curves["run_id"].isin(cells["cell"])]
    if acc.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(cells[cells["cell"].isin(acc["run_id"])].itertuples()):
        for key, ls in (("test/acc", "-"), ("train/acc", ":")):
            c = acc[(acc["run_id"] == r.cell) & (acc["key"] == key)].sort_values("step")
            if len(c):
                ax.plot(c["step"], c["value"], ls, color=colors[i % len(colors)], lw=1.2,
                        label=r.arm if key == "test/acc" else None)
    return _save_per_arm(fig, ax, "step (log scale)", "accuracy (solid test, dotted train)", title, path)


def structure_figure(curves: pd.DataFrame, cells: pd.DataFrame, title: str, path: Path) -> str | None:
    """Seed-mean `repr/fourier_top5` (`structure`, docs/statistics.md) per arm, a dot at the arm's median t_grok: the
    Fourier circuit forming around grokking. None when no arm logged it."""
    st = curves[(curves["key"] == "repr/fourier_top5") & curves["run_id"].isin(cells["cell"])]
    if st.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(cells[cells["cell"].isin(st["run_id"])].itertuples()):
        c = st[st["run_id"] == r.cell].sort_values("step")
        ax.plot(c["step"], c["value"], color=colors[i % len(colors)], lw=1.2, label=r.arm)
        if np.isfinite(r.t_grok):
            j = int(np.argmin(np.abs(c["step"].to_numpy() - r.t_grok)))
            ax.plot([c["step"].iloc[j]], [c["value"].iloc[j]], "o", color=colors[i % len(colors)], ms=4)
    return _save_per_arm(fig, ax, "step (log scale); dot: median t_grok", "top-5 Fourier power share of E", title,
                         path)


def _save_per_arm(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> str:
    """Curves per arm over a log step axis, legend by arm."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return save(fig, path)


EMBEDDING_TIMES = (("fork", "at the fork"), ("grok", "at t_grok"), ("final", "at the end"))


def embedding_figure(panels: list[tuple[str, dict]], title: str, path: Path, max_rows: int = 4) -> str | None:
    """The p token rows of the embedding E projected on their first two principal components (scikit-
    learn's PCA, per panel), one row per (label, {fork | grok | final: (p, d) array}), at most `max_rows`.
    Tokens are joined in the order of k x (mod p), k the strongest Fourier frequency of E: at grokking the
    rows settle on a circle in that order (the Fourier circuit). None without any embedding."""
    from sklearn.decomposition import PCA
    panels = [(lab, E) for lab, E in panels if E][:max_rows]
    if not panels:
        return None
    times = [t for t in EMBEDDING_TIMES if any(t[0] in E for _, E in panels)]
    fig, axes = plt.subplots(len(panels), len(times), figsize=(2.6 * len(times), 2.5 * len(panels)), squeeze=False)
    for row, (label, E) in zip(axes, panels):
        for ax, (at, words) in zip(row, times):
            ax.set_xticks([]), ax.set_yticks([])
            if at not in E:
                ax.set_axis_off()
                continue
            X = E[at]
            p = X.shape[0]
            k = 1 + int(np.argmax((np.abs(np.fft.rfft(X, axis=0)) ** 2).sum(1)[1:p // 2 + 1]))
            pca = PCA(n_components=2).fit(X)
            Y = pca.transform(X)
            ring = np.argsort((np.arange(p) * k) % p, kind="stable")   # tokens by angle 2 pi k x / p
            ax.plot(*Y[np.append(ring, ring[0])].T, "-", color="0.75", lw=0.6)
            ax.scatter(Y[:, 0], Y[:, 1], c=np.arange(p), cmap="twilight", s=9)
            ax.set_title(f"{label} {words}\nk = {k}, PC1+2 {pca.explained_variance_ratio_.sum():.0%}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)
