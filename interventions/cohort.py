"""A cohort: members (arm x seed) of one shape trained as one batched tensor program.

Parameters and Adam moments are (M, ...) tensors, row m = member m. Each step, per member (per group of
members on an accelerator; on a CPU members run in parallel on worker threads): full-batch forward and
hand-written backward on its own training pairs (models.py), AdamW (optim.py), then the clamp
(levers.py); for the float32 MLP on a CPU the first three are one call into the compiled kernels
(native/, `kernels`). Every `eval_every` steps all p^2 pairs are evaluated (train/test accuracy -> t_mem,
t_grok); every `log_every` steps (and at the cohort's first step and a member's last) the curves.
Members retire (grokked + margin, budget, or diverged: NaN/inf loss or weights): their final state and
records are kept and their rows leave the tensors, so they stop costing compute. Nothing is mixed across
members, so a member's arithmetic does not depend on who else is in the cohort.

Steps are 1-based: "step t" is the state after t optimizer steps (and the clamp of step t).
"""
from __future__ import annotations

import copy
import itertools
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import torch

from . import levers, models, native, tasks
from .optim import AdamW

# Work sizing. On a CPU every member is its own group: its activations stay in cache, groups run in
# parallel on worker threads with single-threaded ops (no OpenMP barriers), and a member's arithmetic is
# the same whoever else is in the cohort (bitwise). On an accelerator, members go in as few groups as
# DEVICE_BLOCK elements of (members x pairs x hidden) activations allow. EVAL_BLOCK bounds the
# evaluation's (members x pairs x hidden) block, so a 150-member p=113 cohort evaluates in little memory.
DEVICE_BLOCK = 1 << 28
EVAL_BLOCK = 1 << 21
FORMAT = "interventions.cohort/2"  # 2: members carry a levers.Lever

SHAPE_KEYS = ("p", "op", "train_fraction", "model", "d_embed", "d_hidden", "d_model", "n_heads", "d_mlp")


