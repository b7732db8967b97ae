"""The backend interface: a cohort's training step and evaluation, and the worker threads they run on.

The training step is k optimizer steps of a member group, each followed by the levers' after_step hooks
(the clamp); the evaluation is over all pairs, the logits through the levers' logits hooks (tau).

A backend groups the cohort's members (`batches`), reads its tensors (P, the optimizer's buffers S,
train/test masks, labels; cohort.py) and updates P and S in place. It never mixes members, so a member's
arithmetic does not depend on who else is in the cohort. Subclasses give the work of one member group
(`_stepper`, and `_evaluator` where theirs differs), their own per-member tensors (`rebuild`, after
construction and after every compaction), and what they cover (`covers`): the generic path covers every
combination of registered plug-ins; a fast path only what it implements, checked against the generic one.
"""
from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable

import torch

from interventions.engine.tensors import Batch, Workspace, fourier_top5, make_batches, squared_norms

if TYPE_CHECKING:
    from interventions.engine.cohort import Cohort

# Member groups. On a CPU every member is its own group: its activations stay in cache, groups run in
# parallel on worker threads with single-threaded ops, and a member's arithmetic is the same whoever else
# is in the cohort (bitwise). On an accelerator, members go in as few groups as DEVICE_BLOCK elements of
# (members x pairs x hidden) activations allow.
DEVICE_BLOCK = 1 << 28
Work = Callable[[Batch, Workspace], None]  # one member group's work, given its thread's buffers
SUMS = ("train_hit", "test_hit", "lsum", "train_loss", "test_loss", "sc", "sat")  # per-member evaluation sums
# bounds the evaluation's (members x pairs x hidden) block, so a 150-member p=113 cohort evaluates in
# little memory
EVAL_BLOCK = 1 << 21


