"""Checkpoints users load: a member's parameters at t_grok, at its end, or at its fork point, as a ready
PyTorch module with its task.

Where they are: a study with `save: {at_grok: true, final: true}` logs `checkpoints/grok.pt` and
`checkpoints/final.pt` on every member run (and `checkpoints/embedding.npz`, see `write`); every study
logs each fork snapshot on its study run (`forks/<arm>@<at>.pt`, every seed's state at that point). `load` reads either from a member run id, or a
local file (a checkpoint, or a fork snapshot with `seed=`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from interventions.engine.records import CohortConfig
from interventions.engine.task import make_task
from interventions.registry import MODELS, TASKS, origins, require

FORMAT = "interventions.checkpoint/1"
AT = ("grok", "final", "fork")


def member_checkpoint(cfg: CohortConfig, seed: int, arm: str, step: int, params: dict,
                      train_idx: torch.Tensor) -> dict:
    """One member's parameters as a file's content: what `Trained` needs and nothing of the optimizer."""
    plugins = origins([(TASKS, cfg.op), (MODELS, cfg.model)])   # what `load` needs to rebuild the model
    return {"format": FORMAT, "cohort": {**cfg.to_dict(), "device": "cpu"}, "plugins": plugins, "arm": arm,
            "seed": seed,
            "step": step, "params": {k: v.detach().cpu().clone() for k, v in params.items()},
            "train_idx": train_idx.detach().cpu().clone()}


def write(folder: Path, files: dict, fork_state: dict | None) -> list[Path]:
    """A member's checkpoints ({at: member_checkpoint}) as <folder>/<at>.pt, and its embedding (the p token
    rows of E) at the fork (from its MemberState dict, if it forked), at t_grok and at its end as one numpy
    file, embedding.npz, which the report reads without torch (its PCA figure). Returns the paths."""
    from interventions.engine import snapshot
    out = []
    for at, ckpt in files.items():
        out.append(folder / f"{at}.pt")
        snapshot.save(out[-1], ckpt)
    cohort = next(iter(files.values()))["cohort"]
    p = make_task(cohort["p"], cohort["op"]).vocab   # the task's token rows (not the transformer's "=")
    E = {at: c["params"]["E"] for at, c in files.items()}
    if fork_state is not None:
        E["fork"] = fork_state["params"]["E"]
    out.append(folder / "embedding.npz")
    np.savez(out[-1], **{at: e[:p].double().numpy() for at, e in E.items()})
    return out


class Trained(torch.nn.Module):
    """One trained member: `model(a, b)` gives logits (n, n_classes) for token tensors a, b (the model's
    textbook forward, naive_logits); `task`, `train_idx` (flat pair indices a * vocab + b of its training
    split), `cfg`, `step`, `seed`, `arm` say what and when it is."""

    def __init__(self, ckpt: dict):
        super().__init__()
        require(ckpt.get("plugins"), f"checkpoint of {ckpt['arm']} seed {ckpt['seed']}")
        self.cfg = CohortConfig(**ckpt["cohort"])
        self.arm, self.seed, self.step = ckpt["arm"], ckpt["seed"], ckpt["step"]
        self.task = make_task(self.cfg.p, self.cfg.op)
        self.net = MODELS.get(self.cfg.model)(self.task.vocab, self.task.n_classes, self.cfg.settings("model"))
        self.weights = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in ckpt["params"].items()})
        self.register_buffer("train_idx", ckpt["train_idx"])

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net.naive_logits(dict(self.weights), a, b)

    @torch.no_grad()
    def accuracy(self, split: str = "test") -> float:
        """Accuracy on the member's own train or test pairs (the split it was trained with)."""
        p = self.task.vocab
        train = torch.zeros(p * p, dtype=torch.bool)
        train[self.train_idx] = True
        pick = (train if split == "train" else ~train) & self.task.valid
        idx = pick.nonzero().flatten()
        pred = self(idx // p, idx % p).argmax(-1)
        return float((pred == self.task.labels[idx]).double().mean())


def _read(path: Path, seed: int | None) -> dict:
    from interventions.engine import snapshot
    d = snapshot.load(path)
    if isinstance(d, dict) and d.get("format") == FORMAT:
        return d
    if isinstance(d, dict) and "members" in d:     # a fork snapshot: {seed: MemberState dict}
        if seed not in d["members"]:
            raise ValueError(f"{path}: a fork snapshot of seeds {sorted(d['members'])}; pass seed= one of them")
        s = d["members"][seed]
        return member_checkpoint(CohortConfig(**s["cohort"]), seed, s["member"]["key"][0], s["step"],
                                 s["params"], s["train_idx"])
    raise ValueError(f"{path}: not a checkpoint ({FORMAT}) nor a fork snapshot")


def load(source: str | Path, at: str = "grok", *, seed: int | None = None,
         tracking_uri: str | None = None) -> Trained:
    """A member's trained model. source: a member run id (at: grok | final | fork) or a local .pt file
    (a checkpoint, or a fork snapshot with `seed`)."""
    if at not in AT:
        raise ValueError(f"at={at!r}: expected one of {', '.join(AT)}")
    if Path(source).is_file():
        return Trained(_read(Path(source), seed))
    import mlflow
    from tracking.runs import param_str
    from tracking.store import resolve_uri
    client = mlflow.MlflowClient(resolve_uri(tracking_uri))
    run = client.get_run(str(source))
    if at != "fork":
        name = f"checkpoints/{at}.pt"
        if name not in {f.path for f in client.list_artifacts(run.info.run_id, "checkpoints")}:
            raise FileNotFoundError(f"run {source}: no {name} (set save: {{at_grok: true, final: true}} in the "
                                    "study's defaults to keep checkpoints)")
        return Trained(_read(Path(client.download_artifacts(run.info.run_id, name)), None))
    prm, seed = run.data.params, int(run.data.params["seed"])
    if prm.get("fork_from", param_str(None)) == param_str(None):
        raise ValueError(f"run {source}: arm {prm.get('arm')} does not fork (it trains from init)")
    study = client.get_run(client.get_run(run.data.tags["mlflow.parentRunId"]).data.tags["mlflow.parentRunId"])
    for f in client.list_artifacts(study.info.run_id, "forks"):
        if Path(f.path).name.startswith(prm["fork_from"] + "@"):
            ckpt = _read(Path(client.download_artifacts(study.info.run_id, f.path)), seed)
            if str(ckpt["step"]) == prm["fork_step"]:
                return Trained(ckpt)
    raise FileNotFoundError(f"run {source}: its study run holds no fork snapshot of {prm['fork_from']} at step "
                            f"{prm['fork_step']}")
