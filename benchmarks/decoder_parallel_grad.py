"""Microbenchmark: the trainer's decoder parallel-gradient removal against a shortcut that takes
each row's dot with its gradient from the sparse decode's value gradients (not adopted; see
docs/speed.md, "Tried and not kept").

For the sparse decode, W_dec's gradient row j is G_j = Σ_{n: idx_n = j} v_n g_{row(n)}, so
G_j · w_j = Σ_{n: idx_n = j} v_n (g_{row(n)} · w_j) = Σ_n v_n · ∂L/∂v_n: the value gradients the
backward already computes (``kernels.rowwise_dots``), summed per latent, replace the (latents ×
d) row-dot pass. Prints JSON: seconds per removal (median and min of ``--repeats``, alternating
in one process) for ``current`` (``trainer.remove_parallel_gradient``), ``shortcut`` (dots from
the value gradients, the row norms still computed) and ``shortcut_unit`` (rows assumed unit
norm), their parts, and the largest difference from the current result.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/decoder_parallel_grad.py  # ~30 s
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from saelab.ops.kernels import rowwise_dots, segment_weighted_sum
from saelab.training.trainer import remove_parallel_gradient


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latents", type=int, default=65536)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    M, D, B, k = args.latents, args.d, args.batch, args.k
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(M, D, generator=gen)
    W = torch.nn.Parameter(W / W.norm(dim=1, keepdim=True))
    idx_N = torch.randint(0, M, (B * k,), generator=gen)
    rows_N = torch.arange(B).repeat_interleave(k)
    v_N, g_BD = torch.rand(B * k, generator=gen), torch.randn(B, D, generator=gen)
    # what the sparse decode's backward computes: W_dec's gradient and the value gradients
    grad_MD = segment_weighted_sum(g_BD, rows_N, idx_N, v_N, M)
    grad_v_N = rowwise_dots(g_BD, rows_N, W.detach(), idx_N)

    def current() -> torch.Tensor:
        remove_parallel_gradient(W)
        assert W.grad is not None
        return W.grad

    @torch.no_grad()
    def shortcut(unit: bool) -> torch.Tensor:
        assert W.grad is not None
        coef_M = torch.zeros(M).index_add_(0, idx_N, v_N * grad_v_N)
        if not unit:
            coef_M.div_(torch.linalg.vector_norm(W, dim=1).square_().clamp_min_(1e-24))
        return W.grad.addcmul_(W, coef_M.unsqueeze(1), value=-1.0)

    paths: dict[str, Callable[[], torch.Tensor]] = {
        "current": current, "shortcut": lambda: shortcut(False),
        "shortcut_unit": lambda: shortcut(True)}
    times: dict[str, list[float]] = {name: [] for name in paths}
    results: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats + 1):  # the first round warms up
        for name, fn in paths.items():
            W.grad = grad_MD.clone()
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    with torch.no_grad():
        parts = {"row_dots_einsum": seconds(lambda: torch.einsum("md,md->m", grad_MD, W)),
                 "row_norms": seconds(lambda: torch.linalg.vector_norm(W, dim=1)),
                 "dots_from_value_grads": seconds(
                     lambda: torch.zeros(M).index_add_(0, idx_N, v_N * grad_v_N))}
    out = {"latents": M, "d": D, "batch": B, "k": k, "threads": torch.get_num_threads(),
           "seconds": {name: {"median": round(statistics.median(t[1:]), 4),
                              "min": round(min(t[1:]), 4)} for name, t in times.items()},
           "parts_s": {name: round(s, 4) for name, s in parts.items()},
           "max_abs_diff_from_current": {
               name: float((results[name] - results["current"]).abs().max())
               for name in ("shortcut", "shortcut_unit")},
           "max_abs_grad": float(results["current"].abs().max())}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
