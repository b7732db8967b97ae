"""Snapshots on disk: torch.save of a cohort's state_dict, written atomically.

The state is written to a temporary file in the target's folder, flushed and fsync'ed, then moved over
the target with os.replace, so an interruption (even SIGKILL) leaves either the old file or the new one,
never a torn one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def save(path: str | os.PathLike, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike) -> dict:
    """A state written by `save` (tensors on the CPU; Cohort.from_state moves them to the cohort's device)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"snapshot {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a foreign or damaged file: say which
        raise ValueError(f"snapshot {path}: cannot be read ({err})") from None