def softmax_collapse(s: torch.Tensor, y: torch.Tensor, probs=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(collapsed, saturated) per row of post-lever logits s (..., C) with labels y (..., 1): the correct-class
    probability is exactly 1 in the loss's precision (sc_frac counts these), the largest exceeds 0.999.
    probs: the loss's probabilities (Loss.probs; default the softmax in working precision)."""
    prob = torch.softmax(s, -1) if probs is None else probs(s)
    return prob.gather(-1, y).squeeze(-1) == 1.0, prob.amax(-1) > 0.999


# The smallest optimizer eps under which flushing is on: a subnormal first moment moves a weight by at most
# lr x 2^-126 / eps, under the last bit of every weight above 1e-19 lr for eps >= 1e-12 (docs/engine.md).
FLUSH_MIN_EPS = 1e-12


def flushes_subnormals(optimizer=None) -> bool:
    """Do a cohort's CPU worker threads flush subnormals (FTZ and DAZ)? Yes, unless
    INTERVENTIONS_FLUSH_SUBNORMALS=0 or the `optimizer` updates with an eps below FLUSH_MIN_EPS (⊥Grad's
    source runs AdamW with 1e-25).

    In softmax collapse the loss's probabilities of the far-off classes are subnormal, and so are the
    logits' gradients made from them and the products that read them; some CPUs take microcode assists on
    every such operand. Each falls below the last bit of the sums it joins, except where it decides a
    rounding tie: parameters, curves and metrics stayed bit for bit the same in every collapse-regime case
    tested, the optimizer's moments within a few units in the last place (tests/test_subnormals.py)."""
    if os.environ.get("INTERVENTIONS_FLUSH_SUBNORMALS", "1") == "0":
        return False
    while hasattr(optimizer, "base"):
        optimizer = optimizer.base   # a wrapper's base optimizer makes the update
    # no eps (SGD): an update is lr x a subnormal at most
    eps = getattr(getattr(optimizer, "settings", None), "eps", FLUSH_MIN_EPS)
    return float(eps) >= FLUSH_MIN_EPS


def _worker_start(flush: bool) -> None:
    # A new thread's MKL runs with the process's default threads until torch first sets this thread's
    # count (at its first parallel_for: a softmax, say), so a member's products would round one way before
    # that and another after, depending on which member the thread took first: set it before any work.
    torch.set_num_threads(1)
    torch.set_flush_denormal(flush)   # this thread's FTZ/DAZ (x86 MXCSR); the caller's thread is untouched


class Workers:
    """Where group work runs: on a CPU, while a cohort runs, on worker threads with single-threaded ops
    (groups in parallel, no OpenMP barriers), flushing subnormals or not (flushes_subnormals); otherwise
    in order on the calling thread."""

    def __init__(self):
        self.pool: ThreadPoolExecutor | None = None
        self.n = 0
        self.ws = Workspace()  # the calling thread's buffers
        self._tls = threading.local()

    @contextmanager
    def running(self, device: torch.device, flush: bool = False):
        """Worker threads for the duration (a CPU only), flushing subnormals if `flush`; torch's thread
        count is restored after."""
        threads = torch.get_num_threads()
        if device.type == "cpu":
            # Always on workers, even one: MKL may take another code path for small GEMMs on the main
            # thread than on the others, and a member's bits must not depend on where it ran.
            torch.set_num_threads(1)
            self.pool = ThreadPoolExecutor(threads, thread_name_prefix="cohort", initializer=_worker_start,
                                           initargs=(flush,))
            self.n = threads
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
                ws = self._tls.ws = Workspace()
            while (i := next(nxt)) < len(items):
                fn(items[i], ws)
        for f in [self.pool.submit(drain) for _ in range(min(self.n, len(items)))]:
            f.result()


class Backend:
    """How a cohort's members are stepped and evaluated (one instance per cohort; backends.select)."""

    kernels = ""  # its name: native | aten | generic

    @classmethod
    def covers(cls, cfg, levers: list) -> str | None:
        """Why this backend cannot train a cohort of config `cfg` with these levers (registered lever
        classes active in some member), or None."""
        return None

    def __init__(self, cfg):
        self.cfg = cfg
        self.workers = Workers()

    def rebuild(self, c: Cohort) -> None:
        """Member groups (`batches`: their training pairs as gather indices) and, in subclasses, the
        backend's own per-member tensors; after construction and after every compaction."""
        M, N = len(c.members), c.train_idx.shape[1]
        chunk = 1 if c.device.type == "cpu" else max(1, min(M, DEVICE_BLOCK // (N * c.model.work_per_member)))
        self.batches = make_batches(c.train_idx, c.labels, c.task.vocab, chunk, c.model.paired, c.dtype)
        self.decay = [s.matrix for s in c.model.specs]

    def train(self, c: Cohort, k: int) -> dict[int, int]:
        """k optimizer steps (+ after_step levers) of every active member after step c.step (the cohort
        advances its step); returns {row: step} of members whose loss turned non-finite (on a CPU they stop
        at that step; in a multi-member group, at the chunk's end).

        Group by group (a member's arithmetic is its own): each worker thread takes a group and runs its k
        steps, so the group's weights stay in the core's caches and threads wait for each other once per
        chunk, not once per step.
        """
        hooks = [lv.after_step for lv in c.hooked("after_step")]

        def after_step(sl: slice, t: int) -> None:
            for hook in hooks:
                hook(c.P, sl, t)

        stopped: dict[int, int] = {}
        self.workers.map(self._stepper(c, k, after_step, stopped), self.batches)
        return stopped

    def _stepper(self, c: Cohort, k: int, after_step: Callable[[slice, int], None],
                 stopped: dict[int, int]) -> Work:
        """One group's k steps from step c.step, each followed by after_step(its rows, step); rows whose
        loss turned non-finite go into `stopped` ({row: step})."""
        raise NotImplementedError

    @staticmethod
    def _diverged(loss: torch.Tensor, b: Batch, t: int, t_end: int, stopped: dict[int, int]) -> bool:
        """Record the group's rows whose loss is not finite; True: the group (one member) stops at step t."""
        bad = (~torch.isfinite(loss)).nonzero().flatten().tolist()
        if bad and b.e - b.s == 1:
            stopped[b.s] = t
            return True
        for j in bad:  # a group steps on together; its diverged rows retire at the chunk's end
            stopped.setdefault(b.s + j, t_end)
        return False

    @torch.no_grad()
    def evaluate(self, c: Cohort, full: bool) -> dict[str, torch.Tensor]:
        """Metrics of every active member over all pairs (docs/statistics.md definitions), chunked.

        Always: train/test accuracy, logit_scale (mean over all pairs of |z| after the logits levers: z / tau),
        per-layer norms. full (log steps): also the losses, sc_frac (share of training pairs whose
        correct-class probability is exactly 1 in working precision), saturated (share of training pairs
        with max probability > 0.999), and the Fourier structure where the task is cyclic.
        """
        sums = {k: torch.zeros(len(c.members), dtype=torch.float64, device=c.device) for k in SUMS}
        extra = {}
        for lv in c.levers.values():
            extra.update(lv.before_eval())
        self.workers.map(self._evaluator(c, full, sums), self.batches)
        n_train = c.train_idx.shape[1]
        n_test = c.task.n_pairs - n_train
        sq = squared_norms(c.P, c.matrices).double()
        out = {"train/acc": sums["train_hit"] / n_train, "test/acc": sums["test_hit"] / n_test,
               "norm/total": sq.sum(1).sqrt(), "logit/scale": sums["lsum"] / c.task.n_pairs}
        for j, n in enumerate(c.matrices):
            out[f"norm/{n}"] = sq[:, j].sqrt()
        out.update({k: v.double() for k, v in extra.items()})
        if full:
            out.update({"train/loss": sums["train_loss"] / n_train, "test/loss": sums["test_loss"] / n_test,
                        "softmax/collapse": sums["sc"] / n_train, "softmax/saturated": sums["sat"] / n_train})
            if c.task.cyclic:
                out["repr/fourier_top5"] = fourier_top5(c.P["E"], c.task.vocab)
        return out

    def _evaluator(self, c: Cohort, full: bool, sums: dict[str, torch.Tensor]) -> Work:
        """One group's evaluation: writes its members' entries of `sums` (SUMS: hits, |z| sum over all
        pairs; full: loss sums, collapsed and saturated counts over its training and test pairs). Any model
        (grid_logits), any logits levers, any loss, op by op in bounded blocks."""
        V = c.task.vocab
        logit_levers = c.hooked("logits")

        def work(b: Batch, ws: Workspace) -> None:
            sl = slice(b.s, b.e)
            n = b.e - b.s
            Pc = {k: v[sl] for k, v in c.P.items()}
            T = c.model.tables(Pc)
            r = max(1, min(V, EVAL_BLOCK // (n * V * c.model.work_per_member)))
            for a0 in range(0, V, r):
                rows = slice(a0, min(V, a0 + r))
                s = c.model.grid_logits(Pc, rows, T, ws)  # (n, r * V, C)
                for lv in logit_levers:
                    s = lv.eval_logits(s, sl)
                pairs = slice(rows.start * V, rows.stop * V)
                y = c.labels[pairs].view(1, -1, 1).expand(n, -1, 1)
                tm, vm = c.train_mask[sl, pairs], c.test_mask[sl, pairs]
                hit = s.argmax(-1) == y.squeeze(-1)
                sums["train_hit"][sl] += (hit & tm).sum(1)
                sums["test_hit"][sl] += (hit & vm).sum(1)
                sums["lsum"][sl] += torch.where(c.valid[pairs], torch.linalg.vector_norm(s, dim=-1), 0.0).sum(1)
                if not full:
                    continue
                per = c.loss.pair_losses(s, y)
                sums["train_loss"][sl] += torch.where(tm, per, 0.0).sum(1)
                sums["test_loss"][sl] += torch.where(vm, per, 0.0).sum(1)
                collapsed, saturated = softmax_collapse(s, y, c.loss.probs)
                sums["sc"][sl] += (collapsed & tm).sum(1)
                sums["sat"][sl] += (saturated & tm).sum(1)
        return work


def fast_path_levers(levers: list, hooks: tuple[str, ...] = ("after_step", "init")) -> str | None:
    """Why a compiled fast path cannot apply these levers, or None: they implement the tau lever (as 1 / tau
    on the logits) and call any lever whose hooks are among `hooks` (the native kernels: after the step
    and at the init, the clamp; the ATen path also the gradient filters, between its backward and the
    optimizer)."""
    for lv in levers:
        if lv.name != "tau" and set(lv.hooks) - set(hooks):
            return f"lever {lv.name} ({', '.join(lv.hooks)} hooks)"
    return None