@dataclass
class CohortConfig:
    """Everything members of one cohort share (same tensor shapes)."""
    p: int = 59
    op: str = "add"  # add | sub | mul | div
    train_fraction: float = 0.4
    model: str = "mlp"  # mlp | transformer | transformer_noln
    d_embed: int = 128
    d_hidden: int = 256  # mlp
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512  # transformer
    loss: str = "ce"  # ce | mse
    precision: str = "float32"  # float32 | float64
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 1.0
    eval_every: int = 25
    log_every: int = 200
    mem_threshold: float = 0.99
    grok_threshold: float = 0.90
    device: str = "cpu"
    kernels: str = "auto"  # auto | native | aten (interventions/native: compiled CPU kernels for the MLP)

    def __post_init__(self):
        def bad(key, why):
            raise ValueError(f"cohort.{key}: {why}")
        if self.op not in tasks.OPS:
            bad("op", f"unknown op {self.op!r} (expected {' | '.join(tasks.OPS)})")
        if self.model not in ("mlp", "transformer", "transformer_noln"):
            bad("model", f"unknown model {self.model!r} (expected mlp | transformer | transformer_noln)")
        if self.loss not in levers.LOSSES:
            bad("loss", f"unknown loss {self.loss!r} (expected ce | mse)")
        if self.kernels not in native.CHOICES:
            bad("kernels", f"unknown kernels {self.kernels!r} (expected {' | '.join(native.CHOICES)})")
        if self.precision not in levers.DTYPES:
            bad("precision", f"unknown precision {self.precision!r} (expected float32 | float64)")
        for key in ("p", "d_embed", "d_hidden", "d_model", "n_heads", "d_mlp", "eval_every", "log_every"):
            if int(getattr(self, key)) < 1:
                bad(key, f"must be a positive integer, got {getattr(self, key)!r}")
        if not 0.0 < self.train_fraction < 1.0:
            bad("train_fraction", f"must be in (0, 1), got {self.train_fraction}")
        for key in ("lr", "eps"):
            if not getattr(self, key) > 0:
                bad(key, f"must be > 0, got {getattr(self, key)}")
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                bad(key, f"must be in [0, 1), got {getattr(self, key)}")
        if self.weight_decay < 0:
            bad("weight_decay", f"must be >= 0, got {self.weight_decay}")
        for key in ("mem_threshold", "grok_threshold"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                bad(key, f"must be in [0, 1], got {getattr(self, key)}")


@dataclass
class MemberConfig:
    """One member = one (arm, seed): its levers (levers.Lever) and when it stops."""
    key: str  # unique in the cohort (a studies.MemberKey in a study, any hashable in tests)
    seed: int  # init + split seed
    lever: levers.Lever = levers.Lever()
    budget: int = 20000  # max step
    margin: int = 0  # steps to keep training after t_grok before retiring
    retire_group: str | None = None  # `retire: arm`: retire together, once every member of it has grokked

    def __post_init__(self):
        if self.budget < 1 or self.margin < 0:
            raise ValueError(f"member {self.key!r}.budget/margin: need budget >= 1, margin >= 0; got "
                             f"{self.budget}, {self.margin}")

    @classmethod
    def from_dict(cls, d: dict) -> "MemberConfig":
        return cls(**{**d, "lever": levers.Lever(**d["lever"])})


@dataclass
class MemberState:
    """One member's complete state: enough to continue it bit-identically or to fork it."""
    member: MemberConfig
    cohort: CohortConfig
    step: int
    adam_step: int
    params: dict[str, torch.Tensor]  # without the member dim
    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]
    train_idx: torch.Tensor  # sorted flat pair indices a * p + b of the training split
    record: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"member": asdict(self.member), "cohort": asdict(self.cohort), "step": self.step,
                "adam_step": self.adam_step, "params": self.params, "exp_avg": self.exp_avg,
                "exp_avg_sq": self.exp_avg_sq, "train_idx": self.train_idx, "record": self.record}

    @classmethod
    def from_dict(cls, d: dict) -> "MemberState":
        return cls(member=MemberConfig.from_dict(d["member"]), cohort=CohortConfig(**d["cohort"]), step=d["step"],
                   adam_step=d["adam_step"], params=d["params"], exp_avg=d["exp_avg"],
                   exp_avg_sq=d["exp_avg_sq"], train_idx=d["train_idx"], record=d["record"])


def _new_record(m: MemberConfig, start: int) -> dict:
    return {"key": m.key, "seed": m.seed, "t_mem": None, "t_grok": None, "logit_scale_at_grok": None,
            "weight_norm_at_grok": None, "diverged": False, "N0": None, "target": None, "final_step": None,
            "retired_at": None, "retire_reason": None, "start_step": start, "fork_from": None,
            "fork_step": None, "retire_group": m.retire_group, "evals": [], "curves": {}}


def _last(series: list | None) -> float | None:
    return series[-1][1] if series else None


INHERITED = ("t_mem", "t_grok", "logit_scale_at_grok", "weight_norm_at_grok")


def detect_times(evals: list[tuple[int, float, float]], mem_threshold: float = 0.99,
                 grok_threshold: float = 0.90) -> tuple[int | None, int | None]:
    """(t_mem, t_grok) of an eval series [(step, train acc, test acc), ...] in step order (PAPER.md):
    the first evaluated step with train acc >= mem_threshold, and with test acc >= grok_threshold."""
    t_mem = next((t for t, tr, _ in evals if tr >= mem_threshold), None)
    t_grok = next((t for t, _, te in evals if te >= grok_threshold), None)
    return t_mem, t_grok


