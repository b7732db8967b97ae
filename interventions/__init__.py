"""Causal interventions on grokking: studies (study/), the batched engine (engine/), its plug-ins (levers/,
losses/, optim/, tasks/, models/; registry.py, kinds.py), running them (execution/), the CLI (run.py) and
the Python API (api.py)."""
import os

from interventions.version import __version__  # noqa: F401

# Intel MKL's Conditional Numerical Reproducibility: without it MKL may pick other code paths for small
# GEMMs on different threads or on a thread's first call, so the same member could train to different
# bits. Read when MKL initializes (at its first call, after `import torch`); a user's setting wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


def __getattr__(name: str):
    """The Python API (interventions.api: load_study, run_study, Result) and `interventions.load(run_id, at="grok")`,
    a trained member as a PyTorch module (engine.checkpoints); imported on first use, so that importing the
    package stays light."""
    if name == "load":
        from interventions.engine.checkpoints import load
        return load
    if name in ("load_study", "run_study", "Result"):   # not `run`: interventions.run is the CLI
        from interventions import api
        return getattr(api, name)
    raise AttributeError(f"module 'interventions' has no attribute {name!r}")
