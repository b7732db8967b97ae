"""Compiled CPU kernels for the MLP (mlp_cpu.cpp), float32 and float64: one member's step or evaluation per call.

Built on first use with torch's C++ extension loader (gcc/g++ and ninja, ~1 min once; torch caches the
build under ~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR); backends/native.py calls them. Where they
cannot be built or do not apply, the engine uses its ATen backend (backends/aten.py, models/mlp.py), which
computes the same thing op by op.

Why our own code here: per member-step on a CPU the ATen path spends ~60% outside the three output
GEMMs, in memory passes (gather, GeLU, GeLU backward, scatter), in Python dispatch, and waiting for the
GIL between ops. The kernels fuse those passes and release the GIL for the whole step, so members on
different worker threads run truly in parallel (benchmarks/engine.py --kernels aten|native).

Which backend trains a cohort: backends.choose (CohortConfig.kernels: auto | native | aten | generic;
INTERVENTIONS_KERNELS overrides "auto" for a whole process).
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
from pathlib import Path

SOURCE = Path(__file__).with_name("mlp_cpu.cpp")
_lock = threading.Lock()
_state: dict = {}


class NativeUnavailable(RuntimeError):
    pass


def _build():
    import torch
    from torch.utils.cpp_extension import load
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise NativeUnavailable(f"needs an x86-64 CPU (this is {platform.machine()})")
    cap = torch.backends.cpu.get_cpu_capability()
    if cap not in ("AVX2", "AVX512"):
        raise NativeUnavailable(f"needs AVX2 (torch reports CPU capability {cap})")
    if shutil.which("ninja") is None:  # the pip package's ninja, with a venv that was not activated
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    digest = hashlib.sha1(SOURCE.read_bytes()).hexdigest()[:10]
    name = f"interventions_mlp_cpu_{digest}"
    try:
        from torch.utils.cpp_extension import _get_build_directory
        built = (Path(_get_build_directory(name, verbose=False)) / f"{name}.so").exists()
    except Exception:  # a private helper: only decides whether to print the note below
        built = False
    if not built:
        print("interventions: compiling the native CPU kernels (once; about a minute)...", file=sys.stderr,
              flush=True)
    try:
        return load(name=name, sources=[str(SOURCE)], verbose=False,
                    extra_cflags=["-O2", "-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"])
    except Exception as e:  # no compiler, no ninja, no Python headers, ...
        lines = str(e).strip().splitlines()
        why = next((ln.strip() for ln in lines if "error" in ln.lower() and "Error building" not in ln),
                   lines[-1].strip() if lines else type(e).__name__)
        raise NativeUnavailable(f"could not be built: {why}") from e


def module():
    """The compiled module, building it on first call; raises NativeUnavailable (cached) if it cannot."""
    with _lock:
        if "mod" not in _state and "error" not in _state:
            try:
                _state["mod"] = _build()
            except NativeUnavailable as e:
                _state["error"] = e
        if "error" in _state:
            raise _state["error"]
        return _state["mod"]


def built_path() -> str | None:
    """The compiled module's file, where this process has loaded it."""
    mod = _state.get("mod")
    return getattr(mod, "__file__", None) if mod is not None else None