class Cohort:
    def __init__(self, cfg: CohortConfig, members: list[MemberConfig],
                 init: list[MemberState | None] | None = None):
        if not members:
            raise ValueError("cohort: no members")
        keys = [m.key for m in members]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(f"cohort.members: duplicate keys {dup}")
        init = list(init) if init is not None else [None] * len(members)
        if len(init) != len(members):
            raise ValueError(f"cohort.init: {len(init)} states for {len(members)} members")
        self._setup(cfg)
        fresh = [s is None for s in init]
        if any(fresh) and not all(fresh):
            raise ValueError("cohort.init: mixes fresh members and restored states (members share one step)")
        steps = {(s.step, s.adam_step) for s in init if s is not None}
        if len(steps) > 1:
            raise ValueError(f"cohort.init: states at different steps {sorted(steps)} (members share one step)")
        self.step, self.adam_step = steps.pop() if steps else (0, 0)
        self.start_step = self.step
        self.members = list(members)
        self.records: dict[str, dict] = {}
        self.retired: dict[str, MemberState] = {}
        rows = []
        for m, s in zip(members, init):
            rec = _new_record(m, self.step)
            if s is None:
                rows.append(self._fresh(m))
            else:
                self._check_compatible(s, m)
                rows.append((s.params, s.exp_avg, s.exp_avg_sq, s.train_idx))
                src = s.record or {}
                for k in INHERITED:
                    rec[k] = src.get(k)
                rec["fork_from"], rec["fork_step"] = s.member.key, s.step
            self.records[m.key] = rec
        dev, dt = self.device, self.dtype
        self.P = {n: torch.stack([r[0][n] for r in rows]).to(dev, dt).contiguous() for n in self.names}
        self.m1 = {n: torch.stack([r[1][n] for r in rows]).to(dev, dt).contiguous() for n in self.names}
        self.m2 = {n: torch.stack([r[2][n] for r in rows]).to(dev, dt).contiguous() for n in self.names}
        self.train_idx = torch.stack([r[3] for r in rows]).to(dev)
        self.clamp = levers.Clamp(members, self.matrices, self.model.alloc_layers, self.start_step, dev)
        self._rebuild()

    # ---- construction helpers -------------------------------------------------------------------
    def _setup(self, cfg: CohortConfig) -> None:
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.dtype = levers.DTYPES[cfg.precision]
        self.model = models.build(cfg)
        self.task = tasks.make_task(cfg.p, cfg.op)
        self.labels = self.task.labels.clamp(min=0).to(self.device)
        self.valid = self.task.valid.to(self.device)
        self.names = [s.name for s in self.model.specs]
        self.matrices = [s.name for s in self.model.specs if s.matrix]
        self.decay = [s.matrix for s in self.model.specs]
        self.opt = AdamW(cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay)
        self.kernels, self._native = native.resolve(cfg)  # "native" (with its module) or "aten"
        self.ws = models.Workspace()
        self._pool: ThreadPoolExecutor | None = None
        self._tls = threading.local()
        self._retire_groups: dict[str, list[str]] = {}  # retire_group -> member keys (records never shrink)

    def _fresh(self, m: MemberConfig):
        gen = torch.Generator().manual_seed(m.seed)
        train_idx = tasks.split(self.task, self.cfg.train_fraction, gen)  # split first, then the init
        params = models.init_member(self.model.specs, gen, self.dtype)
        zeros = {n: torch.zeros_like(t) for n, t in params.items()}
        return params, zeros, {n: t.clone() for n, t in zeros.items()}, train_idx

    def _check_compatible(self, s: MemberState, m: MemberConfig) -> None:
        for k in SHAPE_KEYS:
            if getattr(s.cohort, k) != getattr(self.cfg, k):
                raise ValueError(f"cohort.init[{m.key}]: state of {s.member.key!r} has {k}="
                                 f"{getattr(s.cohort, k)!r}, this cohort {getattr(self.cfg, k)!r}")

    def _rebuild(self) -> None:
        """Derived per-member tensors; after construction and after every compaction."""
        M = len(self.members)
        self.tau = torch.tensor([m.lever.tau for m in self.members], dtype=self.dtype, device=self.device)
        self.inv_tau = 1.0 / self.tau
        n = self.cfg.p * self.cfg.p
        self.train_mask = torch.zeros(M, n, dtype=torch.bool, device=self.device)
        self.train_mask.scatter_(1, self.train_idx, True)
        self.test_mask = self.valid.unsqueeze(0) & ~self.train_mask
        if self._native is not None:  # per pair: 0 undefined, 1 training, 2 test
            self.split = (self.train_mask.to(torch.uint8) + 2 * self.test_mask.to(torch.uint8)).contiguous()
        N = self.train_idx.shape[1]
        chunk = 1 if self.device.type == "cpu" else max(1, min(M, DEVICE_BLOCK // (N * self.model.work_per_member)))
        self.batches = models.make_batches(self.train_idx, self.labels, self.cfg.p, chunk, self.model.paired,
                                          self.dtype)
        # gradients: per member on the ATen path; the native kernels keep one set per worker thread
        self.G = {k: torch.empty_like(v) for k, v in self.P.items()} if self._native is None else {}
        if self._native is not None:  # per member: its rows of P, m1, m2, as the kernels take them
            self._rows = [tuple([d[k][i] for k in self.names] for d in (self.P, self.m1, self.m2)) for i in range(M)]

    # ---- the step -------------------------------------------------------------------------------
    def _sq(self, sl: slice = slice(None)) -> torch.Tensor:
        """Squared Frobenius norm of every matrix of members `sl`: (m, L), in working precision."""
        return torch.stack([self.P[n][sl].flatten(1).pow(2).sum(1) for n in self.matrices], 1)

    def _parallel(self, fn: Callable, items: list) -> None:
        """fn(item, workspace) for every item: on the run's worker threads (CPU), else in order."""
        if self._pool is None:
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
        for f in [self._pool.submit(drain) for _ in range(min(self._workers, len(items)))]:
            f.result()

    def _chunk_end(self, until: int | None, checkpoint_every: int | None) -> int:
        """Last step of the next chunk: the steps before it need no cohort-wide decision (no eval, log,
        checkpoint, clamp resolution, budget or grok-margin retirement, `until`)."""
        t, cfg = self.step, self.cfg
        ends = [(t // cfg.eval_every + 1) * cfg.eval_every, (t // cfg.log_every + 1) * cfg.log_every]
        if t == self.start_step:
            ends.append(t + 1)  # a cohort's first step is logged
        if until is not None:
            ends.append(until)
        if checkpoint_every:
            ends.append((t // checkpoint_every + 1) * checkpoint_every)
        for m in self.members:
            ends.append(m.budget)
            done = self._grok_end(m)
            if done is not None and done > t:
                ends.append(done)
        later = (self.clamp.kind > 0) & (self.clamp.first > t + 1)
        if bool(later.any()):
            ends.append(int(self.clamp.first[later].min()) - 1)  # its first clamped step starts a chunk
        return max(t + 1, min(ends))

    def _train_steps(self, k: int) -> dict[int, int]:
        """k optimizer steps (+ clamp) of every active member; returns {row: step} of members whose loss
        turned non-finite (on a CPU they stop at that step; in a multi-member group, at the chunk's end).

        Member by member (a member's arithmetic is its own): each worker thread takes a member and runs
        its k steps, so the member's weights stay in the core's caches and threads wait for each other
        once per chunk, not once per step.
        """
        t0, adam0 = self.step, self.adam_step
        if bool(((self.clamp.first == t0 + 1) & (self.clamp.kind > 0)).any()):
            for i in self.clamp.resolve(t0 + 1, self.members, self._sq()):
                rec = self.records[self.members[i].key]
                rec["N0"], rec["target"] = float(self.clamp.N0[i]), float(self.clamp.target[i])
        names, stopped = self.names, {}
        kind, first = self.clamp.kind.tolist(), self.clamp.first.tolist()

        def clamp(sl: slice, t: int) -> None:
            if any(kind[i] > 0 and first[i] <= t for i in range(sl.start, sl.stop)):
                self.clamp.apply(t, {n: self.P[n][sl] for n in self.matrices}, self._sq(sl), sl)

        if self._native is not None:
            steps = [torch.tensor(float(adam0 + s)) for s in range(1, k + 1)]
            hp = [self.cfg.lr, self.cfg.beta1, self.cfg.beta2, self.cfg.eps, self.cfg.weight_decay]
            inv_tau, ce = self.inv_tau.tolist(), self.cfg.loss == "ce"

        def work_native(b: models.Batch, ws: models.Workspace) -> None:
            i = b.s  # one member per group on a CPU
            P, m1, m2 = self._rows[i]
            G = ws.get_list("native:grads", P)  # gradients live only inside the step: one set per thread
            args = (b.a[0], b.b[0], b.y.view(-1), inv_tau[i], ce)
            for s in range(1, k + 1):
                loss = self._native.train_step(P, G, m1, m2, *args, steps[s - 1], hp, ws.native("train"))
                clamp(slice(i, i + 1), t0 + s)
                if not math.isfinite(loss):
                    stopped[i] = t0 + s
                    return

        def work(b: models.Batch, ws: models.Workspace) -> None:
            sl = slice(b.s, b.e)
            P = [self.P[n][sl] for n in names]
            G = [self.G[n][sl] for n in names]
            m1, m2 = [self.m1[n][sl] for n in names], [self.m2[n][sl] for n in names]
            for s in range(1, k + 1):
                loss = self.model.loss_grads(dict(zip(names, P)), dict(zip(names, G)), b, self.inv_tau[sl],
                                             self.cfg.loss, ws)
                self.opt.step(P, G, m1, m2, self.decay, adam0 + s)
                clamp(sl, t0 + s)
                bad = (~torch.isfinite(loss)).nonzero().flatten().tolist()
                if bad and b.e - b.s == 1:
                    stopped[b.s] = t0 + s
                    return
                for j in bad:  # a group steps on together; its diverged rows retire at the chunk's end
                    stopped.setdefault(b.s + j, t0 + k)

        self._parallel(work if self._native is None else work_native, self.batches)
        self.step, self.adam_step = t0 + k, adam0 + k
        return stopped

    # ---- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def _evaluate(self, full: bool) -> dict[str, torch.Tensor]:
        """Metrics of every active member over all p^2 pairs (PAPER.md definitions), chunked.

        Always: train/test accuracy, logit_scale (mean over all pairs of |z / tau|), per-layer norms.
        full (log steps): also the losses, sc_frac (share of training pairs whose correct-class
        probability is exactly 1 in working precision) and saturated (share of training pairs with
        max probability > 0.999).
        """
        M, p, dev = len(self.members), self.cfg.p, self.device
        keys = ("train_hit", "test_hit", "lsum", "train_loss", "test_loss", "sc", "sat")
        sums = {k: torch.zeros(M, dtype=torch.float64, device=dev) for k in keys}
        if self._native is not None:
            inv_tau, ce = self.inv_tau.tolist(), self.cfg.loss == "ce"

        def work_native(b: models.Batch, ws: models.Workspace) -> None:
            i = b.s
            got = self._native.evaluate(self._rows[i][0], self.labels, self.split[i], inv_tau[i], ce, full,
                                        ws.native("eval"))
            for k, v in zip(keys, got):
                sums[k][i] = v

        def work(b: models.Batch, ws: models.Workspace) -> None:
            sl = slice(b.s, b.e)
            c = b.e - b.s
            Pc = {k: v[sl] for k, v in self.P.items()}
            T = self.model.tables(Pc)
            r = max(1, min(p, EVAL_BLOCK // (c * p * self.model.work_per_member)))
            inv = self.inv_tau[sl].view(-1, 1, 1)
            for a0 in range(0, p, r):
                rows = slice(a0, min(p, a0 + r))
                s = self.model.grid_logits(Pc, rows, T, ws).mul_(inv)  # (c, r * p, p) post-tau logits
                pairs = slice(rows.start * p, rows.stop * p)
                y = self.labels[pairs].view(1, -1, 1).expand(c, -1, 1)
                tm, vm = self.train_mask[sl, pairs], self.test_mask[sl, pairs]
                hit = s.argmax(-1) == y.squeeze(-1)
                sums["train_hit"][sl] += (hit & tm).sum(1)
                sums["test_hit"][sl] += (hit & vm).sum(1)
                sums["lsum"][sl] += torch.where(self.valid[pairs], torch.linalg.vector_norm(s, dim=-1), 0.0).sum(1)
                if not full:
                    continue
                if self.cfg.loss == "ce":
                    per = torch.logsumexp(s, -1) - s.gather(-1, y).squeeze(-1)
                else:
                    per = (s - torch.nn.functional.one_hot(y.squeeze(-1), p).to(s.dtype)).pow(2).sum(-1)
                sums["train_loss"][sl] += torch.where(tm, per, 0.0).sum(1)
                sums["test_loss"][sl] += torch.where(vm, per, 0.0).sum(1)
                collapsed, saturated = levers.softmax_collapse(s, y)
                sums["sc"][sl] += (collapsed & tm).sum(1)
                sums["sat"][sl] += (saturated & tm).sum(1)

        self._parallel(work if self._native is None else work_native, self.batches)
        n_train = self.train_idx.shape[1]
        n_test = self.task.n_pairs - n_train
        sq = self._sq().double()
        out = {"train/acc": sums["train_hit"] / n_train, "test/acc": sums["test_hit"] / n_test,
               "norm/total": sq.sum(1).sqrt(), "logit/scale": sums["lsum"] / self.task.n_pairs}
        for j, n in enumerate(self.matrices):
            out[f"norm/{n}"] = sq[:, j].sqrt()
        if full:
            out.update({"train/loss": sums["train_loss"] / n_train, "test/loss": sums["test_loss"] / n_test,
                        "softmax/collapse": sums["sc"] / n_train, "softmax/saturated": sums["sat"] / n_train})
            out["repr/fourier_top5"] = models.fourier_top5(self.P["E"], p)
        return out

    # ---- the loop --------------------------------------------------------------------------------
    def run(self, until: int | None = None, stop: Callable[["Cohort"], bool] | None = None,
            on_log: Callable | None = None, checkpoint_every: int | None = None,
            on_checkpoint: Callable[["Cohort"], None] | None = None) -> None:
        """Train until every member retired, or step == until, or stop(cohort) is True at an eval step.

        on_log(cohort, step, rows): rows = {member key: {curve key: value}} logged at that step
        (non-finite values left out). on_checkpoint(cohort) every `checkpoint_every` steps.
        Call again to continue.
        """
        cfg = self.cfg
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            # Ops single-threaded, members in parallel on `threads` workers. Always on workers, even one:
            # MKL may take another code path for small GEMMs on the main thread than on the others,
            # and a member's bits must not depend on where it ran.
            torch.set_num_threads(1)
            self._pool, self._workers = ThreadPoolExecutor(threads, thread_name_prefix="cohort"), threads
        try:
            self._run(until, stop, on_log, checkpoint_every, on_checkpoint)
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
            torch.set_num_threads(threads)

    def _run(self, until, stop, on_log, checkpoint_every, on_checkpoint) -> None:
        cfg = self.cfg
        while self.members and (until is None or self.step < until):
            stopped = self._train_steps(self._chunk_end(until, checkpoint_every) - self.step)
            t = self.step
            early = {i: s for i, s in stopped.items() if s < t}  # frozen at an earlier step of the chunk
            bad = set(stopped)
            is_eval = t % cfg.eval_every == 0
            is_log = t % cfg.log_every == 0 or t == self.start_step + 1
            ev = self._evaluate(full=is_log) if (is_eval or is_log) else None
            if is_eval:
                bad |= set((~torch.isfinite(ev["norm/total"])).nonzero().flatten().tolist())
                self._detect(t, ev, skip=early)
            for i in bad:
                self.records[self.members[i].key]["diverged"] = True
            due = [i for i, m in enumerate(self.members) if self._reason(m, t)]
            if due and not is_log:
                ev = self._evaluate(full=True)  # the retiring members' last curve row
            if is_log or due:
                which = [i for i in (range(len(self.members)) if is_log else due) if i not in early]
                logged = [(t, self._log(t, ev, which))] + [(s, self._log(s, ev, [i])) for i, s in early.items()]
                for step, rows in logged:
                    if on_log is not None and rows:
                        on_log(self, step, rows)
            if due:
                self._retire(due, t, early)
            if checkpoint_every and on_checkpoint is not None and t % checkpoint_every == 0:
                on_checkpoint(self)
            if stop is not None and is_eval and stop(self):
                break

    def _detect(self, t: int, ev: dict, skip=()) -> None:
        tr, te = ev["train/acc"].tolist(), ev["test/acc"].tolist()
        for i, m in enumerate(self.members):
            if i in skip:
                continue
            rec = self.records[m.key]
            rec["evals"].append((t, tr[i], te[i]))
            t_mem, t_grok = detect_times([(t, tr[i], te[i])], self.cfg.mem_threshold, self.cfg.grok_threshold)
            if rec["t_mem"] is None and t_mem is not None:
                rec["t_mem"] = t
            if rec["t_grok"] is None and t_grok is not None:
                rec["t_grok"] = t
                rec["logit_scale_at_grok"] = float(ev["logit/scale"][i])
                rec["weight_norm_at_grok"] = float(ev["norm/total"][i])

    def _grok_end(self, m: MemberConfig) -> int | None:
        """Step at which member m retires as grokked: its t_grok + margin; with a retire_group (retire:
        arm), the group's last t_grok + margin once every member of it has grokked or diverged."""
        if m.retire_group is None:
            t_grok = self.records[m.key]["t_grok"]
            return None if t_grok is None else t_grok + m.margin
        keys = self._retire_groups.get(m.retire_group)
        if keys is None:
            keys = self._retire_groups[m.retire_group] = [
                k for k, r in self.records.items() if r.get("retire_group") == m.retire_group or k == m.key]
        recs = [self.records[k] for k in keys]
        if any(r["t_grok"] is None and not r["diverged"] for r in recs):
            return None
        return max((r["t_grok"] for r in recs if r["t_grok"] is not None), default=0) + m.margin

    def _reason(self, m: MemberConfig, t: int) -> str | None:
        rec = self.records[m.key]
        if rec["diverged"]:
            return "diverged"
        end = self._grok_end(m)
        if end is not None and t >= end:
            return "grokked"
        if t >= m.budget:
            return "budget"
        return None

    def _log(self, t: int, ev: dict, which) -> dict[str, dict[str, float]]:
        cols = {k: v.tolist() for k, v in ev.items()}
        rows = {}
        for i in which:
            rec = self.records[self.members[i].key]
            row = {k: v[i] for k, v in cols.items() if math.isfinite(v[i])}
            for k, v in row.items():
                series = rec["curves"].setdefault(k, [])
                if not series or series[-1][0] != t:
                    series.append((t, v))
            rows[self.members[i].key] = row
        return rows

    def _retire(self, due: list[int], t: int, early: dict[int, int] | None = None) -> None:
        """Retire rows `due` at step t; rows in `early` stopped (diverged) at the step given there."""
        early = early or {}
        for i in due:
            m = self.members[i]
            rec = self.records[m.key]
            rec["retire_reason"] = self._reason(m, t)
            rec["final_step"] = rec["retired_at"] = early.get(i, t)
            self.retired[m.key] = self._member_row(i, back=t - early.get(i, t))
        keep = [i for i in range(len(self.members)) if i not in set(due)]
        self._select(keep)

    def _select(self, keep: list[int]) -> None:
        """Compaction: keep only these rows of every per-member tensor."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        for d in (self.P, self.m1, self.m2):
            for k in d:
                d[k] = d[k].index_select(0, idx)
        self.train_idx = self.train_idx.index_select(0, idx)
        self.clamp.select(idx)
        self.members = [self.members[i] for i in keep]
        self._rebuild()

    def _member_row(self, i: int, back: int = 0) -> MemberState:
        """Member i's state; back > 0: it stopped that many steps before the cohort's step."""
        m = self.members[i]
        return MemberState(member=copy.deepcopy(m), cohort=copy.deepcopy(self.cfg), step=self.step - back,
                           adam_step=self.adam_step - back,
                           params={k: v[i].clone() for k, v in self.P.items()},
                           exp_avg={k: v[i].clone() for k, v in self.m1.items()},
                           exp_avg_sq={k: v[i].clone() for k, v in self.m2.items()},
                           train_idx=self.train_idx[i].clone(), record=copy.deepcopy(self.records[m.key]))

    # ---- public reading API ----------------------------------------------------------------------
    @property
    def active(self) -> list[str]:
        return [m.key for m in self.members]

    @property
    def done(self) -> bool:
        return not self.members

    def member_state(self, key: str) -> MemberState:
        """One member's snapshot (active: its current state; retired: its final state)."""
        for i, m in enumerate(self.members):
            if m.key == key:
                return self._member_row(i)
        if key in self.retired:
            return copy.deepcopy(self.retired[key])
        raise KeyError(f"cohort: no member {key!r}")

    def results(self) -> list[dict]:
        """Per member (construction order): summary metrics and status."""
        out = []
        for key, rec in self.records.items():
            tm, tg = rec["t_mem"], rec["t_grok"]
            out.append({"key": key, "seed": rec["seed"], "t_mem": tm, "t_grok": tg,
                        "delay": tg - tm if tm is not None and tg is not None else None,
                        "grokked": tg is not None, "diverged": rec["diverged"],
                        "logit_scale_at_grok": rec["logit_scale_at_grok"],
                        "weight_norm_at_grok": rec["weight_norm_at_grok"],
                        "weight_norm_final": _last(rec["curves"].get("norm/total")), "N0": rec["N0"],
                        "target": rec["target"], "final_step": rec["final_step"] or self.step,
                        "retired_at": rec["retired_at"], "retire_reason": rec["retire_reason"],
                        "start_step": rec["start_step"], "fork_from": rec["fork_from"],
                        "fork_step": rec["fork_step"]})
        return out

    def curves(self, key: str) -> dict[str, list[tuple[int, float]]]:
        """Curves (MLflow keys) at the log cadence: {key: [(step, value), ...]}."""
        return copy.deepcopy(self._record(key)["curves"])

    def evals(self, key: str) -> list[tuple[int, float, float]]:
        """Every evaluation: [(step, train acc, test acc), ...] at the eval cadence."""
        return list(self._record(key)["evals"])

    def _record(self, key: str) -> dict:
        if key not in self.records:
            raise KeyError(f"cohort: no member {key!r}")
        return self.records[key]

    # ---- snapshots -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Complete state (plain tensors and python data, torch.save-able) for a bit-identical resume."""
        clone = lambda d: {k: v.clone() for k, v in d.items()}  # noqa: E731
        return {"format": FORMAT, "cfg": asdict(self.cfg), "step": self.step, "start_step": self.start_step,
                "adam_step": self.adam_step, "members": [asdict(m) for m in self.members],
                "params": clone(self.P), "exp_avg": clone(self.m1), "exp_avg_sq": clone(self.m2),
                "train_idx": self.train_idx.clone(), "clamp": clone(self.clamp.state_dict()),
                "records": copy.deepcopy(self.records),
                "retired": {k: v.to_dict() for k, v in copy.deepcopy(self.retired).items()},
                "torch_threads": torch.get_num_threads()}

    @classmethod
    def from_state(cls, state: dict) -> "Cohort":
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        if got != FORMAT:
            raise ValueError(f"cohort state: not a {FORMAT} state (format: {got!r})")
        unknown = set(state["cfg"]) - {f.name for f in fields(CohortConfig)}
        if unknown:
            raise ValueError(f"cohort state: cfg has unknown keys {sorted(unknown)} (written by a newer version?)")
        self = cls.__new__(cls)
        self._setup(CohortConfig(**state["cfg"]))
        self.step, self.start_step, self.adam_step = state["step"], state["start_step"], state["adam_step"]
        self.members = [MemberConfig.from_dict(m) for m in state["members"]]
        dev = self.device
        self.P = {k: v.clone().to(dev) for k, v in state["params"].items()}
        self.m1 = {k: v.clone().to(dev) for k, v in state["exp_avg"].items()}
        self.m2 = {k: v.clone().to(dev) for k, v in state["exp_avg_sq"].items()}
        self.train_idx = state["train_idx"].clone().to(dev)
        self.clamp = levers.Clamp(self.members, self.matrices, self.model.alloc_layers, self.start_step, dev)
        self.clamp.load({k: v.clone().to(dev) for k, v in state["clamp"].items()})
        self.records = copy.deepcopy(state["records"])
        self.retired = {k: MemberState.from_dict(v) for k, v in copy.deepcopy(state["retired"]).items()}
        self._rebuild()
        return self
