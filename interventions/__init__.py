"""Causal interventions on grokking: tasks, models, levers, the batched engine, studies."""
import os

__version__ = "0.1.0"

# Intel MKL's Conditional Numerical Reproducibility: without it MKL may pick other code paths for small
# GEMMs on different threads or on a thread's first call, so the same member could train to different
# bits. Read when MKL initializes (at its first call, after `import torch`); a user's setting wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


def __getattr__(name: str):
    """`interventions.load(run_id, at="grok")`: a trained member as a PyTorch module (checkpoints.py); imported
    on first use, so that importing the package stays free of torch."""
    if name == "load":
        from .checkpoints import load
        return load
    raise AttributeError(f"module 'interventions' has no attribute {name!r}")
