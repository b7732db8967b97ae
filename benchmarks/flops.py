"""What a member-step costs in FLOPs, and what this machine does on a large matrix product, for efficiency.

Counting rule: 2 FLOPs per multiply-add of the matrix products an algebra needs; elementwise work (GeLU,
softmax, the optimizer, gathers and scatters) is not counted. A training step is its forward, the
weights' gradients and the activations' gradients each layer must pass back; evaluating all vocab^2
pairs every `eval_every` steps is spread over those steps. Two counts per model:

- `engine`: the algebra the engine runs. The MLPs' first layer is a lookup in per-token tables
  (paper MLP: E @ [W1a | W1b] once per step, models/mlp.py; deep_mlp: the rows of W_0), the transformer
  projects keys and values of the 2 vocab + 1 token rows once and reads out at "=" only.
- `textbook`: what a plain nn.Module computes on the same pairs (a Linear over the concatenated
  embeddings or the one-hot pair, attention over all three positions).
"""
from __future__ import annotations

import time

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (an accelerator runs asynchronously), so a timer sees all of it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(dtype: torch.dtype, device: torch.device = torch.device("cpu"), n: int = 2048,
                repeats: int = 5) -> float:
    """GFLOP/s of torch.mm on two n x n matrices of `dtype`, best of `repeats`, on torch's current threads
    (or the accelerator)."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    torch.mm(a, b)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def _mlp(c, n: int, V: int, C: int) -> dict[str, float]:
    d, H = c.model.d, c.model.H
    tables = 2 * V * d * 2 * H                                   # E @ [W1a | W1b]
    engine = 3 * 2 * n * H * C + 3 * tables                      # readout fwd, dW2, dh; tables fwd, dE, dW1
    textbook = 3 * 2 * n * 2 * d * H + 3 * 2 * n * H * C         # concat @ W1 fwd, dW1, d embedding; readout
    return {"engine": engine, "engine_eval": tables + 2 * V * V * H * C,
            "textbook": textbook, "textbook_eval": V * V * (2 * 2 * d * H + 2 * H * C)}


def _deep_mlp(c, n: int, V: int, C: int) -> dict[str, float]:
    w = [*c.cfg.hidden, C]
    rest = sum(2 * a * b for a, b in zip(w, w[1:]))              # per pair, the layers after the lookup
    first = 2 * 2 * V * w[0]                                     # one_hot(a, b) @ W_0
    return {"engine": 3 * n * rest, "engine_eval": V * V * rest,
            "textbook": 3 * n * rest + 2 * n * first, "textbook_eval": V * V * (rest + first)}   # W_0: fwd, dW


def _transformer(c, n: int, V: int, C: int) -> dict[str, float]:
    d, dm = c.model.d, c.model.d_mlp
    at_eq = 2 * d * d + 2 * 2 * d * dm + 2 * d * C               # W_O, W_in, W_out, W_U at "="
    tables = 2 * 2 * (2 * V + 1) * d * d + 2 * d * d             # K, V of every token row; Q of "="
    per_pair = 3 * (3 * 2 * d * d + 2 * d * d + 2 * 2 * d * dm) + 2 * d * C + 2 * 2 * 3 * 3 * d
    return {"engine": 3 * (n * at_eq + tables), "engine_eval": V * V * at_eq + tables,
            "textbook": 3 * n * per_pair, "textbook_eval": V * V * per_pair}


COUNTS = {"mlp": _mlp, "deep_mlp": _deep_mlp, "transformer": _transformer, "transformer_noln": _transformer}


def member_step(c) -> dict[str, float] | None:
    """{'engine': FLOPs, 'textbook': FLOPs} per member-step of cohort c (training on its first member's
    pairs plus the evaluation's share), or None for a model without a stated count."""
    count = COUNTS.get(c.cfg.model)
    if count is None:
        return None
    f = count(c, c.train_idx.shape[1], c.task.vocab, c.task.n_classes)
    return {k: f[k] + f[f"{k}_eval"] / c.cfg.eval_every for k in ("engine", "textbook")}


def breakdown(precision: str, p: int = 59, repeats: int = 5) -> dict[str, float]:
    """ms per member-step on one thread, the paper MLP's compiled step (no evaluation) against the pieces
    of the same shapes timed alone: its matrix products (MKL, in the kernels' 512-pair blocks), GeLU with
    its derivative and the softmax (ATen's). The rest is the gather, the scatter, the loss and AdamW."""
    import torch.nn.functional as F
    from interventions.engine.cohort import Cohort, CohortConfig, MemberConfig
    torch.set_num_threads(1)
    c = Cohort(CohortConfig(p=p, precision=precision, eval_every=10**9, log_every=10**9),
               [MemberConfig(key=0, seed=0, budget=10**9)])
    c.run(until=2)
    dt, (N, d, H, P) = c.dtype, (c.train_idx.shape[1], c.model.d, c.model.H, c.model.p_pad)

    def best(f, n=20):
        f()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(n):
                f()
            times.append((time.perf_counter() - t) / n * 1e3)
        return min(times)
    r = lambda *s: torch.randn(*s, dtype=dt)   # noqa: E731
    E, W1, W2, dT = r(p, d), r(d, 2 * H), r(H, P), r(p, 2 * H)
    blocks = [(r(n, H), r(n, P)) for n in [512] * (N // 512) + [N % 512] if n]
    pre, z = r(N, H), r(N, P)

    def products():
        torch.mm(E, W1), torch.mm(dT, W1.T), torch.mm(E.T, dT)                 # the tables, dE, dW1
        for h, dz in blocks:
            torch.mm(h, W2), torch.mm(h.T, dz), torch.mm(dz, W2.T)             # z, dW2, dh per block
    out = {"step": best(lambda: c.run(until=c.step + 50), n=1) / 50, "products": best(products),
           "gelu": best(lambda: (F.gelu(pre), torch.ops.aten.gelu_backward(pre, pre))),
           "softmax": best(lambda: torch.softmax(z, 1))}
    out["rest"] = out["step"] - out["products"] - out["gelu"] - out["softmax"]
    big = r(2048, 2048)
    out["products_gflops"] = (3 * 2 * N * H * c.task.n_classes + 3 * 2 * p * d * 2 * H) / out["products"] / 1e6
    out["matmul_gflops"] = 2 * 2048 ** 3 / best(lambda: torch.mm(big, big), n=2) / 1e6
    return out


if __name__ == "__main__":
    print("The paper MLP's compiled step on one thread, ms per member-step (python -m benchmarks.flops)")
    for prec in ("float32", "float64"):
        b = breakdown(prec)
        print(f"{prec}: step {b['step']:.2f} = products {b['products']:.2f} ({b['products_gflops']:.0f} GFLOP/s, "
              f"torch.mm 2048^2 {b['matmul_gflops']:.0f}) + GeLU and GeLU' {b['gelu']:.2f} + softmax "
              f"{b['softmax']:.2f} + the rest {b['rest']:.2f}")
