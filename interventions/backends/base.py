"""The backend interface: a cohort's training step and evaluation, and the worker threads they run on.

The training step is k optimizer steps of a member group, each followed by the clamp; the evaluation is
over all p^2 pairs.

A backend groups the cohort's members (`batches`), reads its tensors (P, m1, m2, train/test masks, inv_tau,
labels; cohort.py) and updates P, m1 and m2 in place. It never mixes members, so a member's arithmetic does
not depend on who else is in the cohort. Subclasses give the work of one member group (`_stepper`,
`_evaluator`) and their own per-member tensors (`rebuild`, after construction and after every compaction).
"""
from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable

import torch

from .. import models

if TYPE_CHECKING:
    from ..cohort import Cohort

# Member groups. On a CPU every member is its own group: its activations stay in cache, groups run in
# parallel on worker threads with single-threaded ops, and a member's arithmetic is the same whoever else
# is in the cohort (bitwise). On an accelerator, members go in as few groups as DEVICE_BLOCK elements of
# (members x pairs x hidden) activations allow.
DEVICE_BLOCK = 1 << 28
Work = Callable[[models.Batch, models.Workspace], None]  # one member group's work, given its thread's buffers
SUMS = ("train_hit", "test_hit", "lsum", "train_loss", "test_loss", "sc", "sat")  # per-member evaluation sums


def squared_norms(P: dict[str, torch.Tensor], matrices: list[str], rows: slice = slice(None)) -> torch.Tensor:
    """Squared Frobenius norm of every matrix of members `rows`: (m, L), in working precision."""
    return torch.stack([P[n][rows].flatten(1).pow(2).sum(1) for n in matrices], 1)


class Workers:
    """Where group work runs: on a CPU, while a cohort runs, on worker threads with single-threaded ops
    (groups in parallel, no OpenMP barriers); otherwise in order on the calling thread."""

    def __init__(self):
        self.pool: ThreadPoolExecutor | None = None
        self.n = 0
        self.ws = models.Workspace()  # the calling thread's buffers
        self._tls = threading.local()

    @contextmanager
    def running(self, device: torch.device):
        """Worker threads for the duration (a CPU only); torch's thread count is restored after."""
        threads = torch.get_num_threads()
        if device.type == "cpu":
            # Always on workers, even one: MKL may take another code path for small GEMMs on the main
            # thread than on the others, and a member's bits must not depend on where it ran.
            torch.set_num_threads(1)
            self.pool, self.n = ThreadPoolExecutor(threads, thread_name_prefix="cohort"), threads
        try:
            yield
        finally:
            if self.pool is not None:
                self.pool.shutdown()
                self.pool = None
            torch.set_num_threads(threads)

    def map(self, fn: Work, items: list) -> None:
        """fn(item, workspace) for every item: on the worker threads while running, else in order."""
        if self.pool is None:
            for it in items:
                fn(it, self.ws)
            return

        # one task per worker thread, each taking the next item until none is left: a few futures per
        # step instead of one per member (each costs a wake-up and the GIL)
        nxt = itertools.count()

        def drain():
            ws = getattr(self._tls, "ws", None)
            if ws is None:
                ws = self._tls.ws = models.Workspace()
            while (i := next(nxt)) < len(items):
                fn(items[i], ws)
        for f in [self.pool.submit(drain) for _ in range(min(self.n, len(items)))]:
            f.result()


class Backend:
    """How a cohort's members are stepped and evaluated (one instance per cohort; backends.select)."""

    kernels = ""  # its name: aten | native

    def __init__(self, cfg):
        self.cfg = cfg
        self.workers = Workers()

    def rebuild(self, c: Cohort) -> None:
        """Member groups (`batches`: their training pairs as gather indices) and, in subclasses, the
        backend's own per-member tensors; after construction and after every compaction."""
        M, N = len(c.members), c.train_idx.shape[1]
        chunk = 1 if c.device.type == "cpu" else max(1, min(M, DEVICE_BLOCK // (N * c.model.work_per_member)))
        self.batches = models.make_batches(c.train_idx, c.labels, c.cfg.p, chunk, c.model.paired, c.dtype)

    def train(self, c: Cohort, k: int) -> dict[int, int]:
        """k optimizer steps (+ clamp) of every active member after step c.step (the cohort advances its
        step); returns {row: step} of members whose loss turned non-finite (on a CPU they stop at that
        step; in a multi-member group, at the chunk's end).

        Group by group (a member's arithmetic is its own): each worker thread takes a group and runs its k
        steps, so the group's weights stay in the core's caches and threads wait for each other once per
        chunk, not once per step.
        """
        kind, first = c.clamp.kind.tolist(), c.clamp.first.tolist()

        def clamp(sl: slice, t: int) -> None:
            if any(kind[i] > 0 and first[i] <= t for i in range(sl.start, sl.stop)):
                c.clamp.apply(t, {n: c.P[n][sl] for n in c.matrices}, squared_norms(c.P, c.matrices, sl), sl)

        stopped: dict[int, int] = {}
        self.workers.map(self._stepper(c, k, clamp, stopped), self.batches)
        return stopped

    def _stepper(self, c: Cohort, k: int, clamp: Callable[[slice, int], None], stopped: dict[int, int]) -> Work:
        """One group's k steps from step c.step, each followed by clamp(its rows, step); rows whose loss
        turned non-finite go into `stopped` ({row: step})."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, c: Cohort, full: bool) -> dict[str, torch.Tensor]:
        """Metrics of every active member over all p^2 pairs (PAPER.md definitions), chunked.

        Always: train/test accuracy, logit_scale (mean over all pairs of |z / tau|), per-layer norms.
        full (log steps): also the losses, sc_frac (share of training pairs whose correct-class
        probability is exactly 1 in working precision) and saturated (share of training pairs with
        max probability > 0.999).
        """
        sums = {k: torch.zeros(len(c.members), dtype=torch.float64, device=c.device) for k in SUMS}
        self.workers.map(self._evaluator(c, full, sums), self.batches)
        n_train = c.train_idx.shape[1]
        n_test = c.task.n_pairs - n_train
        sq = squared_norms(c.P, c.matrices).double()
        out = {"train/acc": sums["train_hit"] / n_train, "test/acc": sums["test_hit"] / n_test,
               "norm/total": sq.sum(1).sqrt(), "logit/scale": sums["lsum"] / c.task.n_pairs}
        for j, n in enumerate(c.matrices):
            out[f"norm/{n}"] = sq[:, j].sqrt()
        if full:
            out.update({"train/loss": sums["train_loss"] / n_train, "test/loss": sums["test_loss"] / n_test,
                        "softmax/collapse": sums["sc"] / n_train, "softmax/saturated": sums["sat"] / n_train})
            out["repr/fourier_top5"] = models.fourier_top5(c.P["E"], c.cfg.p)
        return out

    def _evaluator(self, c: Cohort, full: bool, sums: dict[str, torch.Tensor]) -> Work:
        """One group's evaluation: writes its members' entries of `sums` (SUMS: hits, |z/tau| sum over all
        pairs; full: loss sums, collapsed and saturated counts over its training and test pairs)."""
        raise NotImplementedError
